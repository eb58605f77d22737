"""The local side: walk each src once per run (shared by every host that
maps it), with the records an unchanged entry has on a host, the SHA-256
sums and the small files' bytes, each made once per run.
"""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from itertools import repeat
from operator import add, attrgetter, itemgetter, methodcaller, mul
from typing import Iterator

from .backends.hasher import digest as _digest
from .inputs import Mapping

NAME_MAX = 255
BLOB_MAX = 64 * 1024  #: files up to this size are read once per run, whatever the number of hosts
#: At most this much of them is kept. Hosts send about in step; letting a
#: file go once every host took it measured worse: the freed and re-made
#: 1 KiB blocks fragment the heap (peak RSS of 100,000 x 1 KiB to 8 hosts:
#: 209 MiB with a 16 MiB budget, against 195 keeping the first 16 MiB).
BLOB_BUDGET = 8 * 1024 * 1024


@dataclass(slots=True)
class LocalEntry:
    rel: str  #: path below the mapping root, "/"-separated ("" for the root)
    kind: str  #: f, d or l; x: could not be read (its remote copy is left alone)
    #: the mapping root's local path, shared by the walk's entries (a path
    #: string each would be ~90 B per file more)
    root: str
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    mode: int = 0o644
    link: str = ""

    @property
    def path(self) -> str:
        """Absolute local path."""
        if not self.rel:
            return self.root
        return f"{self.root}/{self.rel}" if self.root != "/" else "/" + self.rel


class Excluder:
    """gitignore-style patterns, matched against paths below a mapping root."""

    def __init__(self, patterns: tuple[str, ...] | list[str]):
        self.spec = None
        if patterns:
            import pathspec  # only runs that exclude something pay for the import

            self.spec = pathspec.GitIgnoreSpec.from_lines(list(patterns))

    def __call__(self, rel: str, is_dir: bool) -> bool:
        if self.spec is None or not rel:
            return False
        return self.spec.match_file(rel + "/" if is_dir else rel)


def _local(root: str, rel: str, info: os.stat_result, kind: str, link: str = "") -> LocalEntry:
    return LocalEntry(rel=rel, kind=kind, root=root, size=info.st_size if kind == "f" else 0,
                      mtime_ns=info.st_mtime_ns, atime_ns=info.st_atime_ns, mode=stat.S_IMODE(info.st_mode),
                      link=link)


def _name(entry: os.DirEntry) -> str:
    return entry.name


def walk(mapping: Mapping, exclude: Excluder, symlinks: str, warn) -> list[LocalEntry]:
    """Every file, folder and link under ``mapping.src`` that is not excluded.

    ``symlinks``: ``copy`` keeps links as links (rsync -a); ``skip`` leaves
    them out, with a warning; ``follow`` sends what a link points to when
    that is inside src, and warns about (and skips) links that lead out of
    src, dangle, or loop back to a folder being walked.
    """
    root = str(mapping.src)
    info = os.stat(root)
    if not mapping.is_dir:
        return [_local(root, "", info, "f")]
    entries = [_local(root, "", info, "d")]
    real_root = os.path.realpath(root)
    #: (folder to read, rel prefix, real paths of the folders above it)
    stack: list[tuple[str, str, frozenset]] = [(root, "", frozenset({real_root}))]
    excluding = getattr(exclude, "spec", exclude) is not None  # a callable of its own (watch) excludes
    follow = symlinks == "follow"
    append = entries.append
    while stack:
        folder, prefix, above = stack.pop()
        try:
            # Entries are stat'ed relative to their folder (fstatat): a
            # lookup of one name, not of every component of a long path.
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                with os.scandir(dfd) as it:
                    children = sorted(it, key=_name)
            except OSError:
                os.close(dfd)
                raise
        except OSError as exc:
            warn(f"{folder}: cannot read folder ({exc.strerror}): skipped, and nothing below it is deleted")
            append(LocalEntry(rel=prefix.rstrip("/"), kind="x", root=root))
            continue
        here = folder if folder.endswith("/") else folder + "/"
        subfolders = []
        try:
            for child in children:
                rel = prefix + child.name
                try:
                    child_info = child.stat(follow_symlinks=False)
                except OSError as exc:
                    warn(f"{here}{child.name}: cannot stat ({exc.strerror}): skipped")
                    append(LocalEntry(rel=rel, kind="x", root=root))
                    continue
                mode = child_info.st_mode
                if follow and stat.S_ISLNK(mode):
                    target = os.path.realpath(here + child.name)
                    if os.path.commonpath([target, real_root]) != real_root:
                        warn(f"{here}{child.name}: symlink leads out of src (to {target}): skipped (symlinks = follow)")
                        continue
                    if target in above:
                        warn(f"{here}{child.name}: symlink loops back to {target}: skipped")
                        continue
                    try:
                        child_info = os.stat(child.name, dir_fd=dfd)
                    except OSError as exc:
                        warn(f"{here}{child.name}: dangling symlink ({exc.strerror}): skipped")
                        continue
                    mode = child_info.st_mode
                kind = mode & 0o170000
                if kind == stat.S_IFREG:
                    if not (excluding and exclude(rel, False)):
                        append(LocalEntry(rel, "f", root, child_info.st_size, child_info.st_mtime_ns,
                                          child_info.st_atime_ns, mode & 0o7777))
                elif kind == stat.S_IFDIR:
                    if excluding and exclude(rel, True):
                        continue
                    append(LocalEntry(rel, "d", root, 0, child_info.st_mtime_ns, child_info.st_atime_ns,
                                      mode & 0o7777))
                    # Loops can only come through followed links: only then is
                    # each folder's real path worth its cost.
                    chain = above | {os.path.realpath(here + child.name)} if follow else above
                    subfolders.append((here + child.name, rel + "/", chain))
                elif excluding and exclude(rel, False):
                    continue
                elif kind == stat.S_IFLNK:
                    if symlinks == "skip":
                        warn(f"{here}{child.name}: symlink skipped (symlinks = skip)")
                        continue
                    append(_local(root, rel, child_info, "l", os.readlink(child.name, dir_fd=dfd)))
                else:
                    warn(f"{here}{child.name}: not a regular file, folder or symlink (socket, FIFO or device): skipped")
        finally:
            os.close(dfd)
        stack.extend(reversed(subfolders))
    return entries


