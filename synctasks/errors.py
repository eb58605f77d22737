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
    └── SyncFailed            a host or some of its files failed; carries
        │                     the result and the first reasons
        └── GroupSyncFailed   some members of a Group (or hosts of the
                              inventory) failed; carries the whole group
                              result, successes included (like Fabric's
                              GroupException)

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


#: How many reasons a SyncFailed message names (all are in ``result``).
MAX_REASONS = 5


class SyncFailed(SyncTasksError):
    """Raised by :func:`synctasks.sync_host` when the host or any file failed
    (unless called with ``warn=True``), as ``c.run`` raises UnexpectedExit.

    ``result`` is the :class:`~synctasks.results.HostResult` (or, for
    :class:`GroupSyncFailed`, the group result); ``reasons`` lists the first
    reasons, each naming the host and, for a file, its path.
    """

    def __init__(self, result, reasons: list[str] | None = None):
        if reasons is None:
            reasons = failure_reasons(result)
        shown = reasons[:MAX_REASONS]
        more = len(reasons) - len(shown)
        message = "sync failed: " + "; ".join(shown) if shown else "sync failed"
        if more > 0:
            message += f" (and {more} more)"
        super().__init__(message)
        #: The result the sync failed with: look at it, successes included.
        self.result = result
        #: "host: path: reason" (or "host: reason" for the host as a whole).
        self.reasons = reasons


class GroupSyncFailed(SyncFailed):
    """Some hosts of a Group or of the inventory failed.

    Like ``fabric.exceptions.GroupException``: ``result`` is the whole
    GroupResult (keyed by Connection for a Group, by host name for the
    inventory), the hosts that succeeded included.
    """

    @property
    def failed(self):
        return self.result.failed

    @property
    def succeeded(self):
        return self.result.succeeded


def failure_reasons(result, limit: int = 100) -> list[str]:
    """"host: path: reason" lines for a HostResult or a group of them."""
    hosts = list(result.values()) if isinstance(result, dict) else [result]
    reasons: list[str] = []
    for host in hosts:
        if len(reasons) >= limit:
            break
        reasons += host.reasons(limit - len(reasons))
    return reasons
