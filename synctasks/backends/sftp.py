"""The SFTP backend: the same plan carried out with SFTP requests alone, for
accounts that run no shell command (``ForceCommand internal-sftp``, chrooted
or not, ``sftp-server``).

Lists with lstat/readdir, uploads into a staging folder made in the target
folder (mkdir fails on an existing name: never pre-planted), sets mode and
mtime there, and replaces atomically with ``posix-rename@openssh.com``
(where a server lacks it: remove, then rename, said in the result's notes).
Deletes with remove/rmdir, never following a link. Leftovers of cut runs are
found by name and age (no /proc here): a live run touches its staging
folders at least every HEARTBEAT seconds; one untouched for STALE_AFTER is
a leftover.

What SFTP cannot do is refused up front: sudo, owner/group names,
``--checksum`` (no remote hashing).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import secrets
import socket
import stat
import time

import paramiko

from ..constants import STAGING_PREFIX
from ..errors import Interrupted, RemoteError, UnsupportedError
from ..inputs import Mapping
from ..listing import Listing, RemoteEntry, kind_of, staging_name
from ..logger import get_logger
from ..options import SyncOptions
from ..local import LocalTrees
from ..plan import HostPlan, MappingPlan, plan_host

HEARTBEAT = 1.0  #: seconds between touches of a live run's staging folders
STALE_AFTER = 5.0  #: a staging folder untouched this long belongs to no live run
_STAGING = re.compile(re.escape(STAGING_PREFIX) + r"(.+)-(\d+)-([0-9a-f]{16})\Z")
#: This machine, as SFTP runs name it in their staging folders.
CLIENT = "sftp." + re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname() or "client")
#: Tokens of this process's SFTP runs that have ended (cut, failed or done):
#: their staging folders are leftovers at once, whatever their age.
ENDED: set[str] = set()


def _ours_and_over(name: str) -> bool:
    """A staging folder made from this machine by a run that is over: its
    process is gone, or it is a run of this process that ended."""
    match = _STAGING.match(name)
    if not match or match.group(1) != CLIENT:
        return False
    if match.group(3) in ENDED:
        return True
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def refuse_unsupported(mappings: list[Mapping], options: SyncOptions, label: str) -> None:
    """One-line refusals for what an SFTP-only account cannot do."""
    if options.compare == "checksum":
        raise UnsupportedError("--checksum needs a shell with sha256sum on the host, and this account speaks "
                               "SFTP only: drop --checksum for it", host=label)
    for mapping in mappings:
        if mapping.sudo:
            raise UnsupportedError(f'{mapping.source}: "sudo": true needs a shell on the host, and this account '
                                   "speaks SFTP only: remove sudo or use an account with a shell", host=label)
        if mapping.owner or mapping.group:
            raise UnsupportedError(f"{mapping.source}: owner/group need a shell (chown) on the host, and this "
                                   "account speaks SFTP only: remove owner and group", host=label)


def open_sftp(c, label: str, timeout: float) -> paramiko.SFTPClient:
    try:
        sftp = c.transport.open_sftp_client()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise RemoteError(f"the server offers no SFTP ({exc or type(exc).__name__}): use protocol = scp "
                          "(or auto)", host=label) from None
    sftp.get_channel().settimeout(timeout)
    return sftp


def _missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT


def _entry(path: str, attrs, sftp) -> RemoteEntry:
    mode = attrs.st_mode or 0
    kind = kind_of(mode)
    entry = RemoteEntry(kind=kind, mode=stat.S_IMODE(mode), size=(attrs.st_size or 0) if kind == "f" else 0,
                        mtime=int(attrs.st_mtime or 0), uid=str(attrs.st_uid), gid=str(attrs.st_gid))
    if kind == "l":
        try:
            entry.link = sftp.readlink(path) or ""
        except OSError:
            entry.link = ""
    return entry


def list_sftp(sftp: paramiko.SFTPClient, mappings: list[Mapping], token: str) -> Listing:
    """The listing of every dest, as the shell backend's script would give it."""
    listing = Listing(token=token, method="sftp")
    try:
        listing.home = sftp.normalize(".")
    except OSError:
        listing.home = ""
    now = time.time()

    def leftover(path: str, attrs) -> None:
        if (_ours_and_over(posixpath.basename(path)) or time.time() - (attrs.st_mtime or 0) >= STALE_AFTER
                or (attrs.st_mtime or 0) > now + 86400):
            listing.stale.append(path)
        # else: a live run's (or one cut a moment ago): left alone

    for mapping in mappings:
        entries = listing.entries.setdefault(mapping.dest, {})
        try:
            attrs = sftp.stat(mapping.dest)  # like find -H: dest itself may be a link
        except OSError as exc:
            if not _missing(exc):
                raise RemoteError(f"cannot read {mapping.dest}: {exc}") from None
            attrs = None
        if attrs is not None:
            entries[mapping.dest] = _entry(mapping.dest, attrs, sftp)
            if not mapping.is_dir and stat.S_ISLNK(sftp.lstat(mapping.dest).st_mode or 0):
                listing.dest_links[mapping.dest] = sftp.readlink(mapping.dest) or ""
            if mapping.is_dir and stat.S_ISDIR(attrs.st_mode or 0):
                stack = [mapping.dest]
                while stack:
                    folder = stack.pop()
                    try:
                        children = sftp.listdir_attr(folder)
                    except OSError as exc:
                        raise RemoteError(f"cannot read folder {folder}: {exc}") from None
                    for child in children:
                        path = posixpath.join(folder, child.filename)
                        if _STAGING.match(child.filename):
                            leftover(path, child)
                            continue
                        entries[path] = _entry(path, child, sftp)
                        if stat.S_ISDIR(child.st_mode or 0):
                            stack.append(path)
        parent = posixpath.dirname(mapping.dest.rstrip("/")) or "/"
        try:
            for child in sftp.listdir_attr(parent):
                if _STAGING.match(child.filename):
                    leftover(posixpath.join(parent, child.filename), child)
        except OSError:
            pass
    listing.stale = list(dict.fromkeys(listing.stale))
    return listing