#: What the local GNU find prints per entry: its R record, as the host's
#: GNU find lists it (see listing.record; a link's without its target),
#: then its mtime and atime (tv_sec.tv_nsec, 10 digits after the point).
_FIND_FORMAT = ("(", "-type", "f", "-printf", r"Rf%m %s %Ts %P\0%T@ %A@\0", ")", "-o",
                "(", "-type", "d", "-printf", r"Rd%m 0 0 %P\0%T@ %A@\0", ")", "-o",
                "(", "-type", "l", "-printf", r"Rl%m 0 0 %P\0%T@ %A@\0", ")", "-o", "-printf", r"X%y %P\0\0")
_FIELDS = methodcaller("split", b" ", 3)  #: an R record's kind+mode, size, seconds, path
_TEXT = methodcaller("decode", "utf-8", "surrogateescape")
_PARENT = methodcaller("rpartition", "/")
_SORTABLE = methodcaller("replace", "/", "\x01")


def _walk_order(rels: list[str]) -> list[int]:
    """The places of ``rels`` in :func:`walk`'s order: by folder (parents
    first, as tuples of components sort: "/" below any character), then by
    name. (A list at a time: 100,000 keys made one by one cost 0.1 s.)"""
    parts = list(map(_PARENT, rels))
    keys = list(zip(map(_SORTABLE, map(itemgetter(0), parts)), map(itemgetter(2), parts)))
    return sorted(range(len(keys)), key=keys.__getitem__)


