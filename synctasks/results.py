"""Result records: per file, per mapping, per host, and for a whole run.

A calling task reads ``result.changed`` to decide whether to reload a
service; ``GroupResult`` maps host -> HostResult like Fabric's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import EXIT_FAILED, EXIT_OK, REPORT_VERSION

#: Actions that change the remote side.
CHANGING = frozenset({"send", "delete", "chmod", "chown", "touch", "mkdir", "link"})


@dataclass(slots=True)
class FileResult:
    #: The remote path the action is about.
    path: str
    #: send | skip | delete | chmod | chown | touch | mkdir | link | fail
    action: str
    #: Why: new, size, mtime, checksum, mode, type, unchanged, extraneous, or the error.
    reason: str = ""
    #: Bytes sent (sends) or the file's size.
    size: int = 0
    #: rsync --itemize-changes style flags, e.g. ">f.st......".
    flags: str = ""

    @property
    def changed(self) -> bool:
        return self.action in CHANGING

    def to_dict(self) -> dict:
        return {"path": self.path, "action": self.action, "reason": self.reason, "size": self.size,
                "flags": self.flags}


class _Tally:
    """Counts of file actions, for anything with ``_all()`` records."""

    def _all(self) -> list[FileResult]:
        raise NotImplementedError

    def _count(self, action: str) -> int:
        return sum(1 for f in self._all() if f.action == action)

    @property
    def sent(self) -> int:
        return self._count("send")

    @property
    def skipped(self) -> int:
        return self._count("skip")

    @property
    def deleted(self) -> int:
        return self._count("delete")

    @property
    def failed(self) -> int:
        return self._count("fail")


@dataclass
class MappingResult(_Tally):
    #: Local source (absolute).
    src: str
    #: Remote path src became.
    dest: str
    #: One record per file or folder acted on (skips included).
    files: list[FileResult] = field(default_factory=list)

    def _all(self) -> list[FileResult]:
        return self.files

    @property
    def changed(self) -> bool:
        return any(f.changed for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files if f.action == "send")

    def to_dict(self) -> dict:
        return {"src": self.src, "dest": self.dest, "changed": self.changed, "sent": self.sent,
                "skipped": self.skipped, "deleted": self.deleted, "failed": self.failed, "bytes": self.bytes,
                "files": [f.to_dict() for f in self.files]}


@dataclass
class HostResult(_Tally):
    #: The host as named in connection_info.json (or the Connection's host).
    host: str
    #: Per mapping, in mapper-file order.
    mappings: list[MappingResult] = field(default_factory=list)
    #: Why the host failed as a whole (unreachable, auth, ...), else None.
    error: str | None = None
    #: Wall time for this host, connection included.
    seconds: float = 0.0
    #: True when nothing was changed on purpose (--dry-run / plan).
    dry_run: bool = False
    #: The remote backend that carried the plan out: "shell" (sh + SCP) or
    #: "sftp" (pure SFTP); "" if the host was never reached.
    backend: str = ""
    #: Things the user should know about how the host was synced (e.g. no
    #: atomic rename on this SFTP server).
    notes: list[str] = field(default_factory=list)

    def _all(self) -> list[FileResult]:
        return [f for m in self.mappings for f in m.files]

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0

    @property
    def changed(self) -> bool:
        """Whether anything changed remotely (in a dry run: would change)."""
        return any(m.changed for m in self.mappings)

    @property
    def bytes(self) -> int:
        return sum(m.bytes for m in self.mappings)

    @property
    def first_error(self) -> str | None:
        if self.error:
            return self.error
        return next((f"{f.path}: {f.reason}" for f in self._all() if f.action == "fail"), None)

    def to_dict(self) -> dict:
        return {"host": self.host, "ok": self.ok, "changed": self.changed, "error": self.first_error,
                "sent": self.sent, "skipped": self.skipped, "deleted": self.deleted, "failed": self.failed,
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "dry_run": self.dry_run,
                "backend": self.backend, "notes": list(self.notes),
                "mappings": [m.to_dict() for m in self.mappings]}


class GroupResult(dict):
    """host -> HostResult for a whole run, like Fabric's GroupResult."""

    @property
    def succeeded(self) -> dict[str, HostResult]:
        return {h: r for h, r in self.items() if r.ok}

    @property
    def failed(self) -> dict[str, HostResult]:
        return {h: r for h, r in self.items() if not r.ok}

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.values())

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK

    def to_dict(self, seconds: float = 0.0, warnings: list[str] | None = None) -> dict:
        return {"version": REPORT_VERSION, "ok": not self.failed, "changed": self.changed,
                "seconds": round(seconds, 3), "warnings": list(warnings or []),
                "hosts": [r.to_dict() for r in self.values()]}
