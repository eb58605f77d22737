"""Sync one host over an open connection: pick the backend, list, plan,
carry the plan out, and keep what was committed in the result.

    inputs -> plan (plan.py) -> backend (backends/shell.py | backends/sftp.py) -> results

``protocol = auto`` starts the shell backend's script; an account that does
not run it (SFTP-only, scp-only) is then tried over SFTP. ``scp`` and
``sftp`` force one backend. Mappings with ``sudo`` run through a second
script under sudo (shell backend only).
"""

from __future__ import annotations

import time

from .backends import sftp as sftp_backend
from .backends import shell
from .backends.shell import NoShell, Target
from .errors import RemoteError, SyncTasksError, UnsafeDestError, UnsupportedError
from .inputs import Mapping
from .listing import Listing
from .logger import get_logger
from .options import STALL_TIMEOUT, SyncOptions
from .local import LocalTrees
from .plan import HostPlan, plan_host, unsafe_for_delete
from .results import HostResult, MappingResult

__all__ = ["SyncOptions", "sync_connection", "remote_status", "check_delete_safety"]


def remote_status(c, command: str, timeout: float = STALL_TIMEOUT) -> int:
    """Run ``command`` remotely and return its exit status."""
    chan = c.transport.open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        if not chan.status_event.wait(timeout):
            raise RemoteError(f"no answer to {command!r} for {timeout:.0f}s")
        return chan.recv_exit_status()
    finally:
        chan.close()


def check_delete_safety(mappings: list[Mapping], home: str, options: SyncOptions, label: str) -> None:
    """--delete is refused on a dest too close to / or on the remote ``home``."""
    if options.force or not options.delete:
        return
    for mapping in mappings:
        why = unsafe_for_delete(mapping, home)
        if why:
            raise UnsafeDestError(f"refusing --delete on dest {mapping.dest} ({mapping.source}): {why}; "
                                  "pick a deeper dest or pass --force", host=label)


def _refuse_busy(plan: HostPlan, listing: Listing, label: str) -> None:
    """A dest where another synctasks run is working fails, in one line."""
    for mapping_plan in plan.mappings:
        dest = mapping_plan.mapping.dest.rstrip("/")
        # Only inside dest: one beside it may be building any sibling.
        busy = [p for p in listing.active.get(mapping_plan.mapping.dest, []) if p.startswith(dest + "/")]
        if busy and (mapping_plan.has_work or mapping_plan.mkparent):
            reason = (f"another synctasks run is syncing {mapping_plan.mapping.dest} (its staging folder "
                      f"{busy[0]}): try again when it ends")
            get_logger(label).error("%s", reason)
            mapping_plan.drop(reason)


def _refuse_unwritable(plan: HostPlan, listing: Listing, label: str) -> None:
    """Say up front (in a dry run too) that the login user cannot write a
    dest, with the fix, instead of a "Permission denied" mid-run."""
    for mapping_plan in plan.mappings:
        folder = listing.unwritable.get(mapping_plan.mapping.dest)
        if folder and not mapping_plan.mapping.sudo and (mapping_plan.has_work or mapping_plan.mkparent):
            reason = (f"{folder} is not writable by {listing.user or 'the login user'}: set \"sudo\": true "
                      f"in {mapping_plan.mapping.source or 'its mapping'} (or fix the permissions)")
            get_logger(label).error("%s: %s", mapping_plan.mapping.dest, reason)
            mapping_plan.drop(reason)


def sync_shell(target: Target, mappings: list[Mapping], options: SyncOptions,
               trees: LocalTrees) -> list[MappingResult]:
    """List, plan and (unless a dry run) apply through the shell backend."""
    log = get_logger(target.label)

    # --delete on the remote home is refused as soon as the home is known,
    # before the home is listed.
    stream, listing = shell.list_host(target, mappings, options,
                                      lambda home: check_delete_safety(mappings, home, options, target.label))
    log.debug("listed %d remote entries in %d dests (listing method: %s)",
              sum(len(e) for e in listing.entries.values()) + sum(len(r) for r in listing.records.values()),
              len(listing.entries), listing.method)
    for path in listing.unlisted:
        log.warning("%s: a remote name with a newline: this host's listing (%s) cannot carry it; left alone",
                    path, listing.method)
    plan = plan_host(listing.token, mappings, listing, trees, compare=options.compare, delete=options.delete,
                     warn=log.warning, trusted=options.trusted,
                     remote_links=options.remote_links, list_unchanged=options.list_unchanged)
    listing.records.clear()  # planned: the listing's bulk is not needed any more
    log.debug("planned: %d listed entries differ from what the host should have",
              sum(p.differing for p in plan.mappings))
    results = [p.result for p in plan.mappings]
    _refuse_busy(plan, listing, target.label)
    _refuse_unwritable(plan, listing, target.label)
    if options.dry_run or not plan.has_work:
        shell.finish_without_changes(stream, listing.token)
        return results
    shell.apply(target, stream, plan, mappings, options, trees, perl=listing.perl)
    return results