class Found:
    """A folder tree as the local GNU find listed it: per entry, the R
    record a host lists for its twin when nothing differs, and its times.
    Planning compares the records whole with a host's (sets, in C) and makes
    a :class:`LocalEntry` only for the few that differ; a walk in Python made
    100,000 entries and their records, under the GIL, for every no-op."""

    def __init__(self, root: str, top: LocalEntry, records: list[bytes], stamps: list[bytes], files: int,
                 newlines: bool):
        self.root, self.top = root, top
        self.records, self.stamps = records, stamps  #: in find's order
        self.files = files  #: how many of them are files
        self._lock = threading.RLock()  # (place_of and digest take it, then index may)
        self._index: dict[bytes, int] | None = None
        self._made: dict[int, LocalEntry] = {}
        #: records that must be compared field by field whatever the host
        #: lists (a newline in a name: SCP cannot carry it; planning says so)
        self.always = [i for i, record in enumerate(records) if b"\n" in record] if newlines else []
        #: --checksum: every file's line as the hasher prints it ("<SHA-256>
        #: <local path>\0", backends/hasher.py, run here too), one block
        self.sum_lines: bytes | None = None
        self._rels: dict[bytes, int] | None = None
        self._digests: dict[str, str] | None = None

    def sum_lines_at(self, dest: str) -> list[bytes]:
        """The hasher's lines of every file, as a host prints them for its
        twin at ``dest`` when the contents agree (see LocalTrees.sum_records)."""
        here = b"  " + _prefix(self.root)
        there = b"  " + _prefix(dest)
        # (a name holding "  <root>/" would be changed too: its line then
        # matches nothing, and the file is compared in full)
        return self.sum_lines.replace(here, there).split(b"\0")[:-1]

    def file_rels(self) -> tuple[list[bytes], list[bytes]]:
        """The records of the files, and their paths below the root (bytes)."""
        files = [r for r in self.records if r[1] == 102]
        return files, list(map(itemgetter(3), map(_FIELDS, files)))

    def place_of(self, rel: bytes) -> int | None:
        """The place of the record of the file at ``rel`` (bytes, below the root)."""
        with self._lock:
            if self._rels is None:
                files, rels = self.file_rels()
                self._rels = dict(zip(rels, map(self.index().__getitem__, files)))
        return self._rels.get(rel)

    def digest(self, path: str) -> str | None:
        """The SHA-256 the hasher found for a local file (by its path)."""
        with self._lock:
            if self._digests is None:
                self._digests = {_TEXT(line[66:]): line[:64].decode()
                                 for line in self.sum_lines.split(b"\0")[:-1]}
        return self._digests.get(path)

    def folders(self, prefix: str, besides: list[int]) -> list[str]:
        """``prefix`` + the path of every folder but those at ``besides``."""
        skip = set(besides)
        return [prefix + _TEXT(_FIELDS(record)[3])
                for i, record in enumerate(self.records) if record[1] == 100 and i not in skip]

    def index(self) -> dict[bytes, int]:
        """record -> its place in ``records`` (made on first use, once)."""
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = dict(zip(self.records, range(len(self.records))))
        return self._index

    def lacking(self, remote: set[bytes], shared: int) -> list[int]:
        """The places of the records ``remote`` lacks, in walk order;
        ``shared``: how many of ours it has (all of them: nothing to look up)."""
        index = self.index()
        places = set(self.always)
        if shared != len(index):
            places.update(map(index.__getitem__, index.keys() - remote))
        return self.in_order(places)

    def in_order(self, places) -> list[int]:
        """``places`` sorted into walk order."""
        places = list(places)
        rels = [_TEXT(fields[3]) for fields in map(_FIELDS, map(self.records.__getitem__, places))]
        return list(map(places.__getitem__, _walk_order(rels)))

    def entries_at(self, places: list[int]) -> list[LocalEntry]:
        """The entries of the records at ``places`` (each made once)."""
        made = self._made
        with self._lock:
            new = [i for i in places if i not in made]
            made.update(zip(new, self._make(new)))
        return list(map(made.__getitem__, places))

    def entries(self) -> list[LocalEntry]:
        """Every entry, root first, in walk order."""
        made = self._make(range(len(self.records)))
        return [self.top, *map(made.__getitem__, _walk_order(list(map(attrgetter("rel"), made))))]

    def _make(self, places) -> list[LocalEntry]:
        """The entries of the records at ``places``, made a whole list at a
        time: 100,000 one by one cost as much as the Python walk."""
        records = list(map(self.records.__getitem__, places))
        fields = list(map(_FIELDS, records))
        rels = list(map(_TEXT, map(itemgetter(3), fields)))
        # "s.fffffffff0 s.fffffffff0" per entry: seconds and nanoseconds
        times = b" ".join(map(self.stamps.__getitem__, places)).replace(b".", b" ").split()
        nanos = times[1::2]
        if len(times) == 4 * len(records) and b"-" not in b"".join(times[0::2]) and set(map(len, nanos)) <= {10}:
            stamps = list(map(add, map(mul, map(int, times[0::2]), repeat(1_000_000_000)),
                              map(int, map(itemgetter(slice(0, 9)), nanos))))
            mtimes, atimes = stamps[0::2], stamps[1::2]
        else:  # before 1970, or an unknown format: as the kernel says
            infos = [os.lstat(f"{self.root}/{rel}") for rel in rels]
            mtimes, atimes = [i.st_mtime_ns for i in infos], [i.st_atime_ns for i in infos]
        modes = map(int, map(itemgetter(slice(2, None)), map(itemgetter(0), fields)), repeat(8))
        # (a folder's and a link's record says size 0)
        made = list(map(LocalEntry, rels, map(chr, map(itemgetter(1), records)), repeat(self.root),
                        map(int, map(itemgetter(1), fields)), mtimes, atimes, modes))
        for entry in made:
            if entry.kind == "l":
                entry.link = os.readlink(entry.path)
        return made


