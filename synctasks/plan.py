"""Plan one host: walk each src, compare with the remote listing, and decide
per file: send, skip, chmod, touch, link, make a folder, or delete.

Pure logic over the local trees (:mod:`synctasks.local`) and a parsed
listing; nothing here talks to a host, so it is tested without one.
"""

from __future__ import annotations

import itertools
import posixpath
import stat
from dataclasses import dataclass, field
from typing import Iterator

from .inputs import Mapping
from .listing import Listing, RemoteEntry, parse_record, staging_name
from .local import NAME_MAX, Found, LocalEntry, LocalTrees, sha256_file
from .results import CHANGING, FileResult, MappingResult

NEW_FILE = ">f+++++++++"
NEW_DIR = "cd+++++++++"
NEW_LINK = "cL+++++++++"
DELETING = "*deleting  "


@dataclass(slots=True, frozen=True)
class Place:
    """Where the files and links of one remote folder go: one per folder,
    shared by everything that goes there."""

    #: Where they are written first: a staging folder, or a folder inside
    #: one when the remote folder is new.
    stage: str
    #: The existing remote folder whose staging folder holds them (its commit).
    base: str
    #: A send's remote path is this plus its walk-relative path: the
    #: mapping's dest and "/" (a file mapping's single file: its dest).
    prefix: str
    #: The mapping's ``mode`` for every file, or None: each file's own.
    mode: int | None


class Send(FileResult):
    """A file (or link) to put in place, which is also its record in the
    result. A run of 100,000 files to 8 hosts holds 800,000 of them, so
    it stores two references more than a record: the walk's entry (shared
    by every host) and its folder's :class:`Place`; path, stage and mode
    are made from those when asked."""

    __slots__ = ("local", "place")

    def __init__(self, local: LocalEntry, place: Place, action: str, reason: str, flags: str):
        self.local, self.place = local, place
        self.action, self.reason, self.size, self.flags = action, reason, local.size, flags

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.place.prefix + self.local.rel

    @property
    def stage(self) -> str:
        return self.place.stage

    @property
    def base(self) -> str:
        return self.place.base

    @property
    def mode(self) -> int:
        """File mode to give it (the mapping's ``mode``, else the local one)."""
        mode = self.place.mode
        return self.local.mode if mode is None else mode

    @property
    def name(self) -> str:
        """Final file name."""
        rel = self.local.rel
        return (rel or self.place.prefix).rpartition("/")[2]

    @property
    def folder(self) -> str:
        """Remote folder the file lands in."""
        return self.path.rpartition("/")[0] or "/"


@dataclass(slots=True)
class NewDir:
    """A folder missing remotely: it is built inside a staging folder and
    renamed into place with everything in it."""

    path: str  #: final remote path
    stage: str  #: where it is built
    mode: int
    base: str  #: the existing folder whose staging folder holds it


@dataclass
class MappingPlan:
    mapping: Mapping
    result: MappingResult
    sends: list[Send] = field(default_factory=list)
    links: list[Send] = field(default_factory=list)
    new_dirs: list[NewDir] = field(default_factory=list)
    mkparent: list[str] = field(default_factory=list)
    chmods: list[tuple[int, str]] = field(default_factory=list)
    chowns: list[str] = field(default_factory=list)  #: existing paths whose owner/group must change
    touches: list[tuple[int, str]] = field(default_factory=list)  #: (whole seconds, path)
    removes: list[str] = field(default_factory=list)  #: cleared before sending (type changes)
    deletes: list[str] = field(default_factory=list)  #: --delete, top-most paths only
    error: str | None = None  #: the whole mapping cannot be synced
    #: remote entries not known unchanged from their listing record alone
    #: (compared field by field; all of them where the listing has no records)
    differing: int = 0

    @property
    def bases(self) -> list[str]:
        """Existing remote folders that receive something (each gets a staging folder)."""
        return list(dict.fromkeys(item.base for item in self.sends + self.links + self.new_dirs))

    @property
    def has_work(self) -> bool:
        """Anything to change remotely (missing parents alone aside)."""
        return bool(self.sends or self.links or self.new_dirs or self.chmods or self.chowns or self.touches
                    or self.removes or self.deletes)

    def fail(self, reason: str, actions=CHANGING) -> None:
        """Mark the records of ``actions`` failed, with ``reason``."""
        for record in self.result.files:
            if record.action in actions:
                record.action, record.reason = "fail", reason

    def drop(self, reason: str) -> None:
        """Give the whole mapping up before anything is done: every change it
        planned fails with ``reason`` and none is carried out."""
        self.fail(reason)
        self.sends, self.links, self.new_dirs, self.mkparent = [], [], [], []
        self.deletes, self.removes, self.chmods, self.touches, self.chowns = [], [], [], [], []


