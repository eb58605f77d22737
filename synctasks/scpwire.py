"""The SCP source side: the records an ``scp -t`` sink reads, the local
file reads that feed them, and the bookkeeping of the sink's answers.

Nothing here knows about hosts or plans beyond the Send/NewDir records.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

from .channel import Stream, marker
from .errors import RemoteError
from .local import BLOB_MAX, LocalTrees
from .plan import NewDir, Send

CHUNK = 1 << 20  #: bytes read from a local file at a time
FLUSH = 1 << 18  #: small files are batched into writes of about this size

_NOT_ZERO = re.compile(rb"[^\0]")

#: What each answer of the SCP sink is for (ScpStream.kinds).
NAV, TIMES, CREATE, DATA = b"n", b"t", b"c", b"d"
FILE = TIMES + CREATE + DATA  #: a file's three answers


@dataclass
class ScpStream:
    """Builds the SCP source stream and tracks the sink's answers.

    Every record the sink reads (T, C, D, E, a file's data) is answered by one
    byte 0, or by 1/2 and a message line. ``kinds`` says, in order, what each
    answer is for; a file's three (T, C, data) come together, and the n-th
    file of the stream (``sends``, put in stream order) owns the n-th T
    answer and the two after it. ``pos`` counts the answers read. (A byte
    per answer rather than a record: 100,000 files to 8 hosts is 2.4
    million answers.)
    """

    token: str
    #: the files, in stream order once :func:`scp_records` laid it out
    sends: list[Send]
    kinds: bytearray = field(default_factory=bytearray)
    #: per folder, in stream order: (navigation records, its files' range in sends)
    records: list[tuple[bytes, int, int]] = field(default_factory=list)
    _counted: tuple[int, int] = (0, 0)  #: T answers before position [0]: [1]
    pos: int = 0
    failed: dict[int, str] = field(default_factory=dict)  #: id(send) -> reason
    broken: str | None = None  #: the stream lost sync; nothing after is trusted
    broken_at: int | None = None  #: answers from here on are not trusted

    def expect(self, kind: bytes) -> None:
        self.kinds += kind

    def owner(self, pos: int) -> Send | None:
        """The file answer ``pos`` is about (None: a folder record's)."""
        if self.kinds[pos] == NAV[0]:
            return None
        # Answers are read in order: count on from the last one asked about.
        last, counted = self._counted
        if pos < last:
            last, counted = 0, 0
        counted += self.kinds.count(TIMES, last, pos + 1)
        self._counted = (pos + 1, counted)
        return self.sends[counted - 1]

    @property
    def pending(self) -> bool:
        return self.pos < len(self.kinds)

    def unconfirmed(self) -> list[Send]:
        """The files whose data the sink did not confirm (in order: answers
        come in stream order, so they are the files after the last confirmed)."""
        end = self.pos if self.broken_at is None else min(self.pos, self.broken_at)
        return self.sends[self.kinds.count(DATA, 0, end):]

    def feed(self, data: bytes) -> bytes:
        """Consume answers; return what follows the last expected one."""
        i, size = 0, len(data)
        while i < size and self.pending:
            limit = min(size, i + len(self.kinds) - self.pos)
            found = _NOT_ZERO.search(data, i, limit)
            end = found.start() if found else limit
            self.pos += end - i  # a run of zeros: that many records confirmed
            i = end
            if i >= size or not self.pending:
                break
            byte = data[i]
            if byte not in (1, 2):
                self.broken = self.broken or "the SCP sink stopped in mid-stream"
                self.broken_at = self.pos if self.broken_at is None else self.broken_at
                return data[i:]
            newline = data.find(b"\n", i)
            if newline < 0:
                return data[i:]  # an incomplete message: wait for the rest
            message = data[i + 1:newline].decode("utf-8", "replace").strip()
            kind, send = self.kinds[self.pos], self.owner(self.pos)
            self.pos += 1
            if send is not None:
                self.failed.setdefault(id(send), message)
            if byte == 2 or kind in (CREATE[0], NAV[0]):
                # The sink skipped a record it could not open: what we sent
                # after it no longer lines up with what it reads.
                self.broken = self.broken or message
                if self.broken_at is None:
                    self.broken_at = self.pos
            i = newline + 1
        return data[i:]


def _navigate(current: list[bytes], target: list[bytes], out: bytearray, scp: ScpStream,
              modes: dict[tuple, int]) -> None:
    """Leave and enter folders (E and D records) to get from ``current`` to ``target``.

    A D record for a folder that exists only enters it (the sink runs
    without -p, so it keeps its mode); a missing one is created with the mode
    given here (``modes``, else 0700) — exactly, since the sink runs with umask 0.
    """
    common = 0
    while common < min(len(current), len(target)) and current[common] == target[common]:
        common += 1
    while len(current) > common:
        current.pop()
        out += b"E\n"
        scp.expect(NAV)
    for name in target[common:]:
        current.append(name)
        out += b"D%04o 0 " % modes.get(tuple(current), 0o700) + name + b"\n"
        scp.expect(NAV)


def _components(path: str) -> list[bytes]:
    return [p.encode("utf-8", "surrogateescape") for p in path.split("/") if p]


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes of ``fd``, or None if the file is shorter now."""
    data = os.read(fd, size)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        chunk = os.read(fd, size - got)
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _file_header(send: Send) -> bytes:
    entry = send.local
    # SCP's T record takes no negative times (files dated before 1970).
    seconds, nanos = divmod(max(0, entry.mtime_ns), 1_000_000_000)
    a_seconds, a_nanos = divmod(max(0, entry.atime_ns), 1_000_000_000)
    return b"T%d %d %d %d\nC%04o %d %b\n" % (seconds, nanos // 1000, a_seconds, a_nanos // 1000,
                                               send.mode & 0o7777, entry.size,
                                               send.name.encode("utf-8", "surrogateescape"))


def scp_records(scp: ScpStream, new_dirs: list[NewDir], root: str, measure: bool = True) -> int:
    """Lay out the SCP stream into staging folder ``root``: ``scp.sends`` is
    sorted (in place) into stream order, folder by folder, and
    ``scp.records`` says where each folder starts. Returns the stream's
    exact length (``measure``; else 0: it goes in frames, see send_scp).

    The length is known before a byte is sent (a file that cannot be read
    when its turn comes is padded to its announced size and never committed),
    so the script can hand the sink exactly the stream and no more. File
    headers are made again when sent rather than kept: less memory.
    """
    scp.expect(NAV)  # the sink's "ready"
    current: list[bytes] = []
    skip = len(_components(root))

    def below(path: str) -> list[bytes]:
        return _components(path)[skip:]

    # Built writable (a folder is renamed into place only if we may write
    # its ".." entry); the final mode comes after the move.
    modes = {tuple(below(d.stage)): (d.mode & 0o7777) | 0o700 for d in new_dirs}
    stages = dict.fromkeys(d.stage for d in new_dirs)
    stages.update(dict.fromkeys(s.stage for s in scp.sends))
    # Parents sort before their children: each new folder is made before
    # anything goes into it, and empty new folders are made too.
    order = sorted(stages, key=_components)
    rank = {stage: i for i, stage in enumerate(order)}
    sends = scp.sends
    sends.sort(key=lambda s: rank[s.stage])  # stable: a folder's files stay in walk order
    total = i = 0
    for stage in order:
        out = bytearray()
        _navigate(current, below(stage), out, scp, modes)
        total += len(out)
        start = i
        while i < len(sends) and sends[i].stage == stage:
            if measure:
                total += len(_file_header(sends[i])) + sends[i].local.size + 1
            scp.expect(FILE)
            i += 1
        scp.records.append((bytes(out), start, i))
    out = bytearray()
    _navigate(current, [], out, scp, modes)
    out += b"E\n"
    scp.expect(NAV)
    scp.records.append((bytes(out), i, i))
    return total + len(out) if measure else 0


def _read_small(path: str, size: int, mtime_ns: int) -> tuple[bytes, str | None]:
    """(the whole of a file of ``size`` <= CHUNK bytes, None), or (zeros,
    why not): it cannot be opened or read, it is no longer a regular file
    (never waits: a FIFO swapped in gives nothing), or it changed since the
    walk. One open, read, fstat and close (the general path costs two
    fstats and a call more per file: 100,000 files, ~0.4 s)."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        return bytes(size), f"cannot read {path}: {exc.strerror}"
    unread = None
    try:
        try:
            data = _read_exactly(fd, size) if size else b""
        except OSError as exc:
            data, unread = None, exc.strerror
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        return bytes(size), f"{path} is no longer a regular file: run the sync again"
    if unread:
        return bytes(size), f"cannot read {path}: {unread}"
    if data is None or info.st_size != size or info.st_mtime_ns != mtime_ns:
        return bytes(size), "the file changed while it was sent: run the sync again"
    return data, None


_READ = os.O_RDONLY | os.O_NONBLOCK


def _open_regular(path: str) -> tuple[int | None, str | None]:
    """(fd, None) for a regular file, or (None, why not). Never blocks: a
    file swapped for a FIFO since the walk must not hang the run."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None, f"{path} is no longer a regular file: run the sync again"
    return fd, None


def send_scp(stream: Stream, scp: ScpStream, progress=None, label: str = "", done: list[int] | None = None,
             trees: LocalTrees | None = None, cancel=None, framed: bool = False) -> None:
    """Write the whole SCP stream; the sink's answers are read at the end.
    ``framed``: in frames, each 8 hex digits of length and that many bytes
    (for the perl sink told no length).

    The script keeps the sink's answers in a file until the sink exits: one
    read instead of thousands of one-byte packets, each costing a round of
    Python on this side while the stream is still being sent.

    A send that fails (the link stalled past io_timeout, or closed) ends the
    host at once: a stream cut short must never be completed by whatever
    would be sent next.
    """
    out = bytearray()
    done = done if done is not None else [0, 0]  # files, bytes: counted on across calls

    def send(data) -> None:
        if not data:
            return  # (an empty frame ends a framed stream)
        if not ((not framed or stream.send(b"%08x" % len(data))) and stream.send(data)):
            raise RemoteError(stream.failure("the connection stalled or closed while sending"),
                              host=stream.label, transient=True)

    def flush() -> None:
        if out:
            send(out)
            out.clear()
        stream.pump(block=False)

    def sent(size: int) -> None:
        """A file's bytes are in the stream (maybe still buffered)."""
        done[0] += 1
        done[1] += size
        if progress:
            progress(label, done[0], done[1])
        if len(out) >= FLUSH:
            flush()

    blobs = trees.blobs if trees is not None else {}
    # Small files are kept for the other hosts, if there are others.
    keep = trees is not None and trees.shares_blobs
    failed = scp.failed
    for navigation, start, end in scp.records:
        out += navigation
        for send_item in scp.sends[start:end]:  # (islice would step over the first `start` again: n^2)
            if cancel is not None:
                cancel()  # raises to stop between files
            out += _file_header(send_item)
            entry = send_item.local
            path, size = entry.path, entry.size
            if blobs:
                known = blobs.get(path)
                if known is not None and len(known) == size:
                    out += known + b"\0"  # read for another host already
                    sent(size)
                    continue
            if size <= CHUNK:
                chunk, problem = _read_small(path, size, entry.mtime_ns)
                if problem:
                    failed.setdefault(id(send_item), problem)
                elif keep and size <= BLOB_MAX:
                    trees.remember(path, chunk)
                out += chunk
                out += b"\0"
                sent(size)
                continue
            remaining = size
            fd, problem = _open_regular(path)
            if problem:
                failed[id(send_item)] = problem
            try:
                while remaining:
                    want = min(CHUNK, remaining)
                    try:
                        chunk = _read_exactly(fd, want) if fd is not None else None
                    except OSError as exc:
                        failed.setdefault(id(send_item), f"cannot read {path}: {exc.strerror}")
                        os.close(fd)
                        fd, chunk = None, None
                    if chunk is None:
                        # Unreadable, or shrank while we read it: keep the
                        # stream in step with the size announced; never commit.
                        failed.setdefault(id(send_item), "the file changed while it was sent: run the sync again")
                        chunk = bytes(want)
                    remaining -= want
                    if want >= FLUSH:
                        flush()
                        send(chunk)  # big pieces go out as they are, without a copy
                        continue
                    out += chunk
                    if len(out) >= FLUSH:
                        flush()
                if fd is not None:
                    now = os.fstat(fd)
                    if now.st_size != size or now.st_mtime_ns != entry.mtime_ns:
                        # Written to while we read it: what we sent may mix
                        # old and new. Never commit it; the next run sends it.
                        failed.setdefault(id(send_item), "the file changed while it was sent: run the sync again")
            finally:
                if fd is not None:
                    os.close(fd)
            out += b"\0"
            sent(size)
    flush()


def read_scp_answers(stream: Stream, scp: ScpStream) -> None:
    """Feed the sink's answers (they precede the scp marker) to ``scp``."""
    data = stream.read_until(marker(scp.token))
    body = data[: -len(marker(scp.token))]
    rest = scp.feed(body)
    if scp.pending and not scp.broken:
        scp.broken = "the SCP sink stopped before the end of the stream"
    elif rest.strip(b"\0"):
        log_rest = rest.decode("utf-8", "replace").strip()
        scp.broken = scp.broken or f"unexpected answer from the SCP sink: {log_rest[:200]}"
    stream.buf[:0] = marker(scp.token)