def _prefix(path: str) -> bytes:
    return (path if path.endswith("/") else path + "/").encode("utf-8", "surrogateescape")


#: backends/hasher.py: --checksum's hasher on a host with python3, and here
HASHER_PATH = os.path.join(os.path.dirname(__file__), "backends", "hasher.py")


#: From this many files on, a tree is hashed by a process of its own
#: (beside the client's work, and without the GIL); below, starting it
#: costs more than it saves (2,000 files: 0.42 -> 0.50 s a run).
HASH_APART = 5000


def hash_tree(found: Found) -> bytes | None:
    """The hasher's lines for every file of ``found``, or None if any file
    went without a sum (the Python walk then says why)."""
    prefix = _prefix(found.root)
    paths = [prefix + rel for rel in found.file_rels()[1]]
    if len(paths) < HASH_APART:
        try:
            return b"".join(b"%s  %s\0" % (sha256_file(path).encode(), path) for path in paths)
        except OSError:
            return None
    try:
        # -I -S: none of the user's site or environment, a faster start
        done = subprocess.run([sys.executable, "-I", "-S", HASHER_PATH], input=b"\0".join(paths) + b"\0",
                              capture_output=True)
    except OSError:
        return None
    if done.returncode != 0 or done.stderr or done.stdout.count(b"\0") != found.files:
        return None
    return done.stdout


def find_tree(root: str, slot: "_Slot | None" = None) -> Found | None:
    """The folder tree under ``root`` as the local GNU find lists it, or None
    where it cannot: no GNU find (BSD, BusyBox), an entry it could not read,
    or one that is no file, folder or link (the Python walk then says which).
    ``slot.finding`` holds the find process while it runs (to be stopped)."""
    top = _local(root, "", os.stat(root), "d")
    try:
        # TZ set: otherwise glibc reads /etc/localtime for every %Ts
        process = subprocess.Popen(["find", "-H", root, "-mindepth", "1", *_FIND_FORMAT], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env={**os.environ, "TZ": "UTC0", "LC_ALL": "C"})
    except OSError:
        return None
    if slot is not None:
        slot.finding = process
    out, errors = process.communicate()
    if process.returncode != 0 or errors:
        return None
    if out.startswith(b"X") or b"\0X" in out:  # a FIFO, socket or device: the walk warns and skips it
        return None
    items = out.split(b"\0")
    # (a record follows a NUL; a stamp starts with a digit or "-")
    files = out.startswith(b"Rf") + out.count(b"\0Rf")
    return Found(root, top, items[0:-1:2], items[1::2], files, b"\n" in out)


