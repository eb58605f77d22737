"""Sync one host over an open connection: list, plan, send, commit.

The whole exchange is one remote command (see :mod:`synctasks.remote`):

1. the script lists every dest; we plan against that listing;
2. we send the preparing operations (remove leftovers, make the staging
   folders), then one SCP stream per staging folder, back to back, without
   waiting for any acknowledgement (on a long link a wait per file would
   cost a round trip per file); folders that are new remotely are built
   inside a staging folder;
3. once the sinks have answered, we send the committing operations: a ``mv``
   per folder renames what arrived over its targets (rename(2): a reader sees
   the old file or the new one, never a part), then chmod, chown, touch,
   deletions, and removal of the staging folders.

A file whose transfer failed is never moved into place; its staging copy is
removed with the staging folder. If a stream was not consumed whole, the
script stops taking operations and the commit runs on a second channel.
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import socket
import stat
import time
from dataclasses import dataclass, field

import paramiko

from .errors import RemoteError, UnsafeDestError
from .inputs import Mapping
from .logger import get_logger
from .options import STALL_TIMEOUT, SyncOptions
from .plan import (BLOB_MAX, HostPlan, LocalTrees, MappingPlan, NewDir, Send, chown_spec, plan_host,
                   unsafe_for_delete)
from .remote import Listing, Ops, command, marker, parse_listing, staging_name
from .results import CHANGING, HostResult, MappingResult

CHUNK = 1 << 20  #: bytes read from a local file at a time
FLUSH = 1 << 18  #: small files are batched into writes of about this size


class Stream:
    """Buffered reading of one exec channel's stdout (stderr kept aside)."""

    def __init__(self, chan: paramiko.Channel, label: str, timeout: float = STALL_TIMEOUT):
        self.chan = chan
        self.label = label
        self.timeout = timeout
        self.buf = bytearray()
        self.err = bytearray()
        self.eof = False
        chan.settimeout(timeout)

    def _take_stderr(self) -> None:
        while self.chan.recv_stderr_ready():
            self.err += self.chan.recv_stderr(1 << 16)

    def pump(self, block: bool) -> bool:
        """Receive what is there (or wait for something); False at EOF."""
        self._take_stderr()
        if self.eof:
            return False
        if not block and not self.chan.recv_ready():
            return True
        try:
            data = self.chan.recv(1 << 16)
        except socket.timeout:
            raise RemoteError(f"no answer for {self.timeout:.0f}s: the connection stalled", host=self.label,
                              transient=True) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise RemoteError(f"the connection broke: {exc}", host=self.label, transient=True) from None
        if not data:
            self.eof = True
            self._take_stderr()
            return False
        self.buf += data
        return True

    def read_until(self, needle: bytes) -> bytes:
        """Everything up to and including ``needle``."""
        start = 0
        while True:
            found = self.buf.find(needle, start)
            if found >= 0:
                end = found + len(needle)
                data = bytes(self.buf[:end])
                del self.buf[:end]
                return data
            start = max(0, len(self.buf) - len(needle) + 1)
            if not self.pump(block=True):
                transport = self.chan.get_transport()
                if transport is None or not transport.is_active():
                    raise RemoteError("the connection was lost (closed or reset on the way)", host=self.label,
                                      transient=True)
                raise RemoteError(self.failure("the remote command stopped"), host=self.label)

    def stderr_text(self) -> str:
        self._take_stderr()
        return self.err.decode("utf-8", "replace").strip()

    def failure(self, what: str) -> str:
        detail = self.stderr_text()
        status = self.chan.recv_exit_status() if self.chan.exit_status_ready() else None
        text = what
        if status is not None:
            text += f" (exit status {status})"
        if detail:
            text += ": " + detail.splitlines()[-1]
        return text

    def send(self, data) -> bool:
        """Send all of ``data``; False if the remote side has gone away.

        Channel.sendall re-slices (copies) the rest of its buffer after every
        32 KiB packet; a memoryview slices for free.
        """
        view = memoryview(data)
        try:
            while view:
                sent = self.chan.send(view)
                if sent <= 0:
                    return False
                view = view[sent:]
            return True
        except (OSError, EOFError, paramiko.SSHException):
            return False


