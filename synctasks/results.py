"""Result records: per file, per mapping, per host, and for a whole run.

A calling task reads ``result.changed`` to decide whether to reload a
service; ``GroupResult`` maps host -> HostResult like Fabric's own (keyed by
host name for the inventory, by Connection for a Fabric Group).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from operator import attrgetter

from .constants import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, REPORT_VERSION

#: HostResult.state values: how far a host got.
DONE = "done"  #: ran to the end (ok or with failures)
STOPPED = "stopped"  #: was running when the run was interrupted
NOT_STARTED = "not started"  #: was still queued when the run was interrupted
NO_MAPPING = "no mapping"  #: in connection_info.json, but has no mapper file

#: Errors that are about the input (a dest refused for --delete): exit 2.
INPUT_ERRORS = frozenset({"InputError", "UnsafeDestError"})

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


_ACTION = attrgetter("action")


class _Tally:
    """Counts of file actions, for anything with ``_all()`` records."""

    def _all(self) -> list[FileResult]:
        raise NotImplementedError

    def _count(self, action: str) -> int:
        return sum(list(map(_ACTION, files)).count(action) for files in self._lists())

    def _lists(self) -> list[list[FileResult]]:
        """The record lists ``_all()`` joins (counted without joining them:
        a summary counts 100,000 records a dozen times)."""
        return [self._all()]

    @property
    def sent(self) -> int:
        return self._count("send")

    def _unlisted(self) -> int:
        """Unchanged files counted without a record each."""
        return 0

    @property
    def skipped(self) -> int:
        return self._count("skip") + self._unlisted()

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
    #: One record per file or folder acted on; unchanged files only when
    #: asked for (``list_unchanged``: -vv), else just counted in ``unchanged``.
    files: list[FileResult] = field(default_factory=list)
    #: Unchanged files that have no record in ``files`` (part of ``skipped``).
    unchanged: int = 0

    def _all(self) -> list[FileResult]:
        return self.files

    def _unlisted(self) -> int:
        return self.unchanged

    @property
    def changed(self) -> bool:
        return any(f.changed for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files if f.action == "send")

    def to_dict(self, files: bool = True) -> dict:
        """``files``: with the per-file records (the JSON report; a summary
        needs only the counts)."""
        found = {"src": self.src, "dest": self.dest, "changed": self.changed, "sent": self.sent,
                 "skipped": self.skipped, "deleted": self.deleted, "failed": self.failed, "bytes": self.bytes}
        if files:
            found["files"] = [f.to_dict() for f in self.files]
        return found


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
    #: How far the host got: done, stopped, not started or no mapping.
    state: str = DONE
    #: The class name of the error that ended the host (e.g. "AuthError").
    error_type: str | None = None
    #: The remote backend that carried the plan out: "shell" (sh + SCP) or
    #: "sftp" (pure SFTP); "" if the host was never reached.
    backend: str = ""
    #: Things the user should know about how the host was synced (e.g. no
    #: atomic rename on this SFTP server).
    notes: list[str] = field(default_factory=list)

    def _all(self) -> list[FileResult]:
        return [f for m in self.mappings for f in m.files]

    def _lists(self) -> list[list[FileResult]]:
        return [m.files for m in self.mappings]

    def _unlisted(self) -> int:
        return sum(m.unchanged for m in self.mappings)

    @property
    def ok(self) -> bool:
        return self.state in (DONE, NO_MAPPING) and self.error is None and self.failed == 0

    @property
    def status(self) -> str:
        """One word or two for people: changed, in sync, would change,
        FAILED, stopped, not started, no mapping."""
        if self.state != DONE:
            return self.state
        if not self.ok:
            return "FAILED"
        if self.changed:
            return "would change" if self.dry_run else "changed"
        return "in sync"

    def reasons(self, limit: int = 100) -> list[str]:
        """Why the host failed: "host: reason" or "host: path: reason" each."""
        if self.error:
            return [f"{self.host}: {self.error}"]
        if self.state != DONE and not self.ok:
            return [f"{self.host}: {self.state}"]
        return [f"{self.host}: {f.path}: {f.reason}" for f in self._all() if f.action == "fail"][:limit]

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

    def to_dict(self, files: bool = True) -> dict:
        return {"host": self.host, "ok": self.ok, "status": self.status, "changed": self.changed,
                "error": self.first_error, "error_type": self.error_type,
                "sent": self.sent, "skipped": self.skipped, "deleted": self.deleted, "failed": self.failed,
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "dry_run": self.dry_run,
                "backend": self.backend, "notes": list(self.notes),
                "mappings": [m.to_dict(files) for m in self.mappings]}


class GroupResult(dict):
    """host -> HostResult for a whole run, like Fabric's GroupResult.

    Keys are host names (the inventory) or Fabric Connections (a Group).
    ``succeeded`` and ``failed`` are GroupResults too.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: The signal (signal.SIGINT / SIGTERM) that stopped the run, if any.
        self.interrupted: int | None = None

    def _subset(self, ok: bool) -> "GroupResult":
        return type(self)((k, r) for k, r in self.items() if r.ok == ok)

    @property
    def succeeded(self) -> "GroupResult":
        return self._subset(True)

    @property
    def failed(self) -> "GroupResult":
        return self._subset(False)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.values())

    def in_state(self, state: str) -> list[HostResult]:
        return [r for r in self.values() if r.state == state]

    @property
    def exit_code(self) -> int:
        """0 all in sync, 1 a host failed, 2 a dest was refused as input,
        128 + the signal number when interrupted (130 SIGINT, 143 SIGTERM)."""
        if self.interrupted:
            return 128 + int(self.interrupted)
        if any(r.error_type in INPUT_ERRORS for r in self.values()):
            return EXIT_BAD_INPUT
        return EXIT_FAILED if self.failed else EXIT_OK

    def to_dict(self, seconds: float = 0.0, warnings: list[str] | None = None, files: bool = True) -> dict:
        return {"version": REPORT_VERSION, "ok": not self.failed and not self.interrupted,
                "exit_code": self.exit_code, "changed": self.changed,
                "interrupted": signal.Signals(self.interrupted).name if self.interrupted else None,
                "seconds": round(seconds, 3), "warnings": list(warnings or []),
                "hosts": [r.to_dict(files) for r in self.values()]}