@dataclass
class HostPlan:
    token: str
    mappings: list[MappingPlan]
    stale: list[str]

    @property
    def has_work(self) -> bool:
        return bool(self.stale) or any(p.has_work for p in self.mappings)

def _unsendable(name: str) -> str | None:
    if "\n" in name:
        return "the name contains a newline, which SCP cannot carry: rename it"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"the name is longer than {NAME_MAX} bytes: shorten it"
    return None


def _sums_differ(listed: Found, lacking: list[int], dest: str, prefix: str, listing: Listing,
                 twins: dict[str, RemoteEntry]) -> list[int] | None:
    """--checksum: ``lacking`` and the files whose record the host has but
    not their sum, in walk order (their remote twins, parsed from that
    record, go in ``twins``); None if a line cannot be traced to its file."""
    skip = 66 + len(prefix.encode("utf-8", "surrogateescape"))
    places = set(lacking)
    for line in itertools.filterfalse(listing.sum_records.__contains__, listed.sum_lines_at(dest)):
        i = listed.place_of(line[skip:])
        if i is None:
            return None  # (a name holding "  <src>/": see Found.sum_lines_at)
        if i not in places:
            # (its sum is not the host's, or the host has none: it differs
            # either way, and the host's sum is not looked up)
            places.add(i)
            twins[prefix + line[skip:].decode("utf-8", "surrogateescape")] = parse_record(listed.records[i])[1]
    return lacking if len(places) == len(lacking) else listed.in_order(places)


