"""The Python API: sync one host given a Connection, or the whole inventory.

    from synctasks import sync_host, sync_inventory

    result = sync_host(c, [{"src": "conf/nginx.conf", "dest": "/etc/nginx/nginx.conf"}])
    if result.changed:
        c.sudo("systemctl reload nginx")

    group = sync_inventory("config.ini")          # every host, in parallel
    for host, r in group.failed.items(): ...

Neither depends on the task layer (fabfile.py, the console script).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Iterable

from . import constants as K
from .connection import build_connection, open_connection, verify_host_key
from .errors import InputError, SyncFailed, SyncTasksError
from .inputs import HostEntry, Inventory, Mapping, Settings, load_inventory, resolve_mapping
from .logger import add_secret, get_logger, redact
from .plan import LocalTrees
from .results import GroupResult, HostResult
from .transfer import SyncOptions, remote_status, sync_connection


#: First retry after this many seconds, doubling each time.
RETRY_BACKOFF = 0.5


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
    return resolved


def sync_host(c, mappings: Iterable[Mapping | dict], *, settings: Settings | None = None,
              options: SyncOptions | None = None, base_dir: str | os.PathLike | None = None,
              sudo_password: str | None = None, **flags: Any) -> HostResult:
    """Sync ``mappings`` (``{"src", "dest"}`` dicts or Mapping records) to the
    host of Fabric Connection ``c`` and return its :class:`HostResult`.

    An unopened ``c`` is opened with the host-key policy of ``settings``
    (strict against ~/.ssh/known_hosts when no settings are given). Relative
    ``src`` paths resolve against ``base_dir`` (default: the current folder).
    Errors reaching the host raise :class:`~synctasks.errors.SyncTasksError`
    subclasses; per-file failures are in the result. Mappings with
    ``"sudo": true`` go through ``sudo -S`` with ``sudo_password`` (default:
    the connection's password).
    """
    label = c.original_host
    resolved = _as_mappings(mappings, Path(base_dir or os.getcwd()), settings)
    if options is None:
        options = options_from(settings, **flags)
    # Open or not, whoever opened it: the same host-key policy (c's own when
    # no settings are given, else strict against ~/.ssh/known_hosts).
    if settings is None:
        verify_host_key(c, label=label)
    else:
        verify_host_key(c, settings.host_key_policy, settings.known_hosts, label=label)
    if not c.is_connected:
        open_connection(c, label, settings.retries if settings else 0)
    if sudo_password is None:
        sudo_password = (getattr(c, "connect_kwargs", None) or {}).get("password")
    add_secret(sudo_password)
    return sync_connection(c, resolved, options, label, sudo_password=sudo_password)


def select_hosts(hosts: list[HostEntry], only: str | Iterable[str] | None) -> list[HostEntry]:
    """Hosts named by ``only`` (names, IPs or shell-style patterns)."""
    if not only:
        return hosts
    patterns = [p.strip() for p in (only.split(",") if isinstance(only, str) else only) if p.strip()]
    chosen = [h for h in hosts if any(fnmatch(h.name, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch(h.name, p) for h in hosts)]
    if unknown:
        raise InputError(f"--only {', '.join(unknown)}: no such host in connection_info.json: "
                         f"pick from {', '.join(h.name for h in hosts)}")
    return chosen


def _sync_entry(host: HostEntry, mappings: list[Mapping], settings: Settings, options: SyncOptions,
                trees: LocalTrees, lightweight: bool = False) -> HostResult:
    """Sync one host; transient network failures before anything was
    committed are retried (``[sync] retries``, with backoff)."""
    log = get_logger(host.name)
    started = time.monotonic()
    attempt = 0
    while True:
        c = None
        try:
            c = build_connection(host, settings, lightweight)
            open_connection(c, host.name)
            result = sync_connection(c, mappings, options, host.name, trees, host.sudo_password or host.password)
            break
        except SyncTasksError as exc:
            message = str(exc)
            if exc.host and message.startswith(f"{exc.host}: "):
                message = message[len(exc.host) + 2:]
            if getattr(exc, "transient", False) and attempt < settings.retries:
                attempt += 1
                delay = RETRY_BACKOFF * 2 ** (attempt - 1)
                log.warning("%s; retry %d of %d in %.1fs", message, attempt, settings.retries, delay)
                time.sleep(delay)
                continue
            log.error("%s", message)
            result = HostResult(host=host.name, error=redact(message), dry_run=options.dry_run)
            break
        except Exception as exc:  # a bug, a bad ssh_config, an unforeseen library error: this host only
            log.exception("unexpected error")
            result = HostResult(host=host.name, error=redact(f"unexpected error: {exc!r}"),
                                dry_run=options.dry_run)
            break
        finally:
            try:
                if c is not None:
                    c.close()
            except Exception:
                pass
    result.seconds = time.monotonic() - started
    verb = "would change" if options.dry_run else "changed"
    if result.ok:
        log.info("done: %d sent, %d skipped, %d deleted, %d bytes in %.2fs; %s: %s", result.sent, result.skipped,
                 result.deleted, result.bytes, result.seconds, verb, "yes" if result.changed else "no")
    elif result.error is None:
        log.error("finished with %d failed file(s): %d sent, %d skipped in %.2fs", result.failed, result.sent,
                  result.skipped, result.seconds)
    return result


def sync_inventory(config_path: str | os.PathLike | None = None, *, inventory: Inventory | None = None,
                   only: str | Iterable[str] | None = None, raise_on_failure: bool = False,
                   on_result=None, lightweight: bool = False, **flags: Any) -> GroupResult:
    """Sync every host of the inventory (at most ``connections`` at once).

    One host failing never stops the others. Returns a GroupResult; with
    ``raise_on_failure`` a run with failed hosts raises SyncFailed instead.
    ``on_result(HostResult)`` is called as each host finishes.
    ``lightweight`` connects with paramiko alone (the console script's way).
    """
    inventory = inventory or load_inventory(config_path)
    settings = inventory.settings
    options = options_from(settings, **flags)
    hosts = [h for h in select_hosts(inventory.hosts, only) if h.name in inventory.mappings]
    group = GroupResult()
    log = get_logger()
    log.info("syncing %d host(s), %d at once%s", len(hosts), settings.connections,
             " (dry run)" if options.dry_run else "")
    trees = LocalTrees(options.exclude, options.symlinks, log.warning)
    # Walk the local trees while the connections are being made.
    trees.prefetch([m for h in hosts for m in inventory.mappings[h.name]])
    with ThreadPoolExecutor(max_workers=max(1, min(settings.connections, len(hosts) or 1))) as pool:
        futures = [pool.submit(_sync_entry, h, inventory.mappings[h.name], settings, options, trees, lightweight)
                   for h in hosts]
        for host, future in zip(hosts, futures):
            result = future.result()
            group[host.name] = result
            if on_result:
                on_result(result)
    if raise_on_failure and group.failed:
        raise SyncFailed(group)
    return group


def check_hosts(inventory: Inventory, only=None, lightweight: bool = False) -> dict[str, str | None]:
    """Connect to every host (host key and login checked); host -> error or None."""
    settings = inventory.settings
    hosts = select_hosts(inventory.hosts, only)

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


__all__ = ["sync_host", "sync_inventory", "check_hosts", "select_hosts", "options_from", "K"]
