"""The Python API: sync one host given a Connection, a Fabric Group, or the
whole inventory.

    from synctasks import sync_host, sync_inventory

    result = sync_host(c, [{"src": "conf/nginx.conf", "dest": "/etc/nginx/nginx.conf"}])
    if result.changed:                            # raised SyncFailed if anything failed
        c.sudo("systemctl reload nginx")

    results = sync_host(ThreadingGroup("web1", "web2"), mappings)   # keyed by Connection
    group = sync_inventory("config.ini", warn=True)                 # every host, in parallel
    for host, r in group.failed.items(): ...

Like ``c.run``, a failure raises (:class:`SyncFailed`, or
:class:`GroupSyncFailed` carrying every host's result) unless ``warn=True``.

Hosts run in a thread pool. A run is stopped by setting the ``cancel`` event
(the console sets it on SIGINT/SIGTERM): queued hosts never start, running
ones get :data:`STOP_GRACE` seconds to stop between files, then their
connections are closed (what was staged is never committed half-way: files
are either old or new, staging is left for the next run to clean).

Neither depends on the task layer (fabfile.py, the console script).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

from . import constants as K
from .connection import (EarlyConnections, build_connection, connect_early, open_connection,
                         verify_host_key)
from .errors import GroupSyncFailed, InputError, Interrupted, SyncFailed, SyncTasksError
from .inputs import (HostEntry, Inventory, Mapping, Settings, check_mapping_dests, in_shard, load_inventory,
                     parse_shard, resolve_mapping, select_hosts, shard_hosts)
from .logger import add_secret, get_logger, redact
from .options import SyncOptions
from .local import LocalTrees
from .results import DONE, NO_MAPPING, NOT_STARTED, STOPPED, GroupResult, HostResult
from .transfer import remote_status, sync_connection


#: First retry after this many seconds, doubling each time.
RETRY_BACKOFF = 0.5
#: Seconds running hosts get to stop by themselves once a run is cancelled,
#: before their connections are closed under them.
STOP_GRACE = 1.0
#: How often the waiting thread looks at the cancel event.
POLL = 0.1


def options_from(settings: Settings | None, **flags: Any) -> SyncOptions:
    """SyncOptions from config.ini (or the defaults, without settings), with
    flags (None = not given) on top."""
    base = SyncOptions()
    if settings is not None:
        base = SyncOptions(compare=settings.compare, delete=settings.delete, protocol=settings.protocol,
                           symlinks=settings.symlinks, remote_links=settings.remote_links, exclude=settings.exclude, io_timeout=settings.io_timeout)
    delete = flags.get("delete")
    return replace(
        base,
        compare="checksum" if flags.get("checksum") else base.compare,
        delete=base.delete if delete is None else bool(delete),
        dry_run=bool(flags.get("dry_run")),
        force=bool(flags.get("force")),
        progress=flags.get("progress"),
        list_unchanged=bool(flags.get("list_unchanged")),
    )


def _as_mappings(mappings: Iterable[Mapping | dict], base_dir: Path, settings: Settings | None = None
                 ) -> list[Mapping]:
    resolved: list[Mapping] = []
    warnings: list[str] = []
    for number, item in enumerate(mappings, 1):
        if isinstance(item, Mapping):
            resolved.append(item)
        elif isinstance(item, dict):
            resolved.append(resolve_mapping(item, f"mapping {number}", base_dir, warnings, settings))
        else:
            raise InputError(f"mapping {number}: expected a dict with src and dest, got {type(item).__name__}")
    log = get_logger()
    for warning in warnings:
        log.warning("%s", warning)
    # Nested or duplicate dests are refused here as in the mapper files.
    check_mapping_dests(resolved, "sync_host mapping")
    return resolved


def _is_group(c) -> bool:
    # fabric.Group is a list of Connections; a Connection has original_host.
    return not hasattr(c, "original_host") and isinstance(c, (list, tuple, set, frozenset))


def _short(exc: BaseException, host: str) -> str:
    """The error's message without a leading "host: " (the host is shown
    next to it anyway)."""
    message = str(exc)
    for prefix in {host, getattr(exc, "host", None) or host}:
        if message.startswith(f"{prefix}: "):
            message = message[len(prefix) + 2:]
    return redact(message)


def _open_caller_connection(c, settings: Settings | None, label: str) -> None:
    # Open or not, whoever opened it: the same host-key policy (c's own when
    # no settings are given, else strict against ~/.ssh/known_hosts).
    if settings is None:
        verify_host_key(c, label=label)
    else:
        verify_host_key(c, settings.host_key_policy, settings.known_hosts, label=label)
    if not c.is_connected:
        open_connection(c, label, settings.retries if settings else 0)


def sync_host(c, mappings: Iterable[Mapping | dict], *, settings: Settings | None = None,
              options: SyncOptions | None = None, base_dir: str | os.PathLike | None = None,
              sudo_password: str | None = None, warn: bool = False, cancel: threading.Event | None = None,
              **flags: Any):
    """Sync ``mappings`` (``{"src", "dest"}`` dicts or Mapping records) to the
    host of Fabric Connection ``c`` and return its :class:`HostResult`.

    ``c`` may also be a Fabric Group (``Group``, ``SerialGroup``,
    ``ThreadingGroup``): its members are synced in parallel (at most
    ``connections`` of ``settings`` at once, 4 by default) and a
    :class:`GroupResult` keyed by Connection is returned.

    Like ``c.run``: if the host or any file failed, :class:`SyncFailed`
    (for a Group :class:`GroupSyncFailed`, carrying every member's result) is
    raised unless ``warn=True``. Reaching a single host (host key, login,
    network) raises the typed error (:class:`HostKeyError`, ...) either way.

    Open or not, ``c``'s host key is checked first (``verify_host_key``):
    under the policy of ``settings``, else the one ``c`` was given (an
    inventory's Connection), else strict against ~/.ssh/known_hosts. Relative
    ``src`` paths resolve against ``base_dir`` (default: the current folder).
    Mappings with ``"sudo": true`` go through ``sudo -S`` with
    ``sudo_password`` (default: the connection's password). Setting
    ``cancel`` (a threading.Event) stops the sync between files.
    """
    resolved = _as_mappings(mappings, Path(base_dir or os.getcwd()), settings)
    if options is None:
        options = options_from(settings, **flags)
    if cancel is not None:
        options = replace(options, cancel=cancel)
    if _is_group(c):
        return _sync_group(list(c), resolved, options, settings, sudo_password, warn)
    label = c.original_host
    _open_caller_connection(c, settings, label)
    password = sudo_password if sudo_password is not None else _password(c)
    add_secret(password)
    try:
        result = sync_connection(c, resolved, options, label, sudo_password=password)
    except Interrupted:
        raise
    except SyncTasksError as exc:
        if options.cancelled:
            raise Interrupted("stopped before it finished", host=label) from exc
        result = _failed(label, exc, options)
        if not warn:
            raise SyncFailed(result) from exc
    if options.cancelled and not result.ok:
        stopped = Interrupted("stopped before it finished", host=label)
        stopped.result = result
        raise stopped
    if not result.ok and not warn:
        raise SyncFailed(result)
    return result


def _password(c) -> str | None:
    return (getattr(c, "connect_kwargs", None) or {}).get("password")


def _sync_group(members: list, mappings: list[Mapping], options: SyncOptions, settings: Settings | None,
                sudo_password: str | None, warn: bool) -> GroupResult:
    log = get_logger()
    workers = settings.connections if settings else int(K.DEFAULTS["sync"]["connections"])
    trees = LocalTrees.for_options(options, log.warning, senders=len(members))
    trees.prefetch(mappings)
    live = _Live()

    def job(member) -> Callable[[], HostResult]:
        def run() -> HostResult:
            label = member.original_host
            started = time.monotonic()
            try:
                if options.cancelled:
                    return HostResult(host=label, state=NOT_STARTED, dry_run=options.dry_run)
                live.add(member, member)
                _open_caller_connection(member, settings, label)
                password = sudo_password if sudo_password is not None else _password(member)
                add_secret(password)
                result = sync_connection(member, mappings, options, label, trees, password)
                if options.cancelled and not result.ok:
                    result.state = STOPPED
            except SyncTasksError as exc:
                result = _failed(label, exc, options)
            except Exception as exc:  # a bug or an unforeseen library error: this member only
                get_logger(label).exception("unexpected error")
                result = HostResult(host=label, error=redact(f"unexpected error: {exc!r}"),
                                    error_type=type(exc).__name__, dry_run=options.dry_run)
            finally:
                live.remove(member)
            result.seconds = time.monotonic() - started
            return result
        return run

    done = run_hosts([(m, m.original_host, job(m)) for m in members], workers, options.cancel, live=live,
                     dry_run=options.dry_run)
    group = GroupResult((m, done[m]) for m in members)
    if group.failed and not warn:
        raise GroupSyncFailed(group)
    return group


def _failed(label: str, exc: SyncTasksError, options: SyncOptions) -> HostResult:
    """The result of a host that ended with ``exc``: stopped when the run
    was cancelled (closing its connection is how a stop may reach it).
    What the engine did before the error (``exc.result``) is kept."""
    result = getattr(exc, "result", None)
    if not isinstance(result, HostResult):
        result = HostResult(host=label, dry_run=options.dry_run)
    if isinstance(exc, Interrupted) or options.cancelled:
        result.state = STOPPED
    else:
        result.error, result.error_type = _short(exc, label), type(exc).__name__
    return result


class _Live:
    """The connections hosts are using now, so that a stop can close them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.connections: dict[Any, Any] = {}

    def add(self, key, c) -> None:
        with self.lock:
            self.connections[key] = c

    def remove(self, key) -> None:
        with self.lock:
            self.connections.pop(key, None)

    def close_all(self) -> int:
        with self.lock:
            running = list(self.connections.values())
        for c in running:
            try:
                c.close()
            except Exception:
                pass
        return len(running)


def release_memory() -> None:
    """Hand the C heap a finished host freed back to the system: glibc keeps
    it in the arena of the thread that used it (measured: ~50 MiB of a run
    of 100,000 files to 8 hosts). A no-op where libc has no malloc_trim."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_hosts(jobs: list[tuple[Any, str, Callable[[], HostResult]]], workers: int,
              cancel: threading.Event | None = None, hurry: threading.Event | None = None,
              on_result: Callable[[HostResult], None] | None = None, live: _Live | None = None,
              dry_run: bool = False) -> dict[Any, HostResult]:
    """Run ``(key, label, job)`` jobs, ``workers`` at once; key -> HostResult.

    Once ``cancel`` is set, queued jobs never start (state "not started"),
    running ones get STOP_GRACE seconds, then their ``live`` connections are
    closed. ``hurry`` (a second Ctrl-C) stops waiting for them at all: they
    are reported as stopped. The pool's own exit would wait for every queued
    host, so it is shut down without waiting.
    """
    log = get_logger()
    results: dict[Any, HostResult] = {}
    at_once = max(1, min(workers, len(jobs) or 1))
    pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="synctasks")
    futures: dict[Future, tuple[Any, str]] = {}
    deadline = None

    def collect(future: Future) -> None:
        key, label = futures[future]
        if future.cancelled():
            result = HostResult(host=label, state=NOT_STARTED, dry_run=dry_run)
        else:
            error = future.exception()
            if error is None:
                result = future.result()
            else:  # jobs catch their errors; this is a bug
                result = HostResult(host=label, error=f"unexpected error: {error!r}", dry_run=dry_run)
        results[key] = result
        if not gc.isenabled() and len(jobs) - len(results) >= at_once:
            # A waiting host starts now: with the collector off for the run
            # (cli), the finished one's connection, held in reference cycles
            # (paramiko's transport), is freed here, not at the run's end.
            gc.collect()
        if len(results) < len(jobs):  # (after the last host the process ends: 4 ms for nothing)
            release_memory()
        if on_result:
            on_result(result)

    try:
        for key, label, job in jobs:
            futures[pool.submit(job)] = (key, label)
        order = {future: number for number, future in enumerate(futures)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL, return_when=FIRST_COMPLETED)
            # Futures cancelled by shutdown() never count as done for wait().
            dropped = {f for f in pending if f.cancelled()}
            pending -= dropped
            for future in sorted(done | dropped, key=order.__getitem__):
                collect(future)
            if cancel is None or not cancel.is_set():
                continue
            if deadline is None:
                # Queued hosts are dropped now: the pool's exit would run them all.
                pool.shutdown(wait=False, cancel_futures=True)
                running = [futures[f][1] for f in pending if f.running()]
                if running:
                    log.warning("stopping: waiting for %s to stop between files", ", ".join(running))
                deadline = time.monotonic() + STOP_GRACE
            elif live is not None and time.monotonic() > deadline:
                if live.close_all():
                    log.warning("stopping: connections of hosts still running closed")
                deadline = float("inf")
            if hurry is not None and hurry.is_set():
                break
    except KeyboardInterrupt:
        # Library use without our signal handlers: stop the others, then leave.
        if cancel is not None:
            cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        if live is not None:
            live.close_all()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for future, (key, label) in futures.items():
        if key not in results:  # left behind by a hurried stop
            if future.cancel() or future.cancelled():
                results[key] = HostResult(host=label, state=NOT_STARTED, dry_run=dry_run)
            else:
                results[key] = HostResult(host=label, state=STOPPED, dry_run=dry_run)
            if live is not None:
                live.close_all()
            if on_result:
                on_result(results[key])
    return {key: results[key] for key, _, _ in jobs}


def _sync_entry(host: HostEntry, mappings: list[Mapping], settings: Settings, options: SyncOptions,
                trees: LocalTrees, lightweight: bool = False, live: _Live | None = None,
                early: EarlyConnections | None = None) -> HostResult:
    """Sync one host; transient network failures before anything was
    committed are retried (``[sync] retries``, with backoff). The first
    attempt takes the host's connection from ``early`` if it has one."""
    log = get_logger(host.name)
    started = time.monotonic()
    attempt = 0
    while True:
        c = None
        if options.cancelled:
            result = HostResult(host=host.name, state=STOPPED if attempt else NOT_STARTED, dry_run=options.dry_run)
            break
        try:
            opened = early.take(host.name) if early is not None else None
            if opened is not None:
                c, error = opened
                if live is not None and c is not None:
                    live.add(host.name, c)
                if error is not None:
                    raise error
            else:
                c = build_connection(host, settings, lightweight)
                if live is not None:
                    live.add(host.name, c)
                open_connection(c, host.name)
            result = sync_connection(c, mappings, options, host.name, trees, host.sudo_password or host.password)
            if options.cancelled and not result.ok:
                # What failed after the stop failed because of it (a closed connection).
                result.state = STOPPED
            break
        except SyncTasksError as exc:
            message = _short(exc, host.name)
            if getattr(exc, "transient", False) and attempt < settings.retries and not options.cancelled:
                attempt += 1
                delay = RETRY_BACKOFF * 2 ** (attempt - 1)
                log.warning("%s; retry %d of %d in %.1fs", message, attempt, settings.retries, delay)
                if options.cancel is not None:
                    options.cancel.wait(delay)
                else:
                    time.sleep(delay)
                continue
            result = _failed(host.name, exc, options)
            if result.state == STOPPED:
                log.warning("%s", message if message.startswith("stopped") else f"stopped: {message}")
            else:
                log.error("%s", message)
            break
        except Exception as exc:  # a bug, a bad ssh_config, an unforeseen library error: this host only
            if options.cancelled:
                result = HostResult(host=host.name, state=STOPPED, dry_run=options.dry_run)
                break
            log.exception("unexpected error")
            result = HostResult(host=host.name, error=redact(f"unexpected error: {exc!r}"),
                                error_type=type(exc).__name__, dry_run=options.dry_run)
            break
        finally:
            if live is not None:
                live.remove(host.name)
            try:
                if c is not None:
                    c.close()
            except Exception:
                pass
    result.seconds = time.monotonic() - started
    verb = "would change" if options.dry_run else "changed"
    if result.state == DONE and result.ok:
        log.info("done: %d sent, %d skipped, %d deleted, %d bytes in %.2fs; %s: %s", result.sent, result.skipped,
                 result.deleted, result.bytes, result.seconds, verb, "yes" if result.changed else "no")
    elif result.state == DONE and result.error is None:
        log.error("finished with %d failed file(s): %d sent, %d skipped in %.2fs", result.failed, result.sent,
                  result.skipped, result.seconds)
    return result


def sync_inventory(config_path: str | os.PathLike | None = None, *, inventory: Inventory | None = None,
                   only: str | Iterable[str] | None = None, hosts: list[HostEntry] | None = None,
                   shard: str | tuple[int, int] | None = None, warn: bool = False,
                   raise_on_failure: bool | None = None, on_result=None, lightweight: bool = False,
                   cancel: threading.Event | None = None, hurry: threading.Event | None = None,
                   early: EarlyConnections | None = None, **flags: Any) -> GroupResult:
    """Sync every host of the inventory (at most ``connections`` at once).

    One host failing never stops the others. Returns a GroupResult keyed by
    host name; when a host failed, :class:`GroupSyncFailed` (carrying that
    result, successes included) is raised unless ``warn=True``
    (``raise_on_failure``, the older spelling, wins when given).

    ``only`` selects hosts by name or pattern, ``hosts`` gives the selection
    as HostEntry records instead (e.g. from ``fab -H``), ``shard`` ("K/N")
    keeps a stable share of them. Selected hosts with no mapper file are in
    the result as "no mapping". ``on_result(HostResult)`` is called as each
    host finishes. ``cancel`` stops the run (see the module docstring);
    ``hurry`` stops waiting for running hosts. ``lightweight`` connects with
    paramiko alone (the console script's way). ``early``: connections
    already being opened (see :func:`connect_early`); closed at the end.
    """
    try:
        if raise_on_failure is not None:
            warn = not raise_on_failure
        inventory = inventory or load_inventory(config_path)
        settings = inventory.settings
        options = options_from(settings, **flags)
        if cancel is not None:
            options = replace(options, cancel=cancel)
        selected = shard_hosts(hosts if hosts is not None else select_hosts(inventory.hosts, only), shard)
        mapped = [h for h in selected if h.name in inventory.mappings]
        log = get_logger()
        log.info("syncing %d host(s), %d at once%s", len(mapped), settings.connections,
                 " (dry run)" if options.dry_run else "")
        trees = LocalTrees.for_options(options, log.warning, senders=len(mapped))
        # Walk the local trees while the connections are being made.
        trees.prefetch([m for h in mapped for m in inventory.mappings[h.name]])
        live = _Live()

        def job(host: HostEntry) -> Callable[[], HostResult]:
            return lambda: _sync_entry(host, inventory.mappings[host.name], settings, options, trees, lightweight,
                                       live, early)

        done = run_hosts([(h.name, h.name, job(h)) for h in mapped], settings.connections, options.cancel, hurry,
                         on_result, live, options.dry_run)
    finally:
        if early is not None:
            early.close()  # also when the inputs above were refused
    group = GroupResult()
    for host in selected:
        group[host.name] = done.get(host.name) or HostResult(host=host.name, state=NO_MAPPING,
                                                             dry_run=options.dry_run)
    if group.failed and not warn:
        raise GroupSyncFailed(group)
    return group


def check_hosts(inventory: Inventory, only=None, lightweight: bool = False, hosts: list[HostEntry] | None = None
                ) -> dict[str, str | None]:
    """Connect to every host (host key and login checked); host -> error or None.
    ``hosts`` gives the selection as HostEntry records instead of ``only``."""
    settings = inventory.settings
    hosts = hosts if hosts is not None else select_hosts(inventory.hosts, only)

    def probe(host: HostEntry) -> str | None:
        c = None
        try:
            c = build_connection(host, settings, lightweight)
            open_connection(c, host.name, settings.retries)
            status = remote_status(c, "true")
            return None if status == 0 else f"the remote shell does not run commands (status {status})"
        except SyncTasksError as exc:
            return str(exc).removeprefix(f"{host.name}: ")
        except Exception as exc:
            return redact(f"{type(exc).__name__}: {exc}")
        finally:
            if c is not None:
                c.close()

    with ThreadPoolExecutor(max_workers=max(1, min(settings.connections, len(hosts) or 1))) as pool:
        return dict(zip((h.name for h in hosts), pool.map(probe, hosts)))


__all__ = ["sync_host", "sync_inventory", "connect_early",
           "check_hosts", "select_hosts", "shard_hosts", "parse_shard", "in_shard",
           "options_from", "run_hosts", "K"]