def plan_mapping(mapping: Mapping, listing: Listing, trees: LocalTrees, *, compare: str, delete: bool,
                 warn, token: str = "0", trusted: frozenset = frozenset(), remote_links: str = "refuse",
                 list_unchanged: bool = True) -> MappingPlan:
    """``list_unchanged``: keep a record of each unchanged file (else they
    are only counted: a run to many hosts would hold one per file per host)."""
    dest = mapping.dest
    result = MappingResult(src=str(mapping.src), dest=dest)
    plan = MappingPlan(mapping=mapping, result=result)
    exclude = trees.excluder(mapping)
    prefix = dest if dest.endswith("/") else dest + "/"
    remote: dict[str, RemoteEntry] = listing.entries.get(dest, {})
    #: the records of entries that need nothing when their local twin expects just that record
    same: "set[bytes] | frozenset" = frozenset()
    expected: "list[bytes | None] | itertools.repeat" = itertools.repeat(None)
    #: --checksum: the host's hasher line of each entry whose content is the local one
    expected_sums: "Iterator[bytes | None]" = itertools.repeat(None)
    records = listing.records.get(dest)
    #: the local tree as GNU find listed it (see :class:`local.Found`), when
    #: only the entries the host lacks are planned one by one
    listed = None
    local: "list[LocalEntry] | None" = None
    #: --checksum: remote twins of files whose record is the host's but whose sum is not
    twins: dict[str, RemoteEntry] = {}
    if records is not None:
        # Entries whose record is the expected one need nothing: only the
        # others are parsed and compared field by field.
        differing = records
        if dest not in listing.dest_links:
            if mapping.mode is None and not trusted and not list_unchanged:
                listed = trees.found(mapping)
            if listed is not None:
                differing = records.difference(listed.index())  # (a dict: looked up, not copied)
                lacking = listed.lacking(records, len(records) - len(differing))
                if compare == "checksum":
                    lacking = _sums_differ(listed, lacking, dest, prefix, listing, twins)
                    if lacking is None:
                        listed = None  # compared in full, below
            if listed is not None:
                local = [listed.top, *listed.entries_at(lacking)]
                if compare == "checksum":
                    trees.know_sums(local, [listed.digest(e.path) if e.kind == "f" else None for e in local])
            else:
                expected = trees.expected(mapping)
                differing = records.difference(expected)
                same = records
                if compare == "checksum":
                    expected_sums = trees.sum_records(mapping, dest)
        remote = twins if listed is not None else {}
        for item in differing:
            rel, entry = parse_record(item)
            path = prefix + rel if rel else dest
            if compare == "checksum" and entry.kind == "f":
                entry.sha256 = listing.sum_of(path)
            remote[path] = entry
    root = remote.get(dest)
    files = result.files
    plan.differing = len(remote)

    if mapping.is_dir and root is not None and root.kind != "d":
        plan.error = f"dest {dest} exists and is not a folder: remove it or change dest"
    if not mapping.is_dir and root is not None and root.kind == "d":
        plan.error = f"dest {dest} is a folder: end dest with / to put the file into it, or remove the folder"
    if plan.error:
        files.append(FileResult(dest, "fail", plan.error))
        return plan

    unchanged = 0
    if local is None:
        local = trees.get(mapping)
    staging = staging_name(token)
    wanted: set[str] = set()  #: local paths planned here (--delete only: ~40 B per file per host)
    #: remote folders whose contents mirror a local folder that was read
    #: whole: the only places --delete may remove anything
    mirrored: set[str] = set()
    #: new remote folder -> (where it is built, the existing folder holding it)
    building: dict[str, tuple[str, str]] = {}
    #: folder -> (action, reason) for everything below it
    blocked: dict[str, tuple[str, str]] = {}

    placed: dict[str, Place] = {}

    def staged_in(folder: str) -> tuple[str, str]:
        """(stage, base) for what goes into remote ``folder``."""
        return building.get(folder) or (posixpath.join(folder, staging), folder)

    def place(folder: str, entry: LocalEntry) -> Place:
        """The Place of ``entry``, to go into remote ``folder``."""
        if not entry.rel:  # a file mapping's single file
            return Place(*staged_in(folder), dest, mapping.mode)
        found = placed.get(folder)
        if found is None:
            found = placed[folder] = Place(*staged_in(folder), prefix, mapping.mode)
        return found

    if listed is not None:
        # what the host lacks is planned below; the rest is unchanged
        unchanged = listed.files - sum(1 for entry in local if entry.kind == "f")
        if delete:
            mirrored.update(listed.folders(prefix, lacking))
    sums = listing.sum_records
    for entry, expect, expect_sum in zip(local, expected, expected_sums):
        if expect is not None and expect in same:
            if not (trusted and entry.path in trusted) and (compare != "checksum" or entry.kind != "f" or
                                                            expect_sum in sums):
                if entry.kind == "d":
                    mirrored.add(prefix + entry.rel)
                elif list_unchanged:
                    files.append(FileResult(prefix + entry.rel, "skip", "unchanged", entry.size, flags=".f         "))
                else:
                    unchanged += 1
                continue
            # the watcher saw it change, or its content differs: compare it
            there = remote[prefix + entry.rel] = parse_record(expect)[1]
            there.sha256 = listing.sum_of(prefix + entry.rel)
        path = prefix + entry.rel if entry.rel else dest
        if delete:
            wanted.add(path)
        folder, _, name = path.rpartition("/")
        folder = folder or "/"
        if entry.kind == "x":
            mirrored.discard(path)
            continue
        if blocked:
            under = next((b for b in blocked if path.startswith(b + "/")), None)
            if under is not None:
                action, why = blocked[under]
                files.append(FileResult(path, action, why))
                continue
        problem = _unsendable(name) if entry.rel or entry.kind != "d" else None
        if problem:
            files.append(FileResult(path + ("/" if entry.kind == "d" else ""), "fail", problem))
            if entry.kind == "d":
                blocked[path] = ("fail", "inside a folder whose name cannot be sent")
            continue
        there = remote.get(path)
        if there is not None and entry.kind in "df" and (there.kind == "l" or (not entry.rel and
                                                                               dest in listing.dest_links)):
            # A link on the host where src has a file or folder.
            link = listing.dest_links.get(dest, "") if there.kind != "l" else there.link
            shown = path + ("/" if entry.kind == "d" else "")
            if remote_links == "refuse":
                why = (f"the host has a symlink here (to {link}): set remote_links = replace to replace it, "
                       "or skip to leave it")
                files.append(FileResult(shown, "fail", why))
                blocked[path] = ("fail", f"below {path}, a symlink on the host (remote_links = refuse)")
                continue
            if remote_links == "skip":
                files.append(FileResult(shown, "skip", f"a symlink on the host (to {link}), kept"))
                blocked[path] = ("skip", f"below {path}, a symlink on the host, kept")
                continue
            warn(f"{path}: replacing the host's symlink (to {link}) with a {'folder' if entry.kind == 'd' else 'file'}")
            if there.kind != "l":  # the followed dest of a file mapping: make the compare see a link
                there = RemoteEntry("l", 0o777, 0, 0, link)
        if entry.kind == "d":
            mirrored.add(path)
        if there is not None and _owner_differs(mapping, there):
            plan.chowns.append(path)
        if entry.kind == "d":
            if there is None or there.kind != "d":
                if there is not None:
                    plan.removes.append(path)
                elif not entry.rel:
                    plan.mkparent.append(folder)
                stage, base = staged_in(folder)
                stage = posixpath.join(stage, name)
                building[path] = (stage, base)
                plan.new_dirs.append(NewDir(path, stage, entry.mode, base))
                files.append(FileResult(path + "/", "mkdir", "new" if there is None else "type", flags=NEW_DIR))
            elif _dir_mode_differs(there.mode, entry.mode):
                plan.chmods.append((entry.mode, path))
                files.append(FileResult(path + "/", "chmod", "mode", flags=".d...p....."))
            elif plan.chowns and plan.chowns[-1] == path:
                files.append(FileResult(path + "/", "chown", "owner", flags=".d....og..."))
            continue
        if there is not None and there.kind == "d":
            if not delete:
                files.append(FileResult(path, "fail", "a folder is in the way remotely: remove it or run with --delete"))
                continue
            plan.removes.append(path)
            files.append(FileResult(path + "/", "delete", "type", flags=DELETING))
            there = None
        if not entry.rel and there is None:
            plan.mkparent.append(folder)
        if entry.kind == "l":
            if "\n" in entry.link:
                files.append(FileResult(path, "fail", "the link target contains a newline: fix the link"))
            elif there is not None and there.kind == "l" and there.link == entry.link:
                if plan.chowns and plan.chowns[-1] == path:
                    files.append(FileResult(path, "chown", "owner", flags=".L....og..."))
                elif list_unchanged:
                    files.append(FileResult(path, "skip", "unchanged", flags=".L         "))
                else:
                    unchanged += 1
            else:
                link = Send(entry, place(folder, entry), "link", "new" if there is None else "changed", NEW_LINK)
                files.append(link)
                plan.links.append(link)
            continue
        mode = mapping.mode if mapping.mode is not None else entry.mode
        reason, flags = _compare_file(entry, there, compare, mode, trees)
        if mapping.sudo and (reason in ("mtime-only", "mode") or (reason == "unchanged" and plan.chowns
                                                                   and plan.chowns[-1] == path)):
            # As root, never chmod/touch/chown a path in place (a link could
            # be swapped in under us): send it again, its attributes set in
            # the staging folder, and rename it over.
            if plan.chowns and plan.chowns[-1] == path:
                plan.chowns.pop()
                flags = flags[:2] + flags[2:6].replace(" ", ".") + "og..."
            reason, flags = "attributes", ">" + flags[1:]
        if entry.path in trusted and reason in ("unchanged", "mtime-only", "mode"):
            reason, flags = "event", ">f.st......"  # the watcher saw it change: trust that
        if reason == "unchanged":
            if plan.chowns and plan.chowns[-1] == path:
                files.append(FileResult(path, "chown", "owner", entry.size, flags=".f....og..."))
            elif list_unchanged:
                files.append(FileResult(path, "skip", reason, entry.size, flags=".f         "))
            else:
                unchanged += 1
        elif reason in ("mode", "mtime-only"):
            if reason == "mtime-only":
                plan.touches.append((entry.mtime_ns // 1_000_000_000, path))
                files.append(FileResult(path, "touch", "mtime", flags=flags))
                if there.mode != mode:
                    plan.chmods.append((mode, path))
            else:
                plan.chmods.append((mode, path))
                files.append(FileResult(path, "chmod", "mode", flags=flags))
        else:
            send = Send(entry, place(folder, entry), "send", reason, flags)
            files.append(send)
            plan.sends.append(send)
            if entry.mtime_ns < 0:
                # SCP's T record cannot carry a time before 1970: set it after.
                plan.touches.append((entry.mtime_ns // 1_000_000_000, path))

    if delete and mapping.is_dir:
        # Parents first. A path is extraneous only inside a folder that
        # mirrors a local folder read whole (not under a local link, file or
        # unreadable folder: those are replaced or left alone), or inside an
        # extraneous folder (removed with it; listed for the report).
        gone: dict[str, None] = {}  # in order, parents first
        kept: set[str] = set()  # excluded, or holds something that must stay
        for path in sorted(p for p in remote if p != dest and p not in wanted):
            parent = posixpath.dirname(path)
            if parent not in mirrored and parent not in gone:
                continue
            if exclude(path[len(dest) + 1:], remote[path].kind == "d") or "\n" in path:
                if "\n" in path:
                    warn(f"{path}: remote name contains a newline; not deleted")
                # An excluded file keeps its extraneous folders (rsync does
                # the same without --delete-excluded).
                while parent in gone:
                    kept.add(parent)
                    parent = posixpath.dirname(parent)
                continue
            gone[path] = None
        top: list[str] = []
        for path in gone:
            if path in kept:
                continue
            kind = remote[path].kind
            files.append(FileResult(path + ("/" if kind == "d" else ""), "delete", "extraneous", flags=DELETING))
            parent = posixpath.dirname(path)
            if parent in mirrored or parent in kept:
                top.append(path)
        plan.deletes = top
    result.unchanged = unchanged  #: the unchanged files not listed
    return plan


def unsafe_for_delete(mapping: Mapping, home: str | None = None) -> str | None:
    """Why --delete must not run on ``mapping`` without --force, or None.

    ``home``: the remote home folder, when known (after the listing).
    """
    if not mapping.is_dir:
        return None
    if home is not None and mapping.dest == (home.rstrip("/") or "/"):
        return "it is the remote home folder"
    if len([p for p in mapping.dest.split("/") if p]) < 2:
        return "it is too close to /"
    return None


def _owner_differs(mapping: Mapping, there: RemoteEntry) -> bool:
    # A numeric owner ("1") matches the listing's number as well as its name.
    return bool((mapping.owner and mapping.owner not in (there.owner, there.uid, "")) or
                (mapping.group and mapping.group not in (there.group, there.gid, "")))


def _dir_mode_differs(remote: int, local: int) -> bool:
    """A folder's setgid bit survives a numeric chmod (GNU, BusyBox): unless
    the local folder has it, a remote one that has it is not a difference."""
    if not local & stat.S_ISGID:
        remote &= ~stat.S_ISGID
    return remote != local


def chown_spec(mapping: Mapping) -> str | None:
    """chown's argument for a mapping's owner/group, or None."""
    if not (mapping.owner or mapping.group):
        return None
    return (mapping.owner or "") + (":" + mapping.group if mapping.group else "")


def _compare_file(entry: LocalEntry, there: RemoteEntry | None, compare: str, mode: int,
                  trees: "LocalTrees | None" = None) -> tuple[str, str]:
    """(reason, itemize flags) for one local file against its remote twin."""
    if there is None:
        return "new", NEW_FILE
    if there.kind != "f":
        return "type", NEW_FILE
    size_differs = there.size != entry.size
    mtime_differs = there.mtime != entry.mtime_ns // 1_000_000_000
    mode_differs = there.mode != mode
    if compare == "checksum":
        try:
            content_differs = size_differs or there.sha256 != (trees.sha256(entry) if trees else sha256_file(entry.path))
        except OSError:
            content_differs = True  # unreadable now: sending it will say why
    else:
        content_differs = size_differs or mtime_differs
    flags = ">f{}{}{}{}.....".format(
        "c" if compare == "checksum" and content_differs and not size_differs else ".",
        "s" if size_differs else ".",
        "t" if mtime_differs else ".",
        "p" if mode_differs else ".",
    )
    if content_differs:
        reason = "size" if size_differs else ("checksum" if compare == "checksum" else "mtime")
        return reason, flags
    if mtime_differs:
        return "mtime-only", "." + flags[1:]
    if mode_differs:
        return "mode", "." + flags[1:]
    return "unchanged", ".f         "


def plan_host(token: str, mappings: list[Mapping], listing: Listing, trees: LocalTrees, *, compare: str,
              delete: bool, warn, trusted: frozenset = frozenset(), remote_links: str = "refuse",
              list_unchanged: bool = True) -> HostPlan:
    plans = [plan_mapping(m, listing, trees, compare=compare, delete=delete, warn=warn, token=token,
                          trusted=trusted, remote_links=remote_links, list_unchanged=list_unchanged)
             for m in mappings]
    return HostPlan(token=token, mappings=plans, stale=list(listing.stale))