class LocalTrees:
    """Walks each local src once per run, shared by every host that maps it.

    A background thread can start the walks (:meth:`prefetch`) while the
    connections are still being made; :meth:`get` waits for, or does, the walk.
    """

    def __init__(self, global_exclude: tuple[str, ...] = (), symlinks: str = "copy", warn=print,
                 checksum: bool = False, senders: int | None = None, index_ahead: bool = False):
        #: --checksum: every file is hashed with the walk (once, and beside
        #: the listings: not by each host's planning, one file at a time)
        self.checksum = checksum
        self.global_exclude = tuple(global_exclude)
        self.symlinks = symlinks
        self.warn = warn
        self._lock = threading.Lock()
        self._slots: dict[tuple, "_Slot"] = {}
        #: How many hosts of the run may send these files (None: not known):
        #: with one, no small file is kept for the others.
        self.senders = senders
        #: contents of small files already read for one host, for the others
        #: (one read per run, and every host gets the same bytes)
        self.blobs: dict[str, bytes] = {}
        self.blob_room = BLOB_BUDGET
        #: SHA-256 of local files, hashed once per run whatever the number of hosts
        self._sums: dict[tuple, str] = {}
        self._sum_lock = threading.Lock()
        #: (tree, file mode) -> the R record each entry has on a host where it is unchanged
        self._expected: dict[tuple, list[bytes | None]] = {}
        self._expected_lock = threading.Lock()
        #: whether planning compares a tree GNU find listed by its records
        #: (see plan.plan_mapping): their index is then made with the walk
        self.index_ahead = index_ahead

    @classmethod
    def for_options(cls, options, warn, senders: int | None = None) -> "LocalTrees":
        """The trees a run with these SyncOptions walks (hashed with --checksum)."""
        return cls(options.exclude, options.symlinks, warn, options.compare == "checksum", senders,
                   index_ahead=not options.list_unchanged and not options.trusted)

    @property
    def shares_blobs(self) -> bool:
        """Whether small files read for one host are kept for others."""
        return self.senders is None or self.senders > 1

    def sha256(self, entry: "LocalEntry") -> str:
        key = (entry.path, entry.size, entry.mtime_ns)
        found = self._sums.get(key)
        if found is None:
            # Hosts plan side by side: without the lock each would hash
            # every file itself (hashing small files holds the GIL anyway).
            with self._sum_lock:
                found = self._sums.get(key)
                if found is None:
                    found = self._sums[key] = sha256_file(entry.path)
        return found

    def remember(self, path: str, data: bytes) -> None:
        """Keep the bytes of a small file just read, for the other hosts."""
        if not self.shares_blobs:
            return  # no other host will ask
        with self._lock:
            if len(data) <= BLOB_MAX and len(data) <= self.blob_room and path not in self.blobs:
                self.blobs[path] = data
                self.blob_room -= len(data)

    def excluder(self, mapping: Mapping) -> Excluder:
        return Excluder(self.global_exclude + tuple(mapping.exclude))

    def get(self, mapping: Mapping) -> list[LocalEntry]:
        """Every entry of the mapping's src, root first, in walk order."""
        slot = self._slot(mapping, wait=False)
        if slot.finding is not None:
            with slot.lock:
                if slot.finding is not None:
                    # A host needs every entry (a first sync) while find
                    # still lists the tree: walk it here and now rather than
                    # wait for find's records and make entries of them all.
                    slot.finding.kill()
                    slot.finding = None
                    slot.taken = True
                    try:
                        slot.entries = walk(mapping, self.excluder(mapping), self.symlinks, self.warn)
                    except BaseException as exc:
                        slot.error = exc
        self._slot(mapping)
        if slot.entries is None:
            with slot.lock:
                if slot.entries is None:
                    found = slot.found
                    entries = found.entries()
                    if found.sum_lines is not None:
                        slot.sums = [found.digest(e.path) if e.kind == "f" else None for e in entries]
                        self.know_sums(entries, slot.sums)
                    slot.entries = entries
                    slot.found = None  # its entries stand in for it from now on
        return slot.entries

    def know_sums(self, entries: list[LocalEntry], sums: "list[str | None]") -> None:
        """Keep these sums of these entries (see :meth:`sha256`)."""
        with self._sum_lock:
            for entry, digest in zip(entries, sums):
                if digest is not None:
                    self._sums[(entry.path, entry.size, entry.mtime_ns)] = digest

    def found(self, mapping: Mapping) -> Found | None:
        """The mapping's tree as the local GNU find listed it, while no
        host has needed every entry of it; else None (see :meth:`get`)."""
        return self._slot(mapping).found

    def _slot(self, mapping: Mapping, wait: bool = True) -> "_Slot":
        """The mapping's walk, done (``wait``) or at least started: by
        this thread when it is the first to ask (with find only if it will
        not need every entry at once)."""
        key = _tree(mapping)
        with self._lock:
            slot = self._slots.get(key)
            owner = slot is None
            if owner:
                slot = self._slots[key] = _Slot()
        if owner:
            try:
                self._walk(mapping, slot, finding=wait)
            except BaseException as exc:
                slot.error = exc
            finally:
                slot.done.set()
        if wait:
            slot.done.wait()
            if slot.error is not None:
                raise slot.error
        return slot

    def _walk(self, mapping: Mapping, slot: "_Slot", finding: bool = True) -> None:
        exclude = self.excluder(mapping)
        if (finding and mapping.is_dir and self.symlinks == "copy"
                and getattr(exclude, "spec", exclude) is None):
            found = find_tree(str(mapping.src), slot)
            if found is not None and self.checksum:
                found.sum_lines = hash_tree(found)
                if found.sum_lines is None:
                    found = None  # a file could not be hashed: the walk says which
            if found is not None and self.index_ahead and mapping.mode is None:
                # made here, while the hosts list their dests, not after
                # (100,000 records: 20-25 ms off planning's path, when the walk ends first)
                found.index()
            with slot.lock:
                slot.finding = None
                if slot.taken:
                    return  # a host walked it meanwhile (see get)
                slot.found = found
            if found is not None:
                return
        slot.entries = entries = walk(mapping, exclude, self.symlinks, self.warn)
        sums: list[str | None] = []
        if self.checksum:
            # hashed here, in the walker, once: not file by file by each
            # host's planning, taking turns at a lock
            sums = _sums(entries)
            self.know_sums(entries, sums)
        slot.sums = sums

    def sum_records(self, mapping: Mapping, dest: str) -> Iterator[bytes | None]:
        """With --checksum, per local entry (in :meth:`get`'s order), the
        line the host's hasher prints for its twin at ``dest`` when their
        contents are the same ("<SHA-256>  <remote path>", as ``sha256sum
        -z`` prints it), or None (not a file; unreadable here). Made as
        planning goes: dests differ from host to host."""
        self.get(mapping)
        slot = self._slot(mapping)
        prefix = _prefix(dest)
        whole = dest.encode("utf-8", "surrogateescape")
        for entry, digest in zip(slot.entries, slot.sums or itertools.repeat(None)):
            if digest is None:
                yield None
            elif entry.rel:
                yield b"%s  %s%s" % (digest.encode(), prefix, entry.rel.encode("utf-8", "surrogateescape"))
            else:
                yield b"%s  %s" % (digest.encode(), whole)

    def expected(self, mapping: Mapping) -> list[bytes | None]:
        """Per local entry (in :meth:`get`'s order), the R record a host
        lists for it when it needs nothing (see :func:`listing.record`), or
        None where only the full compare can say (the root, links, names
        that cannot be sent). Made once per run for every host."""
        local = self.get(mapping)
        key = (*_tree(mapping), mapping.mode)
        with self._expected_lock:
            found = self._expected.get(key)
            if found is None:
                found = self._expected[key] = _expected(local, mapping.mode)
        return found

    def prefetch(self, mappings: list[Mapping]) -> None:
        def run() -> None:
            for mapping in mappings:
                try:
                    self._slot(mapping)  # the walk (entries are made when a host needs them)
                except Exception:
                    pass  # the host that needs it gets the error
        threading.Thread(target=run, name="walk-local", daemon=True).start()


