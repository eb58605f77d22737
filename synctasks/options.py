"""How to sync (the flags of ``fab sync``), independent of where."""

from __future__ import annotations

import threading
from dataclasses import dataclass

STALL_TIMEOUT = 60.0  #: seconds without any answer before a channel is given up


@dataclass
class SyncOptions:
    """How to sync (the flags of ``fab sync``), independent of where."""

    compare: str = "size-mtime"
    delete: bool = False
    dry_run: bool = False
    protocol: str = "auto"  #: auto | scp | sftp (see synctasks.backends)
    symlinks: str = "copy"
    #: a remote symlink where src has a file or folder: refuse | replace | skip
    remote_links: str = "refuse"
    exclude: tuple[str, ...] = ()
    force: bool = False  #: allow --delete on shallow dests
    io_timeout: float = STALL_TIMEOUT  #: seconds with no progress before a host is given up
    progress: object = None  #: callable(host, files_done, bytes_done) or None
    #: Set by a signal handler (or a caller) to stop: no new file is sent once
    #: it is set, in-flight files are abandoned, never half-committed.
    cancel: threading.Event | None = None
    #: Local paths (absolute, as walked) to send whatever the compare says:
    #: a watcher that saw them change trusts the event over size+mtime.
    trusted: frozenset = frozenset()
    #: Keep a FileResult per unchanged file (-vv lists them); else they are
    #: counted only, so memory grows with files, not files x hosts.
    list_unchanged: bool = False

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()
