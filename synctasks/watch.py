"""Watch mode: one sync, then keep every host following local edits.

    synctasks watch [--only HOSTS] [--delete] [--exclude PATTERN] [--json rounds.jsonl]

How it works:

- **Events.** Every ``src`` a selected host maps is watched with watchfiles
  (inotify on Linux, through the Rust ``notify`` crate; no polling loop of
  our own). Folders are watched recursively; a mapped *file* is watched
  through its parent folder (not recursively), so an editor's
  write-rename-replace keeps being seen. watchfiles hands over a batch once
  no event came for ``STEP_MS`` (or after ``debounce`` ms of continuous
  events), so a save storm or a ``git checkout`` becomes a few batches.
- **One worker per host** holds ONE open connection for the whole watch and
  keeps a set of pending changes; while a round is in flight, new events
  pile up and become the next round (coalescing again). A slow or dead
  host never holds the others back.
- **A round touches only what the events named** (see :func:`plan_round`):
  changed files go as single-file mappings (the remote side lists just
  those paths); new folders, links, type changes and deletions go through
  one *scoped* folder mapping per mapping, rooted at the deepest folder
  holding them all, whose walk is restricted to the named paths (everything
  else counts as excluded, so nothing else is sent or deleted). Its cost:
  the remote listing of that folder's subtree (one ``find``). A deletion
  (``--delete``) therefore lists the subtree of the deleted path's parent
  folder; a deletion at the top of a big tree lists the whole tree once.
  More than ``FILE_UNITS_MAX`` changed files in a mapping also go through
  the scoped mapping (one listing beats hundreds of single-path ones).
- **Trust the event.** The size+mtime compare works in whole seconds; a
  same-size save within the same second would look unchanged. Files an
  event named are sent whatever size and mtime say (``SyncOptions.trusted``).
- **Drops.** A host whose connection breaks is reconnected with backoff
  while the others go on; once back, it gets a normal incremental sync of
  every mapping (trusting every path that changed meanwhile), so nothing
  changed while it was away is lost.
- **Stop.** SIGINT/SIGTERM set the cancel event: no new round starts, the
  round in flight finishes or is abandoned atomically (the engine never
  commits a partial file; after ``GRACE`` seconds the connection is closed
  under it), a summary prints, exit 130 / 143.
- **Reports.** A log line per round (host, files, bytes, ms) in both log
  channels' way, and with ``--json PATH`` one JSON object per round appended
  to PATH (JSON Lines).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from . import constants as K
from .connection import build_connection, open_connection
from .errors import AuthError, HostKeyError, InputError, SyncTasksError
from .inputs import HostEntry, Inventory, Mapping
from .logger import get_logger, redact
from .options import SyncOptions
from .local import Excluder, LocalTrees
from .results import HostResult

#: Quiet time (ms) after the last event before a batch is handed over,
#: while events keep coming.
STEP_MS = 50
#: The step while idle. watchfiles' backend wakes (and takes the GIL) every
#: step, events or not: 50 ms steps cost ~0.2 s of CPU per idle 2 minutes,
#: 100 ms steps half that; the first save after a pause then waits 100-200 ms
#: for its batch instead of 50-100 ms.
IDLE_STEP_MS = 100
#: Seconds without events after which the watcher is idle again.
ACTIVE_SECONDS = 10.0
#: Longest time (ms) events are gathered while they keep coming.
DEBOUNCE_MS = 1000
#: Changed files of one mapping sent as single-file mappings, at most;
#: above it they go through the scoped folder mapping.
FILE_UNITS_MAX = 16
#: Reconnection backoff: first wait, doubling up to the cap (seconds).
BACKOFF_START = 0.5
BACKOFF_MAX = 2.0
#: An idle worker checks its connection this often (seconds); a drop is
#: also noticed by the next round. (Every wake-up of an idle thread costs
#: CPU: the idle watch is budgeted at 0.2 s of CPU per 2 minutes.)
LIVENESS = 10.0
#: After a stop, a round in flight gets this long before its connection is
#: closed under it (seconds).
GRACE = 1.0
#: SSH keepalive interval (seconds): notices a dead peer on an idle link.
KEEPALIVE = 15
#: How often an idle connection's reader thread wakes (seconds).
SOCKET_WAKEUP = 5.0

ADDED, MODIFIED, DELETED = 1, 2, 4  #: change kinds (bit flags), as watchfiles numbers them 1, 2, 3

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _kind_bit(change: int) -> int:
    return {1: ADDED, 2: MODIFIED, 3: DELETED}.get(int(change), MODIFIED)


# --------------------------------------------------------------------------
# Planning a round: which mappings carry the changes of one mapping
# --------------------------------------------------------------------------
@dataclass
class Scope:
    """The part of a folder mapping that one round syncs.

    ``mapping`` (the mapper file's) is synced from its sub-folder ``prefix``;
    only ``trees`` (with all they hold) and ``exact`` (alone) are walked,
    sent or deleted, with the mapping's own exclude patterns still matched
    against paths below the mapping's root.
    """

    mapping: Mapping
    prefix: str  #: rel path of the sub-root below mapping.src ("" = the root)
    trees: set[str] = field(default_factory=set)  #: rel paths below the sub-root
    exact: set[str] = field(default_factory=set)

    def excluder(self, base: Callable[[str, bool], bool]) -> Callable[[str, bool], bool]:
        above = {rel.rsplit("/", 1)[0] if "/" in rel else "" for rel in self.trees | self.exact}
        for rel in list(above):
            while rel:
                rel = rel.rsplit("/", 1)[0] if "/" in rel else ""
                above.add(rel)
        trees, exact, prefix = self.trees, self.exact, self.prefix

        def in_scope(rel: str) -> bool:
            if rel in exact or rel in above or "" in trees:
                return True
            while rel:
                if rel in trees:
                    return True
                rel = rel.rsplit("/", 1)[0] if "/" in rel else ""
            return False

        def excluded(rel: str, is_dir: bool) -> bool:
            if not rel:
                return False
            if not in_scope(rel):
                return True  # out of this round: neither sent nor deleted
            return base(f"{prefix}/{rel}" if prefix else rel, is_dir)

        return excluded


class RoundTrees(LocalTrees):
    """The local walks of one round: a scoped mapping walks only its scope,
    and keeps matching exclude patterns against its mapping's root."""

    def __init__(self, global_exclude: tuple[str, ...] = (), symlinks: str = "copy", warn=print,
                 senders: int | None = None):
        super().__init__(global_exclude, symlinks, warn, senders=senders)
        self.scopes: dict[Mapping, Scope] = {}

    def excluder(self, mapping: Mapping):
        scope = self.scopes.get(mapping)
        if scope is None:
            return super().excluder(mapping)
        return scope.excluder(Excluder(self.global_exclude + tuple(scope.mapping.exclude)))


@dataclass
class RoundPlan:
    """What one round sends for one mapping (see :func:`plan_round`)."""

    #: single-file mappings, and at most one scoped folder mapping
    mappings: list[Mapping] = field(default_factory=list)
    #: the scoped folder mapping -> what of it the round syncs
    scopes: dict[Mapping, Scope] = field(default_factory=dict)
    trusted: set[str] = field(default_factory=set)  #: local paths the events named
    ignored: int = 0  #: excluded changes


def _parent(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def _common(rels: Iterable[str]) -> str:
    parts: list[str] | None = None
    for rel in rels:
        these = rel.split("/") if rel else []
        if parts is None:
            parts = these
            continue
        n = 0
        while n < min(len(parts), len(these)) and parts[n] == these[n]:
            n += 1
        parts = parts[:n]
    return "/".join(parts or [])


def _is_excluded(exclude: Excluder, rel: str, mode: int | None) -> bool:
    """Whether a changed path is excluded: one of its folders is, or the
    path itself (as what it is now; a vanished path is judged later, against
    what the remote side has)."""
    parts = rel.split("/")
    for n in range(1, len(parts)):
        if exclude("/".join(parts[:n]), True):
            return True
    return mode is not None and exclude(rel, stat.S_ISDIR(mode))


def plan_round(mapping: Mapping, changes: dict[str, int], *, delete: bool, global_exclude: tuple[str, ...] = (),
               file_units_max: int = FILE_UNITS_MAX) -> RoundPlan:
    """The mappings that carry ``changes`` (rel path below ``mapping.src`` ->
    change bits) of one mapping to a host, and the local paths to trust."""
    plan = RoundPlan()
    src = str(mapping.src)
    if not mapping.is_dir:
        try:
            info = os.stat(src)
        except OSError:
            return plan  # the mapped file is gone: its remote copy is left alone
        if stat.S_ISREG(info.st_mode):
            plan.mappings.append(mapping)
            plan.trusted.add(src)
        return plan

    if not os.path.isdir(src):
        return plan  # the mapped folder itself is gone: its remote copy is left alone
    exclude = Excluder(tuple(global_exclude) + tuple(mapping.exclude))
    files: list[str] = []
    trees: set[str] = set()
    exact: set[str] = set()
    for rel in sorted(changes):
        bits = changes[rel]
        if not rel:
            exact.add("")  # the root folder itself (its mode)
            continue
        try:
            mode = os.lstat(os.path.join(src, rel)).st_mode
        except OSError:
            mode = None
        if _is_excluded(exclude, rel, mode):
            plan.ignored += 1
            continue
        if mode is None:
            if delete:
                trees.add(rel)  # gone: delete it remotely (with what it held)
        elif stat.S_ISREG(mode):
            plan.trusted.add(os.path.join(src, rel))
            if bits & DELETED and delete:
                trees.add(rel)  # replaced: it may have been a folder remotely
            else:
                files.append(rel)
        elif stat.S_ISDIR(mode) and not bits & (ADDED | DELETED):
            exact.add(rel)  # its mode changed, not what it holds
        else:
            trees.add(rel)  # a new folder (all it holds), a link, anything else
    # Drop what a tree already covers.
    def covered(rel: str) -> bool:
        while rel:
            rel = _parent(rel)
            if rel in trees:
                return True
        return False

    trees = {r for r in trees if not covered(r)}
    exact = {r for r in exact if not covered(r)} - trees
    files = [r for r in files if not covered(r)]
    if len(files) > file_units_max:
        exact |= set(files)
        files = []
    if trees or exact:
        anchors = []
        for rel in trees | exact:
            try:
                is_dir = stat.S_ISDIR(os.lstat(os.path.join(src, rel)).st_mode)
            except OSError:
                is_dir = False
            anchors.append(rel if is_dir else _parent(rel))
        root = _common(anchors)
        while root and not os.path.isdir(os.path.join(src, root)):
            root = _parent(root)  # raced away: the nearest folder still there
        inside = [r for r in files if root == "" or r.startswith(root + "/")]
        exact |= set(inside)
        files = [r for r in files if r not in set(inside)]

        def below(rel: str) -> str:
            return rel[len(root) + 1:] if root else rel

        scope = Scope(mapping, root, {below(r) for r in trees}, {below(r) for r in exact})
        # Walks are shared by src, kind and patterns: a distinct walk for
        # each distinct scope (a comment line, for gitignore-style matching).
        marker = hashlib.sha1(repr((root, sorted(scope.trees), sorted(scope.exact))).encode()).hexdigest()[:16]
        sub = replace(mapping, src=Path(os.path.join(src, root)) if root else mapping.src,
                      dest=f"{mapping.dest.rstrip('/')}/{root}" if root else mapping.dest, is_dir=True,
                      exclude=tuple(mapping.exclude) + (f"# synctasks watch scope {marker}",))
        plan.mappings.append(sub)
        plan.scopes[sub] = scope
    for rel in files:
        plan.mappings.append(replace(mapping, src=Path(os.path.join(src, rel)),
                                     dest=f"{mapping.dest.rstrip('/')}/{rel}", is_dir=False, exclude=()))
    return plan


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------
@dataclass
class HostWatch:
    """What one host went through during a watch."""

    host: str
    #: connecting | syncing | watching | down | failed | stopped
    state: str = "connecting"
    #: rounds run (the first sync and re-syncs included)
    rounds: int = 0
    #: files sent, deleted and failed, bytes sent, over every round
    sent: int = 0
    deleted: int = 0
    failed: int = 0
    bytes: int = 0
    #: times the connection was made again after a drop
    reconnects: int = 0
    #: the last round's or connection's error, None once a round went well
    error: str | None = None
    #: a permanent failure (login refused, host key): the host is out
    fatal: bool = False

    @property
    def ok(self) -> bool:
        return not self.fatal and self.error is None

    def to_dict(self) -> dict:
        return {"host": self.host, "ok": self.ok, "state": self.state, "rounds": self.rounds, "sent": self.sent,
                "deleted": self.deleted, "failed": self.failed, "bytes": self.bytes,
                "reconnects": self.reconnects, "error": self.error}


class WatchSummary(dict):
    """host -> HostWatch for a whole watch."""

    @property
    def failed(self) -> dict[str, HostWatch]:
        return {h: w for h, w in self.items() if not w.ok}


@dataclass
class RoundRecord:
    """One round on one host (a line of the log, an object of ``--json``)."""

    host: str
    round: int  #: the host's round number, from 1 (the first sync)
    kind: str  #: initial | round | resync
    result: HostResult | None  #: None when the round failed before the host answered
    ms: float  #: wall time, planning included
    events: int = 0  #: changed paths the round carried
    error: str | None = None  #: why the round failed as a whole

    @property
    def ok(self) -> bool:
        return self.error is None and (self.result is None or self.result.ok)

    def to_dict(self) -> dict:
        r = self.result
        return {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "host": self.host,
                "round": self.round, "kind": self.kind, "ok": self.ok, "changed": bool(r and r.changed),
                "events": self.events, "sent": r.sent if r else 0, "deleted": r.deleted if r else 0,
                "skipped": r.skipped if r else 0, "failed": r.failed if r else 0, "bytes": r.bytes if r else 0,
                "ms": round(self.ms, 1), "error": self.error or (r.first_error if r else None)}


# --------------------------------------------------------------------------
# One worker per host
# --------------------------------------------------------------------------
class _HostWorker(threading.Thread):
    def __init__(self, session: "WatchSession", host: HostEntry, mappings: list[Mapping]):
        super().__init__(name=f"watch-{host.name}", daemon=True)
        self.session = session
        self.host = host
        self.mappings = mappings
        self.stats = HostWatch(host.name)
        self.log = get_logger(host.name)
        self.cond = threading.Condition()
        #: mapping index -> rel path -> change bits, waiting for the next round
        self.pending: dict[int, dict[str, int]] = {}
        self.c = None
        self.round_no = 0
        self.in_round = False

    # -- events --------------------------------------------------------
    def add(self, changes: list[tuple[int, str, int]]) -> None:
        """Queue (mapping index, rel path, change bits) for the next round,
        all at once: a round never takes half of a batch."""
        with self.cond:
            for index, rel, bits in changes:
                mine = self.pending.setdefault(index, {})
                mine[rel] = mine.get(rel, 0) | bits
            self.cond.notify()

    def _take(self) -> dict[int, dict[str, int]]:
        with self.cond:
            taken, self.pending = self.pending, {}
            return taken

    def _give_back(self, taken: dict[int, dict[str, int]]) -> None:
        with self.cond:
            for index, changes in taken.items():
                mine = self.pending.setdefault(index, {})
                for rel, bits in changes.items():
                    mine[rel] = mine.get(rel, 0) | bits

    # -- connection ----------------------------------------------------
    @property
    def connected(self) -> bool:
        transport = getattr(self.c, "transport", None) if self.c is not None else None
        return transport is not None and transport.is_active()

    def _connect(self) -> None:
        session = self.session
        self.c = build_connection(self.host, session.settings, session.lightweight)
        open_connection(self.c, self.host.name)
        try:
            transport = self.c.transport
            transport.set_keepalive(KEEPALIVE)
            # paramiko's reader wakes at every socket timeout (0.1 s) to look
            # for a close; for a connection idle for hours, every few seconds
            # will do (a close by us does not wait for it).
            transport.sock.settimeout(SOCKET_WAKEUP)
        except Exception:
            pass

    def close(self) -> None:
        c, self.c = self.c, None
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    # -- the loop ------------------------------------------------------
    def run(self) -> None:
        stop = self.session.stop
        self.backoff = BACKOFF_START
        #: the kind of full sync owed (initial, resync), or None
        self.full: str | None = "initial"
        #: since when the host is unreachable (None: it is not)
        self.down_since: float | None = None
        try:
            while not stop.is_set():
                try:
                    if not self._step():
                        return
                except Exception:  # a bug must not silently end this host's watch
                    self.log.exception("unexpected error; going on after %.1fs", self.backoff)
                    self.close()
                    self.full = self.full or "resync"
                    self._pause()
        finally:
            if not self.stats.fatal:
                self.stats.state = "stopped"
            self.close()

    def _pause(self) -> None:
        """Wait before trying again (backoff: 0.5 s doubling up to BACKOFF_MAX)."""
        self.session.stop.wait(self.backoff)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def _step(self) -> bool:
        """Connect, or run the full sync owed, or wait for events and run a
        round. False: this host is out of the watch for good."""
        stop = self.session.stop
        if not self.connected:
            self.close()
            self.stats.state = "connecting" if self.full == "initial" and self.down_since is None else "down"
            try:
                self._connect()
            except (AuthError, HostKeyError) as exc:
                self._fatal(exc)
                return False
            except Exception as exc:
                error = redact(_plain(exc, self.host.name))
                # Once per outage in the logs' warnings; each try at debug level.
                if self.down_since is None or error != self.stats.error:
                    self.log.warning("%s; trying again every %.0fs or less", error, BACKOFF_MAX)
                else:
                    self.log.debug("%s; trying again in %.1fs", error, self.backoff)
                self.stats.error = error
                self.down_since = self.down_since or time.monotonic()
                self._pause()
                return True
            if self.down_since is not None and self.full != "initial":
                self.stats.reconnects += 1
                self.log.warning("reconnected after %.1fs; syncing what changed meanwhile",
                                 time.monotonic() - self.down_since)
            self.down_since = None
        if self.full:
            # A normal incremental sync of every mapping, trusting whatever
            # changed while it could not be sent.
            if self._round(self.full, self._take(), whole=True):
                self.full, self.backoff = None, BACKOFF_START
                self.stats.state = "watching"
            else:
                if self.full != "initial":
                    self.down_since = self.down_since or time.monotonic()
                self._pause()
            return True
        with self.cond:
            if not self.pending and not stop.is_set():
                self.cond.wait(LIVENESS)
            has_work = bool(self.pending)
        if stop.is_set():
            return True
        if has_work:
            if not self._round("round", self._take()):
                self.full = "resync"
                self.down_since = self.down_since or time.monotonic()
                self._pause()
        elif not self.connected:
            self.log.warning("connection lost; reconnecting")
            self.down_since = time.monotonic()
            self.full = "resync"
        return True

    def _fatal(self, exc: Exception) -> None:
        self.stats.error = redact(_plain(exc, self.host.name))
        self.stats.fatal = True
        self.stats.state = "failed"
        self.log.error("%s; this host is out of the watch", self.stats.error)
        self.session.host_out()

    def _round(self, kind: str, taken: dict[int, dict[str, int]], whole: bool = False) -> bool:
        """Run one round; False if the connection has to be made again (the
        changes are then kept for the full sync that follows)."""
        session = self.session
        options = session.options
        started = time.monotonic()
        trees = RoundTrees(options.exclude, options.symlinks, self.log.warning)
        trusted: set[str] = set()
        events = sum(len(c) for c in taken.values())
        if whole:
            mappings = list(self.mappings)
            for index, changes in taken.items():
                src = str(self.mappings[index].src)
                trusted |= {os.path.join(src, rel) if rel else src for rel in changes}
            shared = session.initial_trees
            if kind == "initial" and shared is not None and not taken:
                # The walk made while connecting, shared by every host; not
                # once events came in (it may predate them: a file changed
                # since would fail its send, its event already used up).
                trees = shared
        else:
            mappings, trees, trusted = session.prepare_round(self, taken)
            if not mappings:
                session.release(trees)
                return True  # only excluded or irrelevant changes
            # The events are trusted: no need to hash anything.
            options = replace(options, compare="size-mtime")
        options = replace(options, trusted=frozenset(trusted))
        self.round_no += 1
        number = self.round_no
        self.stats.state = "syncing" if whole else self.stats.state
        result, error = None, None
        with session.slots:
            if session.stop.is_set() and not whole:
                session.release(trees)
                self._give_back(taken)
                return True
            self.in_round = True
            try:
                result = session.sync(self.c, mappings, options, self.host.name, trees,
                                      self.host.sudo_password or self.host.password)
            except Exception as exc:  # a dropped link, a remote failure, a bug: retried with a full sync
                error = exc
            finally:
                self.in_round = False
        session.release(trees)
        ms = (time.monotonic() - started) * 1000
        record = RoundRecord(self.host.name, number, kind, result, ms, events)
        self.stats.rounds += 1
        if result is not None:
            # What a round committed counts, even if it then failed.
            self.stats.sent += result.sent
            self.stats.deleted += result.deleted
            self.stats.failed += result.failed
            self.stats.bytes += result.bytes
        if error is None and result.error is not None:
            error = result.error  # the host failed part-way (what was committed is in the result)
        if error is not None:
            record.error = redact(error if isinstance(error, str) else _plain(error, self.host.name))
            # Everything the round carried goes again, with the full sync
            # that follows the reconnection (sent twice at worst).
            self._give_back(taken)
            self.stats.error = record.error
            if session.stop.is_set():
                self.log.info("round %d (%s) abandoned: stopping", number, kind)
            elif not self.connected or getattr(error, "transient", False):
                self.log.warning("round %d (%s) cut: %s", number, kind, record.error)
            else:
                self.log.error("round %d (%s) failed: %s", number, kind, record.error)
            self.close()
            session.report(record, self.stats)
            return False
        if kind == "initial":
            session.initial_done()
        self.stats.error = None if result.ok else result.first_error
        session.report(record, self.stats)
        return True


def _rebase(unit: Mapping, original: Mapping, mine: Mapping) -> Mapping:
    """``unit`` (planned for ``original``) for another host's mapping of the
    same src: its dest and its owner, group, mode and sudo."""
    if original is mine:
        return unit
    suffix = unit.dest[len(original.dest.rstrip("/")):] if unit.dest != original.dest else ""
    return replace(unit, dest=(mine.dest.rstrip("/") + suffix) if suffix else mine.dest, sudo=mine.sudo,
                   owner=mine.owner, group=mine.group, mode=mine.mode, source=mine.source)


def _plain(exc: Exception, host: str) -> str:
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, SyncTasksError):
        message = f"{type(exc).__name__}: {message}"
    return message.removeprefix(f"{host}: ")


# --------------------------------------------------------------------------
# The watch
# --------------------------------------------------------------------------
class WatchLimitError(SyncTasksError):
    """The local trees need more inotify watches (or instances) than allowed."""


WATCH_LIMIT_HINT = ("the local trees need more inotify watches than the system allows: raise the limit, e.g. "
                    "`sudo sysctl fs.inotify.max_user_watches=1048576` (and put "
                    "`fs.inotify.max_user_watches=1048576` in /etc/sysctl.d/90-inotify.conf to keep it), "
                    "or watch fewer folders (--only, exclude)")
INSTANCE_LIMIT_HINT = ("no inotify instance left: raise `sudo sysctl fs.inotify.max_user_instances=1024` "
                       "or stop other watchers")


def _watch_error(exc: BaseException, paths: list[str]) -> SyncTasksError:
    text = str(exc)
    errno = getattr(exc, "errno", None)
    if "watch limit" in text.lower() or errno == 28 or "No space left" in text:
        return WatchLimitError(f"cannot watch {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}: "
                               f"{WATCH_LIMIT_HINT}")
    if errno == 24 or "too many open files" in text.lower():
        return WatchLimitError(f"cannot watch: {INSTANCE_LIMIT_HINT}")
    return SyncTasksError(f"cannot watch {', '.join(paths[:3])}: {text}")


class _Watcher(threading.Thread):
    """One watchfiles watcher (recursive or not) feeding the session."""

    def __init__(self, session: "WatchSession", paths: list[str], recursive: bool):
        super().__init__(name="watch-events" + ("" if recursive else "-files"), daemon=True)
        from watchfiles._rust_notify import RustNotify  # watchfiles' documented Rust backend

        self.session = session
        self.paths = paths
        try:
            # Made here, not in the thread: the watches are in place (and
            # any limit error raised) before the first sync starts.
            self.notify = RustNotify(paths, False, False, 300, recursive, False)
        except (OSError, RuntimeError) as exc:
            raise _watch_error(exc, paths) from None

    def run(self) -> None:
        session = self.session
        last_event = -ACTIVE_SECONDS
        try:
            while not session.stop.is_set():
                if time.monotonic() - last_event < ACTIVE_SECONDS:
                    raw = self.notify.watch(session.debounce_ms, STEP_MS, int(ACTIVE_SECONDS * 1000), session.stop)
                else:
                    raw = self.notify.watch(session.debounce_ms, IDLE_STEP_MS, 0, session.stop)
                if raw == "stop":
                    break
                if isinstance(raw, str):
                    continue  # timeout / signal (signals are the main thread's business)
                last_event = time.monotonic()
                session.route(raw)
        except Exception as exc:  # e.g. the watch limit hit by a folder made later
            session.fail(_watch_error(exc, self.paths))
        finally:
            self.notify.close()


class WatchSession:
    """Watch the mappings of some hosts and keep those hosts following.

    ``run()`` blocks until ``stop`` is set (or every host is out) and returns
    the :class:`WatchSummary`. ``on_round(RoundRecord, HostWatch)`` is called
    after every round, from the host's worker thread.
    """

    def __init__(self, inventory: Inventory, hosts: list[HostEntry], options: SyncOptions, *,
                 stop: threading.Event | None = None, on_round=None, lightweight: bool = False,
                 debounce_ms: int = DEBOUNCE_MS, ignore: Iterable[str] = (), sync=None):
        from .transfer import sync_connection

        self.inventory = inventory
        self.settings = inventory.settings
        self.stop = stop or threading.Event()
        self.options = replace(options, cancel=self.stop)
        self.on_round = on_round
        self.lightweight = lightweight
        self.debounce_ms = debounce_ms
        self.sync = sync or sync_connection
        self.slots = threading.BoundedSemaphore(max(1, self.settings.connections))
        self.workers = [_HostWorker(self, h, inventory.mappings[h.name]) for h in hosts]
        self.error: SyncTasksError | None = None
        #: local paths never to act on: our own logs and report (else every
        #: round's log line would start the next round)
        self.ignore = tuple(str(p) for p in ignore)
        self.initial_trees: LocalTrees | None = LocalTrees(options.exclude, options.symlinks,
                                                           get_logger().warning, senders=len(self.workers))
        self._lock = threading.Lock()
        self._out = 0
        #: batches routed so far: a round's walk is shared only by rounds of
        #: the same changes with no event routed in between
        self.generation = 0
        self._shared: tuple | None = None  # (key, generation, plans, trees, users)
        #: src path -> [(worker, mapping index, is_dir)]
        self.routes: dict[str, list[tuple[_HostWorker, int, bool]]] = {}
        for worker in self.workers:
            for index, mapping in enumerate(worker.mappings):
                self.routes.setdefault(str(mapping.src), []).append((worker, index, mapping.is_dir))

    # -- events --------------------------------------------------------
    def watch_paths(self) -> tuple[list[str], list[str]]:
        """(folders watched recursively, folders of mapped files watched alone)."""
        folders = sorted({src for src, routes in self.routes.items() if routes[0][2]})
        top = [f for f in folders if not any(f.startswith(o.rstrip("/") + "/") for o in folders if o != f)]
        parents = sorted({os.path.dirname(src) for src, routes in self.routes.items() if not routes[0][2]})
        parents = [p for p in parents if not any(p == t or p.startswith(t.rstrip("/") + "/") for t in top)]
        return top, parents

    def route(self, raw: set[tuple[int, str]]) -> None:
        with self._lock:
            self.generation += 1
        batches: dict[_HostWorker, list[tuple[int, str, int]]] = {}
        for change, path in raw:
            if self.ignore and path.startswith(self.ignore):
                continue
            bits = _kind_bit(change)
            probe = path
            while True:
                for worker, index, is_dir in self.routes.get(probe, ()):
                    if probe == path:
                        batches.setdefault(worker, []).append((index, "", bits))
                    elif is_dir:
                        rel = path[len(probe) + 1:] if probe != "/" else path[1:]
                        batches.setdefault(worker, []).append((index, rel, bits))
                parent = os.path.dirname(probe)
                if parent == probe:
                    break
                probe = parent
        for worker, changes in batches.items():
            worker.add(changes)

    def prepare_round(self, worker: _HostWorker, taken: dict[int, dict[str, int]]
                      ) -> tuple[list[Mapping], RoundTrees, set[str]]:
        """The mappings, walks and trusted paths of one host's round.

        Hosts that map the same src and got the same changes (the usual case:
        every host follows one tree) share the planning, the local walk and
        the small files read, as a one-shot sync shares them.
        """
        options = self.options
        key = tuple((str(m.src), m.is_dir, m.exclude, tuple(sorted(taken[i].items())))
                    for i, m in sorted(enumerate(worker.mappings), key=lambda p: p[0]) if i in taken)
        with self._lock:
            shared = self._shared
            if shared is None or shared[0] != key or shared[1] != self.generation:
                plans = {}
                # senders: at most (the hosts this round's changes reach)
                trees = RoundTrees(options.exclude, options.symlinks, get_logger().warning, len(self.workers))
                shared = self._shared = [key, self.generation, plans, trees, 0]
            shared[4] += 1
            plans, trees = shared[2], shared[3]
        mappings: list[Mapping] = []
        trusted: set[str] = set()
        for index, changes in sorted(taken.items()):
            mine = worker.mappings[index]
            common = (str(mine.src), mine.is_dir, mine.exclude)
            with self._lock:
                found = plans.get(common)
            if found is None:
                found = (mine, plan_round(mine, changes, delete=options.delete, global_exclude=options.exclude))
                with self._lock:
                    found = plans.setdefault(common, found)
            original, plan = found
            for unit in plan.mappings:
                ours = _rebase(unit, original, mine)
                mappings.append(ours)
                if unit in plan.scopes:
                    trees.scopes[ours] = plan.scopes[unit]
            trusted |= plan.trusted
        return mappings, trees, trusted

    def initial_done(self) -> None:
        with self._lock:
            self._initial_left = getattr(self, "_initial_left", len(self.workers)) - 1
            if self._initial_left <= 0:
                self.initial_trees = None  # it holds the small files it read

    def release(self, trees: LocalTrees) -> None:
        """A round is over: once no round uses the shared walk, let it go
        (it holds the small files it read)."""
        with self._lock:
            shared = self._shared
            if shared is not None and shared[3] is trees:
                shared[4] -= 1
                if shared[4] <= 0:
                    self._shared = None

    def fail(self, error: SyncTasksError) -> None:
        self.error = self.error or error
        get_logger().error("%s", error)
        self.stop.set()

    def host_out(self) -> None:
        with self._lock:
            self._out += 1
            if self._out >= len(self.workers):
                self.stop.set()

    def report(self, record: RoundRecord, stats: HostWatch) -> None:
        log = get_logger(record.host)
        r = record.result
        if record.error is None and r is not None:
            log.info("round %d (%s): %d file(s) sent, %d deleted, %d failed, %d bytes in %.0f ms",
                     record.round, record.kind, r.sent, r.deleted, r.failed, r.bytes, record.ms)
            for f in r._all():
                if f.action == "fail":
                    log.error("%s: %s", f.path, f.reason)
        if self.on_round:
            try:
                self.on_round(record, stats)
            except Exception:
                log.exception("on_round callback failed")

    # -- the whole watch -----------------------------------------------
    def run(self, ready: Callable[[], None] | None = None) -> WatchSummary:
        folders, parents = self.watch_paths()
        watchers = []
        if folders:
            watchers.append(_Watcher(self, folders, True))
        if parents:
            watchers.append(_Watcher(self, parents, False))
        for watcher in watchers:
            watcher.start()
        log = get_logger()
        log.info("watching %d folder(s) for %d host(s)", len(folders) + len(parents), len(self.workers))
        self.initial_trees.prefetch([m for w in self.workers for m in w.mappings])
        for worker in self.workers:
            worker.start()
        if ready:
            ready()
        if not self.workers:
            self.stop.set()
        while not self.stop.wait(30.0):  # a signal handler's set() ends the wait at once
            pass
        for worker in self.workers:  # idle ones wake up and leave
            with worker.cond:
                worker.cond.notify_all()
        # Let the rounds in flight finish; past the grace time, close their
        # connections under them (the engine never commits a partial file).
        deadline = time.monotonic() + GRACE
        while any(w.in_round for w in self.workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        for worker in self.workers:
            if worker.in_round:
                log.warning("stopping: abandoning the round in flight on %s", worker.host.name)
                worker.close()
        for worker in self.workers + watchers:
            worker.join(5)
        return WatchSummary((w.host.name, w.stats) for w in self.workers)


# --------------------------------------------------------------------------
# The command (`synctasks watch`, `fab watch`)
# --------------------------------------------------------------------------
def run_watch(config: str | None = None, *, only=None, delete: bool | None = None, checksum: bool = False,
              exclude: Iterable[str] = (), json_path: str | None = None, quiet: bool = False,
              verbose: bool = False, force: bool = False, debounce_ms: int = DEBOUNCE_MS, out=None,
              lightweight: bool = False) -> int:
    """One sync, then follow local edits until SIGINT/SIGTERM; the exit status."""
    from . import cli
    from .logger import close_logging
    from .progress import human_bytes
    from .runner import options_from, select_hosts

    out = out or sys.stdout
    try:
        inventory = cli._load(config)
        hosts = [h for h in select_hosts(inventory.hosts, only) if h.name in inventory.mappings]
        options = options_from(inventory.settings, delete=delete, checksum=checksum, force=force)
        options = replace(options, exclude=tuple(options.exclude) + tuple(exclude))
        if options.delete and not options.force:
            cli.check_shallow_dests(inventory, {h.name for h in hosts})
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        close_logging()
        return K.EXIT_BAD_INPUT
    settings = inventory.settings
    ignore = [settings.info_log, settings.error_log] + ([Path(json_path).absolute()] if json_path else [])
    report = open(json_path, "a", encoding="utf-8") if json_path else None
    print_lock = threading.Lock()

    def on_round(record: RoundRecord, stats: HostWatch) -> None:
        with print_lock:
            if report is not None:
                report.write(json.dumps(record.to_dict()) + "\n")
                report.flush()
            r = record.result
            if quiet:
                return
            if record.error:
                print(f"{record.host}: round {record.round} ({record.kind}) FAILED: "
                      f"{cli.printable(record.error)}", file=out, flush=True)
            elif r is not None and (r.changed or not r.ok or record.kind != "round" or verbose):
                print(f"{record.host}: round {record.round} ({record.kind}): {r.sent} sent, {r.deleted} deleted"
                      f"{f', {r.failed} FAILED' if r.failed else ''}, {human_bytes(r.bytes)}, "
                      f"{record.ms:.0f} ms", file=out, flush=True)
                if verbose:
                    cli._print_items(r, False, out)

    stop = threading.Event()
    got: list[int] = []
    previous = {}

    def on_signal(signum, frame) -> None:
        if got and signum in got:
            os._exit(EXIT_SIGNAL.get(signum, 1))  # a second one: leave now
        got.append(signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in EXIT_SIGNAL:
            previous[signum] = signal.signal(signum, on_signal)
    started = time.monotonic()
    session = None
    try:
        session = WatchSession(inventory, hosts, options, stop=stop, on_round=on_round, lightweight=lightweight,
                               debounce_ms=debounce_ms, ignore=ignore)
        if not quiet:
            print(f"watching {len(hosts)} host(s); Ctrl-C to stop", file=out, flush=True)
        summary = session.run()
    except WatchLimitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        close_logging()
        return K.EXIT_BAD_INPUT
    except KeyboardInterrupt:
        got.append(signal.SIGINT)
        stop.set()
        summary = WatchSummary((w.host.name, w.stats) for w in session.workers) if session else WatchSummary()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if report is not None:
            report.close()
    seconds = time.monotonic() - started
    if session is not None and session.error is not None:
        print(f"error: {session.error}", file=sys.stderr)
    if not quiet or summary.failed:
        print_watch_summary(summary, out)
    why = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}.get(got[0]) if got else "every host is out"
    print(f"watch stopped ({why}) after {seconds:.1f}s: {len(summary)} host(s), "
          f"{sum(w.rounds for w in summary.values())} round(s), {len(summary.failed)} with errors", file=out,
          flush=True)
    close_logging()
    if got:
        return EXIT_SIGNAL[got[0]]
    return K.EXIT_FAILED if summary.failed or (session and session.error) else K.EXIT_OK


def print_watch_summary(summary: WatchSummary, out) -> None:
    from .cli import printable
    from .progress import human_bytes

    rows = [("HOST", "STATUS", "ROUNDS", "SENT", "DELETED", "FAILED", "BYTES", "RECONNECTS", "LAST ERROR")]
    for host, w in summary.items():
        error = printable(w.error or "")
        rows.append((host, "ok" if w.ok else "FAILED", str(w.rounds), str(w.sent), str(w.deleted), str(w.failed),
                     human_bytes(w.bytes), str(w.reconnects), error[:97] + "..." if len(error) > 100 else error))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


def add_parser(commands) -> None:
    """The ``watch`` subcommand of the console script."""
    p = commands.add_parser("watch", help="sync, then keep hosts following local edits (Ctrl-C to stop)")
    p.add_argument("--config", default=__import__("argparse").SUPPRESS, help="config.ini to use")
    p.add_argument("--only", help="hosts to watch for: names, IPs or shell patterns, comma-separated")
    p.add_argument("--delete", action="store_true", default=None,
                   help="remove remote files under dest that are not (or no longer) in src")
    p.add_argument("--force", action="store_true", help="allow --delete on a dest close to /")
    p.add_argument("--checksum", action="store_true", help="first sync compares contents (rounds trust events)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="gitignore-style pattern never sent (repeatable; adds to [sync] exclude)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="append one JSON object per round (JSON Lines)")
    p.add_argument("--debounce", type=lambda v: max(STEP_MS, int(v)), default=DEBOUNCE_MS, metavar="MS",
                   help=f"longest time events are gathered into one round (default {DEBOUNCE_MS})")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final summary")
    p.add_argument("--verbose", action="store_true", help="also print every round and each changed file")


def main(args, lightweight: bool = False) -> int:
    """Run the parsed ``watch`` subcommand."""
    return run_watch(args.config, only=args.only, delete=args.delete, checksum=args.checksum,
                     exclude=args.exclude, json_path=args.json_path, quiet=args.quiet, verbose=args.verbose,
                     force=args.force, debounce_ms=args.debounce, lightweight=lightweight)
