"""The remote state of a host's dests, as a backend reports it.

Backends fill a :class:`Listing` (the shell backend by parsing its script's
NUL-separated records, the SFTP backend from lstat/readdir); planning reads
it and never talks to a host.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field

from .constants import STAGING_PREFIX


def staging_name(token: str) -> str:
    return STAGING_PREFIX + token


@dataclass(slots=True)
class RemoteEntry:
    kind: str  #: find's %y: f, d, l, p, s, c, b
    mode: int
    size: int
    mtime: int  #: whole seconds
    link: str = ""
    sha256: str | None = None
    owner: str = ""
    group: str = ""
    uid: str = ""  #: numeric, as text (owner may be given as a number)
    gid: str = ""


@dataclass
class Listing:
    token: str = ""  #: the run's token as the script made it (<node>-<pid>-<random>)
    home: str = ""
    method: str = ""  #: how the host listed: gnu (find -printf), statc, statf, sftp
    #: dest -> {absolute path -> entry}
    entries: dict[str, dict[str, RemoteEntry]] = field(default_factory=dict)
    #: dest -> its entries as R records (GNU find, no owner names), compared
    #: whole with what the client expects and parsed only where they differ
    #: (:func:`parse_record`); such a dest has no ``entries``
    records: dict[str, set[bytes]] = field(default_factory=dict)
    #: --checksum, for dests listed as records: "<SHA-256>  <absolute path>"
    #: records as the host printed them (sha256sum -z's format), compared
    #: whole with what the client expects (:meth:`LocalTrees.sum_records`)
    sum_records: set[bytes] = field(default_factory=set)
    #: leftovers of cut runs (staging folders), to remove
    stale: list[str] = field(default_factory=list)
    #: dest -> staging folders of a run in progress there (another synctasks)
    active: dict[str, list[str]] = field(default_factory=dict)
    #: remote paths the listing method could not carry (a newline in a name)
    unlisted: list[str] = field(default_factory=list)
    #: the login user as the host names it
    user: str = ""
    #: dest -> its link target, for dests that are symlinks (listed through them)
    dest_links: dict[str, str] = field(default_factory=dict)
    #: the host has perl (a whole commit renamed by one process)
    perl: bool = False
    #: dest -> the folder where its work lands, when the listing user cannot write it
    unwritable: dict[str, str] = field(default_factory=dict)
    _sums: dict[str, str] | None = field(default=None, repr=False)

    def sum_of(self, path: str) -> str | None:
        """The host's SHA-256 of an absolute path listed as a record (the
        records are parsed once, on the first question: most runs ask none)."""
        if self._sums is None:
            self._sums = {_text(raw[66:]): raw[:64].decode() for raw in self.sum_records}
        return self._sums.get(path)


#: The script's refusals (X records), in words: Dropbear's 9,000-byte
#: command leaves the script no room for them.
SCRIPT_ERRORS = {
    b"nofind": "the host has neither GNU find -printf nor stat -c / stat -f: install GNU findutils or BusyBox",
    b"nosum": "the host has no sha256sum (nor shasum): --checksum cannot run there; drop --checksum",
}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


#: where a run of plain R records ends: the NUL after which comes anything
#: but an R record of a kind other than a link's (its target follows it)
_RUN_END = re.compile(rb"\0(?!R[^l\0])")
#: how a checksum line starts (a record's tag is upper case)
_HEX = frozenset(bytes([c]) for c in b"0123456789abcdef")


def _seconds(raw: bytes) -> int:
    """Whole seconds, rounded down (pre-1970 times too: -1.5 is -2)."""
    if raw[:1] != b"-":
        return int(raw.partition(b".")[0])
    whole, _, fraction = raw.partition(b".")
    seconds = int(whole)
    if whole.startswith(b"-") and fraction.strip(b"0"):
        seconds -= 1
    return seconds


_KINDS = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFIFO: "p", stat.S_IFSOCK: "s",
          stat.S_IFCHR: "c", stat.S_IFBLK: "b"}


def kind_of(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "?")


def record(kind: str, mode: int, size: int, seconds: int, rel: bytes) -> bytes:
    """The R record of an entry: what the script prints for it, byte for
    byte (folders carry no size or time: they are not compared)."""
    if kind == "d":
        return b"Rd%o 0 0 %s" % (mode, rel)
    return b"R%s%o %d %d %s" % (kind.encode(), mode, size, seconds, rel)


def parse_record(raw: bytes) -> tuple[str, RemoteEntry]:
    """(path below dest, entry) of an R record (a link's target follows
    its record after a NUL)."""
    raw, _, target = raw.partition(b"\0")
    mode, size, seconds, rel = raw[2:].split(b" ", 3)
    kind = chr(raw[1])
    return _text(rel), RemoteEntry(kind, int(mode, 8), int(size) if kind == "f" else 0, int(seconds),
                                   _text(target))


def parse_listing(data: bytes) -> Listing:
    """Parse the NUL-separated listing (everything before the ``Z`` record).

    Entries come as ``R`` (GNU find -printf, path below dest, kept whole:
    see :func:`record`), ``E`` (GNU find -printf when owner names are
    wanted; link, owner and group follow as records of their own), ``F``
    (``stat -c``: hex mode) or ``G`` (BSD ``stat -f``: octal mode), link
    targets as ``K`` records for the stat methods, checksums as sha256sum
    lines (after a ``C`` record when one process hashed every dest).
    """
    from .errors import RemoteError

    listing = Listing()
    records = data.split(b"\0")
    current: dict[str, RemoteEntry] | None = None
    dest = ""
    names: dict[tuple, tuple] = {}
    rows: set[bytes] | None = None  #: the current dest's R records
    anywhere: list[dict[str, RemoteEntry]] | None = None  #: after C
    known = [0, 0]  #: a record's place and where it starts in ``data`` (runs are found there)
    i = 0
    while i < len(records):
        record = records[i]
        i += 1
        tag = record[:1]
        if tag == b"R":
            if rows is None:
                rows = listing.records.setdefault(dest, set())
            if record[1:2] == b"l":
                record += b"\0" + (records[i] if i < len(records) else b"")
                i += 1
                rows.add(record)
                continue
            # The bulk of a listing: the run of R records from here up to a
            # link's (its target follows it) or any other record, at once.
            # (Found in the bytes, at C speed: a check per record in Python,
            # even map(methodcaller), cost 0.06 s per 100,000.)
            place, start = known
            start += sum(map(len, records[place:i - 1])) + (i - 1 - place)
            stop = _RUN_END.search(data, start)
            if stop is None:
                end = len(records)
            else:
                end = i + data.count(b"\0", start, stop.start())
                known[:] = [end, stop.start() + 1]
            rows.update(records[i - 1:end])
            i = end
        elif record[64:66] == b"  " and tag in _HEX and len(record) > 66:  # a checksum line
            if rows is not None or anywhere is not None:
                listing.sum_records.add(record)
            if rows is None or anywhere:
                path = _text(record[66:])
                for entries in ([current] if anywhere is None else anywhere):
                    entry = entries.get(path) if entries is not None else None
                    if entry is not None:
                        entry.sha256 = record[:64].decode()
        elif tag == b"C":
            # the sums of every dest follow, known by their paths alone: the
            # dests listed as entries (not records) are where a sum is looked up
            anywhere = [entries for entries in listing.entries.values() if entries]
            if not anywhere:
                # only records' dests: every line up to the end record is a
                # sum line, taken at once
                try:
                    end = records.index(b"Z" + listing.token.encode("utf-8", "surrogateescape"), i)
                except ValueError:
                    end = len(records)
                listing.sum_records.update(filter(None, records[i:end]))
                i = end
        elif not record:
            continue
        elif tag == b"T":
            listing.token = _text(record[1:])
        elif tag == b"H":
            listing.home = _text(record[1:])
        elif tag == b"L":
            listing.method = _text(record[1:])
        elif tag == b"X":
            raise RemoteError(SCRIPT_ERRORS.get(record[1:]) or _text(record[1:]))
        elif tag == b"M":
            dest = _text(record[1:])
            current = listing.entries.setdefault(dest, {})
            rows = None
        elif tag in (b"S", b"A"):
            path = _text(record[1:])
            # Sent back as a line: a name with a newline would split in two.
            if path.startswith("/") and "\n" not in path:
                if tag == b"S":
                    listing.stale.append(path)
                else:
                    listing.active.setdefault(dest, []).append(path)
        elif tag == b"P":
            listing.perl = record[1:] == b"perl"
        elif tag == b"Y":
            listing.dest_links[dest] = _text(record[1:])
        elif tag == b"U":
            listing.user = _text(record[1:])
        elif tag == b"W":
            if record[1:2] == b"0":
                listing.unwritable[dest] = _text(record[2:])
        elif tag == b"N":
            listing.unlisted.append(_text(record[1:]))
        elif tag == b"E":
            # Group names may hold spaces ("domain users"): own records.
            # Owners, groups and modes repeat: decoded once each.
            link, owner, group = records[i:i + 3] if i + 3 <= len(records) else (records[i:] + [b"", b"", b""])[:3]
            i += 3
            kind, mode, size, mtime, uid, gid, path = record[1:].split(b" ", 6)
            key = (kind, mode, owner, group, uid, gid)
            shared = names.get(key)
            if shared is None:
                shared = names[key] = (kind.decode(), int(mode, 8), _text(owner), _text(group), uid.decode(),
                                       gid.decode())
            current[_text(path)] = RemoteEntry(shared[0], shared[1], int(size), _seconds(mtime),
                                               _text(link) if link else "", None, shared[2], shared[3],
                                               shared[4], shared[5])
        elif tag in (b"F", b"G"):
            mode, size, mtime, owner, group, uid, gid, path = record[1:].split(b"/", 7)
            raw = int(mode, 16 if tag == b"F" else 8)
            kind = kind_of(raw)
            current[_text(path)] = RemoteEntry(kind=kind, mode=stat.S_IMODE(raw), size=int(size) if kind == "f" else 0,
                                               mtime=_seconds(mtime), owner=_text(owner), group=_text(group),
                                               uid=uid.decode(), gid=gid.decode())
        elif tag == b"K":
            target = records[i] if i < len(records) else b""
            i += 1
            entry = current.get(_text(record[1:])) if current is not None else None
            if entry is not None:
                entry.link = _text(target)
        elif tag == b"Z":
            break  # the end record (Z<token>)
    return listing