class Markers:
    """Reads the ``@@token@@ op status`` lines the script prints."""

    def __init__(self, stream: Stream, token: str):
        self.stream = stream
        self.prefix = marker(token)

    def next(self) -> tuple[bytes, str, int]:
        """(bytes before the marker, op, status)."""
        before, op, statuses = self.next_all()
        return before, op, statuses[0]

    def next_all(self) -> tuple[bytes, str, list[int]]:
        """(bytes before the marker, op, every status on the line)."""
        before = self.stream.read_until(self.prefix)[: -len(self.prefix)]
        line = self.stream.read_until(b"\n")[:-1].decode()
        op, _, statuses = line.partition(" ")
        return before, op, [int(x) for x in statuses.split()]


# --------------------------------------------------------------------------
# The SCP stream
# --------------------------------------------------------------------------
_NOT_ZERO = re.compile(rb"[^\0]")

#: What each answer of the SCP sink is for (ScpStream.kinds).
NAV, TIMES, CREATE, DATA = b"n", b"t", b"c", b"d"


@dataclass
class ScpStream:
    """Builds the SCP source stream and tracks the sink's answers.

    Every record the sink reads (T, C, D, E, a file's data) is answered by one
    byte 0, or by 1/2 and a message line. ``kinds`` and ``owners`` say, in
    order, what each answer is for; ``pos`` counts the answers read. (Two flat
    arrays rather than a tuple per answer: 20,000 files to 8 hosts is half a
    million answers.)
    """

    token: str
    sends: list[Send]
    kinds: bytearray = field(default_factory=bytearray)
    owners: list = field(default_factory=list)  #: the Send (or None) each answer is for
    pos: int = 0
    failed: dict[int, str] = field(default_factory=dict)  #: id(send) -> reason
    broken: str | None = None  #: the stream lost sync; nothing after is trusted
    broken_at: int | None = None  #: answers from here on are not trusted

    def expect(self, kind: bytes, owner: Send | None = None) -> None:
        self.kinds += kind
        self.owners.append(owner)

    @property
    def pending(self) -> bool:
        return self.pos < len(self.kinds)

    def acked(self) -> set[int]:
        """id() of every file whose data the sink confirmed."""
        end = self.pos if self.broken_at is None else min(self.pos, self.broken_at)
        return {id(self.owners[i]) for i in range(end) if self.kinds[i] == DATA[0]
                and id(self.owners[i]) not in self.failed}

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
            kind, send = self.kinds[self.pos], self.owners[self.pos]
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
    return (b"T%d %d %d %d\n" % (seconds, nanos // 1000, a_seconds, a_nanos // 1000)
            + b"C%04o %d " % (send.mode & 0o7777, entry.size)
            + send.name.encode("utf-8", "surrogateescape") + b"\n")


def scp_records(scp: ScpStream, new_dirs: list[NewDir], root: str) -> tuple[list[tuple[bytes, list[Send]]], int]:
    """The SCP stream into staging folder ``root`` as (navigation records,
    files to send there) per folder, and its exact length.

    The length is known before a byte is sent (a file that cannot be read
    when its turn comes is padded to its announced size and never committed),
    so the script can hand the sink exactly the stream and no more. File
    headers are made again when sent rather than kept: less memory.
    """
    records: list[tuple[bytes, list[Send]]] = []
    scp.expect(NAV)  # the sink's "ready"
    current: list[bytes] = []
    skip = len(_components(root))

    def below(path: str) -> list[bytes]:
        return _components(path)[skip:]

    # Built writable (a folder is renamed into place only if we may write
    # its ".." entry); the final mode comes after the move.
    modes = {tuple(below(d.stage)): (d.mode & 0o7777) | 0o700 for d in new_dirs}
    visits: dict[str, list[Send]] = {d.stage: [] for d in new_dirs}
    for send in scp.sends:
        visits.setdefault(send.stage, []).append(send)
    total = 0
    # Parents sort before their children: each new folder is made before
    # anything goes into it, and empty new folders are made too.
    for stage in sorted(visits, key=_components):
        out = bytearray()
        _navigate(current, below(stage), out, scp, modes)
        total += len(out)
        for send in visits[stage]:
            total += len(_file_header(send)) + send.local.size + 1
            scp.expect(TIMES, send)
            scp.expect(CREATE, send)
            scp.expect(DATA, send)
        records.append((bytes(out), visits[stage]))
    out = bytearray()
    _navigate(current, [], out, scp, modes)
    out += b"E\n"
    scp.expect(NAV)
    records.append((bytes(out), []))
    return records, total + len(out)


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


def send_scp(stream: Stream, scp: ScpStream, records: list[tuple[bytes, list[Send]]], progress=None,
             label: str = "", done: list[int] | None = None, trees: LocalTrees | None = None) -> None:
    """Write the whole SCP stream; the sink's answers are read at the end.

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
        if not stream.send(data):
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

    for navigation, sends in records:
        out += navigation
        for send_item in sends:
            out += _file_header(send_item)
            entry = send_item.local
            known = trees.blobs.get(entry.path) if trees is not None else None
            if known is not None and len(known) == entry.size:
                out += known + b"\0"  # read for another host already
                sent(entry.size)
                continue
            remaining = entry.size
            chunk = b""  # small files come in one chunk: kept for the other hosts
            fd, problem = _open_regular(entry.path)
            if problem:
                scp.failed[id(send_item)] = problem
            try:
                while remaining:
                    want = min(CHUNK, remaining)
                    try:
                        chunk = _read_exactly(fd, want) if fd is not None else None
                    except OSError as exc:
                        scp.failed.setdefault(id(send_item), f"cannot read {entry.path}: {exc.strerror}")
                        os.close(fd)
                        fd, chunk = None, None
                    if chunk is None:
                        # Unreadable, or shrank while we read it: keep the
                        # stream in step with the size announced; never commit.
                        scp.failed.setdefault(id(send_item), "the file changed while it was sent: run the sync again")
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
                    if now.st_size != entry.size or now.st_mtime_ns != entry.mtime_ns:
                        # Written to while we read it: what we sent may mix
                        # old and new. Never commit it; the next run sends it.
                        scp.failed.setdefault(id(send_item), "the file changed while it was sent: run the sync again")
                    elif trees is not None and entry.size <= BLOB_MAX and id(send_item) not in scp.failed:
                        trees.remember(entry.path, chunk if entry.size else b"")
            finally:
                if fd is not None:
                    os.close(fd)
            out += b"\0"
            sent(entry.size)
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


# --------------------------------------------------------------------------
# One host
# --------------------------------------------------------------------------
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


@dataclass
class Target:
    """Where one script runs: a connection, as the login user or through sudo."""

    c: object  #: an open Fabric Connection or SshConnection
    label: str
    sudo: bool = False
    password: str | None = field(default=None, repr=False)  #: sudo's password, if it asks
    timeout: float = STALL_TIMEOUT


#: What sudo says when it will not run the script.
SUDO_REFUSALS = ("try again", "incorrect password", "not in the sudoers", "not allowed to execute",
                 "a password is required", "no tty present", "a terminal is required")


def _open_script(target: Target, token: str, mode: str, mappings: list[Mapping]) -> Stream:
    try:
        chan = target.c.transport.open_session(timeout=target.timeout)
        chan.exec_command(command(token, mode, [(m.is_dir, m.dest) for m in mappings], target.sudo,
                                  bool(target.sudo and target.password)))
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise RemoteError(f"cannot start the remote command: {exc}", host=target.label, transient=True) from None
    stream = Stream(chan, target.label, target.timeout)
    if target.sudo:
        if target.password:
            stream.send(target.password.encode() + b"\n")
        _wait_for_sudo(stream)
    if mode == "ops":
        stream.read_until(b"\0")  # the script's I<token> record
    return stream


def _wait_for_sudo(stream: Stream) -> None:
    """Wait until the script answers, or sudo says no (it would then sit
    waiting for another password try)."""
    deadline = time.monotonic() + stream.timeout
    while True:
        stream._take_stderr()
        said = stream.err.decode("utf-8", "replace")
        if any(refusal in said.lower() for refusal in SUDO_REFUSALS):
            last = [l for l in said.splitlines() if l.strip()][-1:] or [said]
            raise RemoteError(f"sudo refused: {last[0].strip()}; check the user's sudo rights and the sudo "
                              "password (passkey or sudo_passkey_env)", host=stream.label)
        if stream.chan.recv_ready() or stream.chan.exit_status_ready():
            return
        if time.monotonic() > deadline:
            raise RemoteError(f"no answer from sudo for {stream.timeout:.0f}s", host=stream.label)
        time.sleep(0.005)


def read_listing(stream: Stream) -> Listing:
    first = stream.read_until(b"\0")  # I<token>: the script's own token
    if not first.startswith(b"I"):
        raise RemoteError(stream.failure(f"unexpected answer from the remote shell: {first[:80]!r}"),
                          host=stream.label)
    token = first[1:-1]
    return parse_listing(first + stream.read_until(b"Z" + token + b"\0"))


def sync_host_plan(target: Target, mappings: list[Mapping], options: SyncOptions,
                   trees: LocalTrees | None = None) -> list[MappingResult]:
    """List, plan and (unless a dry run) apply; the mappings' results."""
    label = target.label
    log = get_logger(label)
    mode = "checksum" if options.compare == "checksum" else "list"
    stream = _open_script(target, secrets.token_hex(8), mode, mappings)
    if mode == "checksum":
        # sha256sum answers in blocks: big files can keep it quiet for long.
        stream.chan.settimeout(stream.timeout * 10)
    listing = read_listing(stream)
    stream.chan.settimeout(stream.timeout)
    token = listing.token
    log.debug("listed %d remote entries in %d dests", sum(len(e) for e in listing.entries.values()),
              len(listing.entries))
    trees = trees or LocalTrees(options.exclude, options.symlinks, log.warning)
    plan = plan_host(token, mappings, listing, trees, compare=options.compare, delete=options.delete,
                     warn=log.warning, trusted=options.trusted)
    results = [p.result for p in plan.mappings]
    if options.delete:
        _check_delete_safety(plan, listing, options, label)
    if options.dry_run or not plan.has_work:
        ops = Ops(token)
        ops.quit()
        stream.send(ops.take())
        stream.chan.close()
        return results
    _apply(target, stream, plan, mappings, options, trees)
    return results


def _check_delete_safety(plan: HostPlan, listing: Listing, options: SyncOptions, label: str) -> None:
    if options.force:
        return
    for mapping_plan in plan.mappings:
        mapping = mapping_plan.mapping
        why = unsafe_for_delete(mapping, listing.home)
        if why:
            raise UnsafeDestError(f"refusing --delete on dest {mapping.dest} ({mapping.source}): {why}; "
                                  "pick a deeper dest or pass --force", host=label)


def _message(before: bytes) -> str:
    """An operation's error output, as one line."""
    lines = [l.strip() for l in before.decode("utf-8", "replace").splitlines() if l.strip()]
    return "; ".join(dict.fromkeys(lines))


def _prep_reason(message: str, staging: str) -> str:
    """Say which remote folder could not be written, not which temporary one."""
    match = re.search(r"cannot create directory '([^']*)': (.*)", message)
    if not match:
        return f"cannot create the remote folders: {message or 'mkdir failed'}"
    path, why = match.groups()
    if path.endswith("/" + staging):
        return f"cannot write into {posixpath.dirname(path)}: {why}"
    return f"cannot create folder {path}: {why}"


def _fail_records(mapping_plan: MappingPlan, reason: str, actions=CHANGING) -> None:
    for record in mapping_plan.result.files:
        if record.action in actions:
            record.action, record.reason = "fail", reason


def _apply(target: Target, stream: Stream, plan: HostPlan, mappings: list[Mapping], options: SyncOptions,
           trees: LocalTrees | None = None) -> None:
    """Prepare, transfer, commit (see the module docstring)."""
    label = target.label
    log = get_logger(label)
    token = plan.token
    staging = staging_name(token)

    # 1. Prepare: clear leftovers of cut runs, then make each mapping's
    # missing parents and staging folders. A mapping whose folders
    # cannot be made fails alone; the others go on.
    ops = Ops(token)
    if plan.stale:
        log.info("removing %d temporary folder(s) left by an earlier cut run", len(plan.stale))
    ops.rm(plan.stale)
    owners: list[MappingPlan | None] = [None] * len(ops.names)
    for mapping_plan in plan.mappings:
        ops.mkparent(mapping_plan.mkparent)
        ops.mkdir(mapping_plan.staging_dirs(token))
        owners += [mapping_plan] * (len(ops.names) - len(owners))
    stream.send(ops.take())
    markers = Markers(stream, token)
    broken: dict[int, str] = {}
    for owner in owners:
        before, op, status = markers.next()
        if not status:
            continue
        if owner is None:
            log.error("could not remove leftovers of an earlier run: %s", _message(before))
        elif id(owner) not in broken:
            broken[id(owner)] = _prep_reason(_message(before), staging)
            log.error("%s: %s", owner.mapping.dest, broken[id(owner)])
            _fail_records(owner, broken[id(owner)])
    live = [p for p in plan.mappings if id(p) not in broken]
    sends = [s for p in live for s in p.sends]
    links = [s for p in live for s in p.links]
    new_dirs = [d for p in live for d in p.new_dirs]

    # 2. Transfer into the staging folders.
    failed: dict[int, str] = {}
    planned = getattr(options.progress, "planned", None)
    if planned:
        planned(label, len(sends), sum(s.local.size for s in sends))
    #: staging hosts whose transfer went wrong: commit only what is known good
    careful: set[str] = set()
    # Through sudo, files are received by root's scp: SFTP would write as the
    # login user.
    # After a sink stopped early, a script only swallows what is left of
    # its input (never taking it for operations): the rest, and the commit,
    # go on a new channel; the old ones are closed at the end.
    swallowing: list[Stream] = []
    try:
        if (sends or new_dirs) and (options.protocol != "sftp" or target.sudo):
            pending, done = scp_groups(sends, new_dirs), [0, 0]
            while pending:
                stopped, pending = _send_by_scp(stream, markers, token, pending, failed, careful, options, label,
                                                done, trees)
                if stopped:
                    swallowing.append(stream)
                    stream = _open_script(target, token, "ops", mappings)
                    markers = Markers(stream, token)
        elif sends or new_dirs:
            _send_sftp(target.c, sends, new_dirs, failed, options, label)
        for send in sends:
            if id(send) in failed:
                failed[id(send)] = _staging_free(failed[id(send)], send, staging)
        try:
            _commit(stream, markers, plan, live, sends, links, failed, label, careful)
        except RemoteError as exc:
            exc.transient = False  # some files may be in place already: no blind retry
            raise
    finally:
        for old in swallowing:
            old.chan.close()


def _staging_free(reason: str, send: Send, staging: str) -> str:
    """scp names the temporary path in its messages; name the real one."""
    temporary = posixpath.join(send.stage, send.name)
    if temporary in reason:
        reason = reason.replace(temporary, send.result.path)
    return reason.removeprefix("scp: ")


Groups = dict  # existing remote folder -> (its sends, its new folders)


def scp_groups(sends: list[Send], new_dirs: list[NewDir]) -> Groups:
    groups: Groups = {}
    for send in sends:
        groups.setdefault(send.host, ([], []))[0].append(send)
    for new_dir in new_dirs:
        groups.setdefault(new_dir.host, ([], []))[1].append(new_dir)
    return groups


def _send_by_scp(stream: Stream, markers: Markers, token: str, groups: Groups, failed: dict[int, str],
                 careful: set[str], options: SyncOptions, label: str, done: list[int],
                 trees: LocalTrees | None = None) -> tuple[bool, Groups]:
    """One SCP sink per staging folder, all streams sent back to back.

    Returns (stopped, groups still to send). ``stopped``: a sink ended before
    its stream did, so the script now only swallows its input; what is left
    goes on a new channel.
    """
    log = get_logger(label)
    staging = staging_name(token)
    streams = []
    ops = Ops(token)
    for host, (host_sends, host_dirs) in groups.items():
        root = posixpath.join(host, staging)
        scp = ScpStream(token, host_sends)
        records, length = scp_records(scp, host_dirs, root)
        ops.scp(root, length)
        if not stream.send(ops.take()):
            raise RemoteError(stream.failure("the connection stalled or closed while sending"), host=label,
                              transient=True)
        send_scp(stream, scp, records, options.progress, label, done, trees)
        streams.append((host, scp))
    for index, (host, scp) in enumerate(streams):
        read_scp_answers(stream, scp)
        _, _, statuses = markers.next_all()
        status, stopped = (statuses + [1, 1])[:2]  # scp's status, head's
        reason = scp.broken or stream.failure(f"the transfer into {host} stopped (scp status {status})")
        if status or stopped or scp.broken:
            log.error("scp into %s failed (status %d): %s", host, status, reason)
            careful.add(host)
        failed.update(scp.failed)
        acked = scp.acked()
        for send in scp.sends:
            if id(send) not in acked:
                failed.setdefault(id(send), reason)
        if stopped:
            return True, {h: groups[h] for h, _ in streams[index + 1:]}
    sent = dict(streams)
    for host, (host_sends, _) in groups.items():
        if host not in sent:
            careful.add(host)
            for send in host_sends:
                failed.setdefault(id(send), "not sent: the connection closed")
    return False, {}


def _send_sftp(c, sends: list[Send], new_dirs: list[NewDir], failed: dict[int, str], options: SyncOptions,
               label: str) -> None:
    """The SFTP alternative to the SCP stream: same staging folders, same commit."""
    try:
        sftp = c.transport.open_sftp_client()
        sftp.get_channel().settimeout(options.io_timeout)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        for send in sends:
            failed[id(send)] = f"the server offers no SFTP ({exc}): set protocol = scp"
        return
    done_files = done_bytes = 0
    with sftp:
        for new_dir in sorted(new_dirs, key=lambda d: _components(d.stage)):
            try:
                # As the SCP sink builds them: writable now, final mode after the move.
                sftp.mkdir(new_dir.stage, 0o700)
                sftp.chmod(new_dir.stage, (new_dir.mode & 0o7777) | 0o700)
            except (OSError, paramiko.SSHException) as exc:
                raise RemoteError(f"sftp: cannot create {new_dir.stage}: {exc}", host=label) from None
        for send in sends:
            path = posixpath.join(send.stage, send.name)
            entry = send.local
            try:
                sftp.put(entry.path, path, confirm=True)
                sftp.chmod(path, send.mode & 0o7777)
                sftp.utime(path, (entry.atime_ns / 1e9, entry.mtime_ns / 1e9))
            except (OSError, paramiko.SSHException) as exc:
                failed[id(send)] = f"sftp: {exc}"
            done_files += 1
            done_bytes += entry.size
            if options.progress:
                options.progress(label, done_files, done_bytes)



def _commit(stream: Stream, markers: Markers, plan: HostPlan, live: list[MappingPlan], sends: list[Send],
            links: list[Send], failed: dict[int, str], label: str, careful: set[str] = frozenset()) -> None:
    """Make links, move what arrived into place, delete, remove the staging
    folders, then chmod, chown and touch.

    A staging folder is moved in whole (a glob per folder), unless its
    transfer went wrong (``careful``): then only the files known to have
    arrived whole, by name, and none of the new folders it was building.
    Deletions and clean-up come before the chmods, which may take away our
    own write permission on a folder.
    """
    log = get_logger(label)
    ops = Ops(plan.token)
    staging = staging_name(plan.token)
    for mapping_plan in live:
        lost = {d.path for d in mapping_plan.new_dirs if d.host in careful}
        for send in mapping_plan.sends + mapping_plan.links:
            if send.host in careful and send.stage != posixpath.join(send.host, staging):
                failed.setdefault(id(send), f"its new folder could not be completed in {send.host}")
        for record in mapping_plan.result.files:
            if record.action == "mkdir" and record.path.rstrip("/") in lost:
                record.action, record.reason = "fail", "the transfer into its parent folder failed"
    new_dirs = [d for p in live for d in p.new_dirs if d.host not in careful]
    #: per op, in order: how to read its outcome
    meaning: list[tuple] = []

    def add(kind: str, *about) -> None:
        meaning.extend([(kind, *about)] * (len(ops.names) - len(meaning)))

    for link in links:
        ops.ln(link.local.link, posixpath.join(link.stage, link.name))
        add("ln", link)
    # A staging folder must hold only what arrived whole: drop the rest.
    ops.rm([posixpath.join(s.stage, s.name) for s in sends if id(s) in failed])
    add("tidy")
    # A file where a folder now goes (or the other way round) is removed
    # only now, and only if its replacement arrived.
    arrived = {s.result.path for s in sends + links if id(s) not in failed and s.host not in careful}
    arrived |= {d.path for d in new_dirs}
    ops.rm([r for p in live for r in p.removes if r in arrived])
    add("tidy")
    moving = [s for s in sends if id(s) not in failed] + links
    # Owner and group before the move, so files appear with them.
    for mapping_plan in live:
        spec = chown_spec(mapping_plan.mapping)
        if spec:
            ops.chown(spec, [posixpath.join(s.stage, s.name) for s in mapping_plan.sends + mapping_plan.links
                             if id(s) not in failed and s in moving]
                      + [d.stage for d in mapping_plan.new_dirs if d.host not in careful])
            add("chown", mapping_plan, ("chown", "send", "link", "mkdir"))
    # How many names each staging folder holds directly (files inside a new
    # folder travel with it).
    children: dict[str, int] = {}
    for host, parent in [(s.host, s.stage) for s in moving] + [(d.host, posixpath.dirname(d.stage))
                                                                for d in new_dirs]:
        if parent == posixpath.join(host, staging):
            children[host] = children.get(host, 0) + 1
    for host in dict.fromkeys(h for p in live for h in p.hosts):
        group = [s for s in moving if s.host == host]
        if host in careful:
            direct = [s.name for s in group if s.stage == posixpath.join(host, staging)]
            ops.mvnames(host, direct)
        else:
            ops.mv(host, children.get(host, 0))
        add("mv", host, group, [d for d in new_dirs if d.host == host])
    for mapping_plan in live:
        ops.rm(mapping_plan.deletes)
        add("rules", mapping_plan, ("delete",))
    ops.rm(plan.staging_dirs())
    add("cleanup")
    for mapping_plan in live:
        by_mode: dict[int, list[str]] = {}
        for mode, path in mapping_plan.chmods:
            by_mode.setdefault(mode, []).append(path)
        for new_dir in mapping_plan.new_dirs:
            if new_dir.host not in careful and new_dir.mode & 0o700 != 0o700:  # built writable
                by_mode.setdefault(new_dir.mode & 0o7777, []).append(new_dir.path)
        # Deepest first, so a folder made read-only is chmodded after its contents.
        for mode, paths in sorted(by_mode.items()):
            ops.chmod(mode, sorted(paths, key=lambda p: -p.count("/")))
        add("rules", mapping_plan, ("chmod",))
        spec = chown_spec(mapping_plan.mapping)
        if spec:
            ops.chown(spec, mapping_plan.chowns)
            add("rules", mapping_plan, ("chown",))
        by_stamp: dict[str, list[str]] = {}
        for stamp, path in mapping_plan.touches:
            by_stamp.setdefault(stamp, []).append(path)
        for stamp, paths in sorted(by_stamp.items()):
            ops.touch(stamp, paths)
        add("rules", mapping_plan, ("touch",))
    ops.quit()
    add("quit")
    if not stream.send(ops.take()):
        raise RemoteError(stream.failure("the connection closed before the commit"), host=label)

    for about in meaning:
        before, op, status = markers.next()
        if not status or op == "q":
            continue
        message = _message(before)
        kind = about[0]
        if kind == "ln":
            failed[id(about[1])] = f"cannot create the link: {message}"
        elif kind == "mv":
            folder, group, host_dirs = about[1:]
            named = [s for s in group if s.name in message]
            for send in named or group:  # unnamed: we cannot tell which
                failed.setdefault(id(send), f"cannot move into {folder}: {message}")
            lost = {d.path + "/" for d in host_dirs if d.path.rsplit("/", 1)[-1] in message or not named}
            for mapping_plan in live:
                for record in mapping_plan.result.files:
                    if record.action == "mkdir" and record.path in lost:
                        record.action, record.reason = "fail", f"cannot move into {folder}: {message}"
        elif kind in ("chown", "rules"):
            mapping_plan, actions = about[1:]
            problem = f"{op} failed: {message or 'status ' + str(status)}"
            log.error("%s: %s", mapping_plan.mapping.dest, problem)
            if kind == "chown":  # staged files went in without the owner asked for
                for item in mapping_plan.sends + mapping_plan.links:
                    failed.setdefault(id(item), problem)
            _fail_records(mapping_plan, problem, actions)
        elif kind == "cleanup":
            log.warning("could not remove the temporary folders: %s", message)
        else:
            log.warning("could not tidy the staging folders: %s", message)

    for send in sends + links:
        if id(send) in failed:
            send.result.action = "fail"
            send.result.reason = failed[id(send)]
            log.error("%s: %s", send.result.path, send.result.reason)
    stream.chan.close()


def sync_connection(c, mappings: list[Mapping], options: SyncOptions | None = None, label: str | None = None,
                    trees: LocalTrees | None = None, sudo_password: str | None = None) -> HostResult:
    """Sync ``mappings`` to the host of an OPEN connection ``c``.

    Mappings with ``sudo`` run through ``sudo -S`` (one remote command for
    them, one for the rest), with ``sudo_password`` if sudo asks for one.
    ``trees`` shares local walks between hosts of one run.
    """
    options = options or SyncOptions()
    label = label or c.original_host
    result = HostResult(host=label, dry_run=options.dry_run)
    started = time.monotonic()
    by_mapping: dict[int, MappingResult] = {}
    try:
        for sudo in (False, True):
            group = [m for m in mappings if m.sudo == sudo]
            if group:
                target = Target(c, label, sudo, sudo_password if sudo else None, options.io_timeout)
                for mapping, mapping_result in zip(group, sync_host_plan(target, group, options, trees)):
                    by_mapping[id(mapping)] = mapping_result
    finally:
        result.mappings = [by_mapping[id(m)] for m in mappings if id(m) in by_mapping]
        result.seconds = time.monotonic() - started
    return result
