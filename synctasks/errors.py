"""Every error synctasks raises descends from :class:`SyncTasksError`::

    SyncTasksError
    ├── InputError            bad config.ini, connection_info.json or mapper
    │                         file (exit 2, nothing was sent)
    ├── ConnectError          could not reach or log in to a host
    │   ├── HostKeyError      unknown or changed host key (never retried)
    │   └── AuthError         login refused (never retried)
    ├── RemoteError           a remote command or the remote side's answer
    │                         was not what the protocol expects
    ├── UnsupportedError      the host (or its account type) cannot do what
    │                         was asked (sudo on SFTP-only, --checksum there)
    ├── Interrupted           SIGINT/SIGTERM stopped the run
    ├── UnsafeDestError       --delete on a dest that is too shallow
    └── SyncFailed            some hosts failed; carries the group result

Errors from paramiko, sockets and the OS are translated where they cross into
synctasks (``raise ConnectError(...) from exc``) and carry the host.
"""

from __future__ import annotations


class SyncTasksError(Exception):
    """Root of every synctasks error."""

    def __init__(self, message: str, *, host: str | None = None):
        super().__init__(message)
        #: The host the error is about, when there is one.
        self.host = host

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.host}: {message}" if self.host else message


class InputError(SyncTasksError):
    """An input file is missing or wrong; the message names the file and the fix."""


class ConnectError(SyncTasksError):
    """A host could not be reached or logged in to."""

    #: Whether trying again may help (refused, reset, timed out).
    transient = True


class HostKeyError(ConnectError):
    """The host key is unknown (strict policy) or changed."""

    transient = False


class AuthError(ConnectError):
    """The host refused every credential offered."""

    transient = False


class RemoteError(SyncTasksError):
    """A remote command failed or answered outside the protocol."""

    def __init__(self, message: str, *, host: str | None = None, transient: bool = False):
        super().__init__(message, host=host)
        #: The connection dropped or stalled before anything was committed:
        #: running the host again is safe and may help.
        self.transient = transient


class UnsupportedError(SyncTasksError):
    """What was asked cannot be done on this host or account type; refused
    up front, never silently degraded."""


class Interrupted(SyncTasksError):
    """The run was stopped (SIGINT/SIGTERM, or a caller's cancel event);
    files in flight were abandoned, never half-committed."""


class UnsafeDestError(SyncTasksError):
    """A --delete would work on a dest that is too close to the root."""


class SyncFailed(SyncTasksError):
    """Raised by :func:`synctasks.sync_inventory` (when asked to raise) if any
    host failed; ``result`` is the whole :class:`~synctasks.results.GroupResult`."""

    def __init__(self, result):
        failed = ", ".join(sorted(result.failed))
        super().__init__(f"{len(result.failed)} host(s) failed: {failed}")
        #: The group result, successes included.
        self.result = result