def _tree(mapping: Mapping) -> tuple:
    """What makes two mappings' walks the same walk."""
    return str(mapping.src), mapping.is_dir, tuple(mapping.exclude)


def _expected(local: list[LocalEntry], mode: int | None) -> list[bytes | None]:
    """:meth:`LocalTrees.expected`: listing.record's format, written out
    here (one call per entry would cost a third of a no-op's planning)."""
    rows: list[bytes | None] = [
        (b"Rf%o %d %d %s" % (e.mode if mode is None else mode, e.size, e.mtime_ns // 1_000_000_000,
                             e.rel.encode("utf-8", "surrogateescape")) if e.kind == "f"
         else b"Rd%o 0 0 %s" % (e.mode, e.rel.encode("utf-8", "surrogateescape")) if e.kind == "d" else None)
        for e in local]
    if rows:
        rows[0] = None  # the root: always compared (is dest a link? a folder?)
    for i, row in enumerate(rows):
        # names that cannot be sent: planning says why
        if row is not None and (b"\n" in row or (len(row) > NAME_MAX and
                                                 any(len(p) > NAME_MAX for p in row.split(b" ", 3)[3].split(b"/")))):
            rows[i] = None
    return rows


class _Slot:
    def __init__(self):
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.entries: list[LocalEntry] | None = None  #: made from ``found`` when first asked for
        self.found: Found | None = None
        self.finding: subprocess.Popen | None = None  #: the find listing the tree, while it runs
        self.taken = False  #: a host needing every entry walked the tree while find ran
        self.sums: list[str | None] = []  #: --checksum: per entry, its SHA-256 (None: not a file, unreadable)
        self.error: BaseException | None = None


def sha256_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)  # no buffered file object: half the cost of a small file's sum
    try:
        return _digest(fd).hexdigest()  # as the host's hasher reads
    finally:
        os.close(fd)


def _sums(entries: list[LocalEntry]) -> list[str | None]:
    """SHA-256 of every file of a walk (None: not a file, or unreadable now:
    :meth:`LocalTrees.sha256` tries again and says why)."""
    found: list[str | None] = []
    for entry in entries:
        try:
            found.append(sha256_file(entry.path) if entry.kind == "f" else None)
        except OSError:
            found.append(None)
    return found