def _no_shell_message(exc: NoShell, why: str) -> str:
    said = f" (it said: {exc.said})" if exc.said else ""
    return f"the account does not run shell commands{said}: {why}"


def _speaks_sftp(c, label: str, options: SyncOptions) -> bool:
    try:
        sftp_backend.open_sftp(c, label, options.io_timeout).close()
    except RemoteError:
        return False
    return True


def sync_connection(c, mappings: list[Mapping], options: SyncOptions | None = None, label: str | None = None,
                    trees: LocalTrees | None = None, sudo_password: str | None = None) -> HostResult:
    """Sync ``mappings`` to the host of an OPEN connection ``c``.

    Mappings with ``sudo`` run through sudo (one remote command for them,
    one for the rest), with ``sudo_password`` when sudo asks for one.
    ``trees`` shares local walks between hosts of one run.

    Work committed before a later failure stays in the result: such a
    failure becomes ``result.error`` instead of an exception (a blind retry
    would report those files as unchanged).
    """
    options = options or SyncOptions()
    label = label or c.original_host
    log = get_logger(label)
    result = HostResult(host=label, dry_run=options.dry_run)
    started = time.monotonic()
    # (this host's own trees: nothing is kept for others)
    trees = trees or LocalTrees.for_options(options, log.warning, senders=1)
    by_mapping: dict[int, MappingResult] = {}
    backend = "sftp" if options.protocol == "sftp" else ""
    try:
        for sudo in (False, True):
            group = [m for m in mappings if m.sudo == sudo]
            if not group:
                continue
            try:
                if backend == "sftp":
                    results = sftp_backend.sync_sftp(c, label, group, options, trees, result.notes)
                else:
                    target = Target(c, label, sudo, sudo_password if sudo else None, options.io_timeout)
                    try:
                        results = sync_shell(target, group, options, trees)
                        backend = "shell"
                    except NoShell as exc:
                        if sudo:
                            why = '"sudo": true needs a shell on the host'
                            if _speaks_sftp(c, label, options):
                                why += ", and this account speaks SFTP only"
                            raise UnsupportedError(_no_shell_message(exc, why), host=label) from None
                        if options.protocol == "scp":
                            raise RemoteError(_no_shell_message(exc, "protocol = scp needs a POSIX shell with "
                                                                "scp; use protocol = auto or sftp"), host=label) from None
                        if not _speaks_sftp(c, label, options):
                            raise RemoteError(_no_shell_message(exc, "and it offers no SFTP either; synctasks needs "
                                                                "a POSIX shell with scp, or SFTP"), host=label) from None
                        log.info("protocol auto: the account runs no shell commands%s: using SFTP",
                                 f" ({exc.said})" if exc.said else "")
                        backend = "sftp"
                        results = sftp_backend.sync_sftp(c, label, group, options, trees, result.notes)
                result.backend = backend
            except SyncTasksError as exc:
                committed = any(r.changed for r in by_mapping.values()) and not options.dry_run
                if not committed:
                    raise
                # Earlier mappings are in place: report them with the error.
                message = str(exc).removeprefix(f"{label}: ")
                log.error("%s", message)
                result.error = message
                break
            for mapping, mapping_result in zip(group, results):
                by_mapping[id(mapping)] = mapping_result
    except SyncTasksError as exc:
        exc.result = result  # what was done before it (an interrupted run, say)
        raise
    finally:
        result.backend = result.backend or backend
        result.mappings = [by_mapping[id(m)] for m in mappings if id(m) in by_mapping]
        result.seconds = time.monotonic() - started
    return result