class SftpRun:
    """One host's plan carried out over SFTP."""

    def __init__(self, sftp: paramiko.SFTPClient, plan: HostPlan, options: SyncOptions, label: str,
                 trees: LocalTrees | None, notes: list[str]):
        self.sftp, self.plan, self.options, self.label = sftp, plan, options, label
        self.trees, self.notes = trees, notes
        self.log = get_logger(label)
        self.staging = staging_name(plan.token)
        self.stages: list[str] = []
        self.beat = 0.0
        self.atomic = True

    def check_cancel(self) -> None:
        if self.options.cancelled:
            raise Interrupted("stopped: files in flight were abandoned (never committed)", host=self.label)

    def heartbeat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self.beat >= HEARTBEAT:
            self.beat = now
            for folder in self.stages:
                try:
                    self.sftp.utime(folder, None)
                except OSError:
                    pass

    def remove_tree(self, path: str) -> None:
        """rm -rf without following links."""
        try:
            attrs = self.sftp.lstat(path)
        except OSError as exc:
            if _missing(exc):
                return
            raise
        if stat.S_ISDIR(attrs.st_mode or 0):
            for child in self.sftp.listdir_attr(path):
                self.remove_tree(posixpath.join(path, child.filename))
            self.sftp.rmdir(path)
        else:
            self.sftp.remove(path)

    def rename(self, old: str, new: str) -> None:
        if self.atomic:
            try:
                self.sftp.posix_rename(old, new)
                return
            except OSError as exc:
                if "unsupported" not in str(exc).lower() and "not supported" not in str(exc).lower():
                    raise
                self.atomic = False
                self.notes.append("the SFTP server has no posix-rename: files were replaced by remove + rename "
                                  "(a reader may briefly see no file)")
        try:
            self.sftp.remove(new)
        except OSError:
            pass
        self.sftp.rename(old, new)

    def upload(self, send) -> None:
        entry = send.local
        path = posixpath.join(send.stage, send.name)
        blob = self.trees.blobs.get(entry.path) if self.trees is not None else None

        def progress(_done: int, _total: int) -> None:
            self.check_cancel()
            self.heartbeat()

        if blob is not None and len(blob) == entry.size:
            with self.sftp.open(path, "wb") as remote:
                remote.set_pipelined(True)
                remote.write(blob)
        else:
            with open(entry.path, "rb") as local:
                info = self.sftp.putfo(local, path, entry.size, callback=progress, confirm=True)
            if info.st_size != entry.size:
                raise OSError(f"{path}: {info.st_size} bytes arrived, {entry.size} sent")
        self.sftp.chmod(path, send.mode & 0o7777)
        seconds = max(0, entry.mtime_ns // 1_000_000_000)  # SFTP v3 times are unsigned
        self.sftp.utime(path, (max(0, entry.atime_ns // 1_000_000_000), seconds))

    def run(self) -> None:
        plan, sftp, log = self.plan, self.sftp, self.log
        for path in plan.stale:
            try:
                self.remove_tree(path)
            except OSError as exc:
                log.warning("could not remove the leftover %s: %s", path, exc)
        live: list[MappingPlan] = []
        for mapping_plan in plan.mappings:
            try:
                for folder in mapping_plan.mkparent:
                    self.makedirs(folder)
                for base in mapping_plan.bases:
                    stage = posixpath.join(base, self.staging)
                    if stage not in self.stages:
                        sftp.mkdir(stage, 0o700)  # fails on an existing name: never pre-planted
                        self.stages.append(stage)
                live.append(mapping_plan)
            except OSError as exc:
                reason = f"cannot write into the folder: {exc}"
                log.error("%s: %s", mapping_plan.mapping.dest, reason)
                mapping_plan.fail(reason)
        planned = getattr(self.options.progress, "planned", None)
        sends = [s for p in live for s in p.sends]
        if planned:
            planned(self.label, len(sends), sum(s.local.size for s in sends))
        failed: dict[int, str] = {}
        done_files = done_bytes = 0
        try:
            for mapping_plan in live:
                try:
                    for new_dir in sorted(mapping_plan.new_dirs, key=lambda d: d.stage.count("/")):
                        sftp.mkdir(new_dir.stage, 0o700)  # writable now, final mode after the move
                except OSError as exc:
                    raise RemoteError(f"cannot create {new_dir.path}: {exc}", host=self.label) from None
                for link in mapping_plan.links:
                    try:
                        sftp.symlink(link.local.link, posixpath.join(link.stage, link.name))
                    except OSError as exc:
                        failed[id(link)] = f"cannot create the link: {exc}"
                for send in mapping_plan.sends:
                    self.check_cancel()
                    self.heartbeat()
                    try:
                        self.upload(send)
                    except Interrupted:
                        raise
                    except OSError as exc:
                        failed[id(send)] = f"sftp: {exc}"
                    done_files += 1
                    done_bytes += send.local.size
                    if self.options.progress:
                        self.options.progress(self.label, done_files, done_bytes)
            self.heartbeat(force=True)
            self.commit(live, failed)
        except (paramiko.SSHException, EOFError, socket.timeout) as exc:
            raise RemoteError(f"the connection broke: {exc}", host=self.label) from None

    def makedirs(self, folder: str) -> None:
        parts = [p for p in folder.split("/") if p]
        path = "/" if folder.startswith("/") else ""
        for part in parts:
            path = posixpath.join(path, part)
            try:
                self.sftp.mkdir(path, 0o755)
            except OSError:
                attrs = self.sftp.stat(path)  # exists (or raises with the real reason)
                if not stat.S_ISDIR(attrs.st_mode or 0):
                    raise OSError(f"{path} is not a folder") from None

    def commit(self, live: list[MappingPlan], failed: dict[int, str]) -> None:
        sftp, log = self.sftp, self.log
        for mapping_plan in live:
            items = mapping_plan.sends + mapping_plan.links
            arrived = {s.path for s in items if id(s) not in failed}
            arrived |= {d.path for d in mapping_plan.new_dirs}
            for path in mapping_plan.removes:
                if path in arrived:
                    self.remove_tree(path)
            # Straight below a staging folder: files, links and new folders
            # (what is inside a new folder travels with it).
            for item in items:
                if id(item) in failed or item.stage != posixpath.join(item.base, self.staging):
                    continue
                try:
                    self.rename(posixpath.join(item.stage, item.name), item.path)
                except OSError as exc:
                    failed[id(item)] = f"cannot move into {item.base}: {exc}"
            for new_dir in mapping_plan.new_dirs:
                if posixpath.dirname(new_dir.stage) == posixpath.join(new_dir.base, self.staging):
                    try:
                        self.rename(new_dir.stage, new_dir.path)
                    except OSError as exc:
                        mapping_plan.fail(f"cannot move into {new_dir.base}: {exc}", ("mkdir", "send", "link"))
            for path in mapping_plan.deletes:
                try:
                    self.remove_tree(path)
                except OSError as exc:
                    mapping_plan.fail(f"delete failed: {exc}", ("delete",))
        for stage in self.stages:
            try:
                self.remove_tree(stage)
            except OSError as exc:
                log.warning("could not remove the temporary folder %s: %s", stage, exc)
        for mapping_plan in live:
            chmods = list(mapping_plan.chmods)
            chmods += [(d.mode & 0o7777, d.path) for d in mapping_plan.new_dirs]  # made 0700
            for mode, path in sorted(chmods, key=lambda mp: -mp[1].count("/")):
                try:
                    sftp.chmod(path, mode)
                except OSError as exc:
                    mapping_plan.fail(f"chmod failed: {exc}", ("chmod",))
            for seconds, path in mapping_plan.touches:
                try:
                    sftp.utime(path, (max(0, seconds), max(0, seconds)))
                except OSError as exc:
                    mapping_plan.fail(f"touch failed: {exc}", ("touch",))
        for mapping_plan in live:
            for send in mapping_plan.sends + mapping_plan.links:
                if id(send) in failed:
                    send.action, send.reason = "fail", failed[id(send)]
                    log.error("%s: %s", send.path, send.reason)


def sync_sftp(c, label: str, mappings: list[Mapping], options: SyncOptions, trees: LocalTrees,
              notes: list[str]) -> list:
    """List, plan and (unless a dry run) apply over SFTP; the mappings' results."""
    refuse_unsupported(mappings, options, label)
    sftp = open_sftp(c, label, options.io_timeout)
    secret = secrets.token_hex(8)
    token = f"{CLIENT}-{os.getpid()}-{secret}"
    try:
        return _list_plan_apply(sftp, token, label, mappings, options, trees, notes)
    finally:
        ENDED.add(secret)  # whatever happened: its staging folders are leftovers now
        sftp.close()


def _list_plan_apply(sftp, token: str, label: str, mappings: list[Mapping], options: SyncOptions,
                     trees: LocalTrees, notes: list[str]) -> list:
    from ..transfer import check_delete_safety  # transfer imports this module

    log = get_logger(label)
    try:
        listing = list_sftp(sftp, mappings, token)
    except RemoteError as exc:
        exc.host = label
        raise
    log.debug("listed %d remote entries in %d dests over SFTP",
              sum(len(e) for e in listing.entries.values()), len(listing.entries))
    plan = plan_host(token, mappings, listing, trees, compare=options.compare, delete=options.delete,
                     warn=log.warning, trusted=options.trusted, remote_links=options.remote_links,
                     list_unchanged=options.list_unchanged)
    results = [p.result for p in plan.mappings]
    check_delete_safety(mappings, listing.home, options, label)
    if not options.dry_run and plan.has_work:
        SftpRun(sftp, plan, options, label, trees, notes).run()
    return results
