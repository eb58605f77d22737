"""The shell backend: one POSIX ``sh`` script per host carries the plan out.

The script (``remote.sh``, next to this file) is started once per host (one
login, one round trip) and:

1. lists the remote state of every dest (GNU ``find -printf`` where the host
   has it, else ``find -exec stat -c`` (BusyBox), else ``stat -f`` (BSD)),
   NUL-separated, with SHA-256 sums when the compare mode is checksum;
2. reads operations from its standard input, each tagged with the run's
   token: make staging folders (exclusively), receive files with ``scp -t``
   into an entered staging folder, move them by name into place, remove,
   chmod, chown, touch, quit. After each operation it prints a marker line
   ``@@<token>@@ <op> <status>``, preceded by the operation's error messages.

Every folder is entered with ``cd -P`` and checked (``$PWD`` is physical), so
no operation, run as root or not, follows a symlink below the dest that
someone could have swapped in. The run's token reaches the script on its
stdin, never on a command line. Sudo gets its password only when it asks,
at a prompt of our own; with no password to give, ``sudo -n``.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import shlex
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import paramiko

from ..channel import Stream, marker
from ..constants import STAGING_PREFIX
from ..errors import Interrupted, RemoteError
from ..inputs import Mapping
from ..listing import Listing, parse_listing, staging_name
from ..logger import get_logger
from ..options import STALL_TIMEOUT, SyncOptions
from ..local import LocalTrees
from ..plan import HostPlan, MappingPlan, NewDir, Send, chown_spec
from ..scpwire import ScpStream, read_scp_answers, scp_records, send_scp

def _compact(script: str) -> str:
    """The script without comments and indentation: Dropbear takes commands
    of at most 9000 bytes. (No line of a quoted string starts with "#".)"""
    lines = (line.strip() for line in script.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("#"))


SCRIPT = _compact(Path(__file__).with_name("remote.sh").read_text().replace("__STAGING__", STAGING_PREFIX))
#: The SCP sink in perl (hosts with perl): sent on stdin with each stream.
PERL_SINK = Path(__file__).with_name("sink.pl").read_bytes()
#: Renames, mkdirs and removals in perl (hosts with perl): sent with each batch.
PERL_OPS = Path(__file__).with_name("ops.pl").read_bytes()
#: --checksum's hasher for hosts with python3, sent on stdin ahead of the
#: dests (an empty line ends it: it has none).
HASHER = b"".join(line for line in Path(__file__).with_name("hasher.py").read_bytes().splitlines(True)
                  if line.strip() and not line.lstrip().startswith(b"#"))

#: What sudo says when it will not run the script.
SUDO_REFUSALS = ("try again", "incorrect password", "not in the sudoers", "not allowed to execute",
                 "a password is required", "no tty present", "a terminal is required")
#: Bytes of error output kept at most before one marker.
MAX_OP_OUTPUT = 16 << 20
#: Up to this many bytes of files, the streams follow the staging folders'
#: ops at once, before their answers: a round trip less (2,000 x 4 KiB
#: through a 20 ms round trip: 0.875 -> 0.824 s, medians of 3 runs). If a
#: folder could not be made, the script refuses them and they go again;
#: bigger transfers wait for the answers rather than risk sending twice.
PIPELINE_MAX = 16 << 20


class NoShell(RemoteError):
    """The account did not run our shell command (SFTP-only, scp-only, a
    restricted shell): ``said`` is what it answered instead."""

    def __init__(self, message: str, said: str, *, host: str | None = None):
        super().__init__(message, host=host)
        self.said = said


def command(mode: str, sudo: str | None = None) -> str:
    """The remote command that starts the script.

    ``mode``: ``list`` or ``checksum`` (list, then take ops) or ``ops``;
    ``sudo``: None (no sudo), "" (``sudo -n``: no password to give) or the
    prompt sudo must print when it wants the password.
    """
    if sudo is None:
        prefix = "exec sh -c "
    elif sudo == "":
        prefix = "exec sudo -n -- sh -c "
    else:
        prefix = f"exec sudo -S -p {shlex.quote(sudo)} -- sh -c "
    return prefix + shlex.quote(SCRIPT) + " sh " + shlex.quote(mode)


def locate(folder: str, anchor: str) -> tuple[str, str]:
    """(top, dir) for a remote ``folder`` of a mapping whose dest is ``anchor``.

    The script enters ``top`` as given (the dest, or a folder at or above it:
    the user named it) and ``dir`` below it without following any symlink.
    """
    anchor = anchor.rstrip("/") or "/"
    if folder == anchor:
        return folder, ""
    prefix = anchor if anchor == "/" else anchor + "/"
    if folder.startswith(prefix):
        return anchor, folder[len(prefix):]
    return folder, ""


class Ops:
    """Builds the operation stream; every op line carries the run token."""

    def __init__(self, token: str):
        self.token = token
        self.parts: list[bytes] = []
        self.names: list[str] = []  #: op names, in order, to match the markers

    def _op(self, name: str, *lines: str) -> None:
        if any("\n" in line for line in lines):
            # Planning refuses such names; this is the last guard.
            raise ValueError(f"a {name} operation got a name with a newline")
        self.names.append(name)
        self.parts.append(f"@@{self.token}@@ {name}\n".encode())
        for line in lines:
            self.parts.append(line.encode("utf-8", "surrogateescape") + b"\n")

    def _names(self, name: str, head: list[str], names: list[str]) -> None:
        if names:
            self._op(name, *head, *names, "")

    def rm(self, where: tuple[str, str], names: list[str], staged: bool = False) -> None:
        """Remove ``names`` of folder ``where`` (top, dir), or of its staging folder."""
        self._names("rm", ["stage" if staged else "here", *where], names)

    def mkparent(self, paths: list[str]) -> None:
        self._names("mkparent", [], paths)

    def mkstage(self, where: tuple[str, str]) -> None:
        self._op("mkstage", *where)

    def ln(self, where: tuple[str, str], target: str, path: str) -> None:
        """A link at ``path`` (relative to the staging folder of ``where``)."""
        self._op("ln", target, path, *where)

    def mkdirs(self, where: tuple[str, str], names: list[str]) -> None:
        """mkdir (no -p: an existing name fails) ``names``, relative to ``where``."""
        self._names("mkdirs", list(where), names)

    def scp(self, where: tuple[str, str], size: int, staged: bool = True, sink: bytes = b"") -> None:
        """Run the SCP sink on the next ``size`` bytes, in ``where`` (or its
        staging folder): ``scp -t``, or the perl ``sink`` whose code is sent first."""
        self._op("scp", "stage" if staged else "here", *where, str(size), str(len(sink)))
        if sink:
            self.parts.append(sink)

    def perl(self, what: str, where: tuple[str, str], names: list[str]) -> None:
        """In one perl process that reads exactly their bytes (the shell's
        ``read`` would take them a byte at a time), relative to ``where``:
        ``mv`` renames each (staged, final) pair of ``names``, ``mkdir``
        makes each name (an existing one fails), ``rm`` removes each (-rf)."""
        if not names:
            return
        payload = b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)
        self._op("perl", what, *where, str(len(payload)), str(len(PERL_OPS)))
        self.parts.append(PERL_OPS)
        self.parts.append(payload)

    def mv(self, where: tuple[str, str], names: list[str]) -> None:
        """Move ``names`` from the staging folder of ``where`` into it."""
        self._names("mv", list(where), names)

    def chmod(self, mode: int, where: tuple[str, str], names: list[str]) -> None:
        self._names("chmod", [f"{mode:04o}", *where], names)

    def chown(self, spec: str, where: tuple[str, str], names: list[str], staged: bool = False) -> None:
        """``spec``: owner, owner:group or :group."""
        self._names("chown", [spec, "stage" if staged else "here", *where], names)

    def touch(self, stamp: str, where: tuple[str, str], names: list[str]) -> None:
        self._names("touch", [stamp, *where], names)

    def quit(self) -> None:
        self._op("q")

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts = []
        return data


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
        before = self.stream.read_until(self.prefix, limit=MAX_OP_OUTPUT)[: -len(self.prefix)]
        line = self.stream.read_until(b"\n", limit=256)[:-1].decode("ascii", "replace")
        op, _, statuses = line.partition(" ")
        try:
            return before, op, [int(x) for x in statuses.split()]
        except ValueError:
            raise RemoteError(f"unexpected answer from the remote script: {line[:80]!r}",
                              host=self.stream.label) from None


@dataclass
class Target:
    """Where one script runs: a connection, as the login user or through sudo."""

    c: object  #: an open Fabric Connection or SshConnection
    label: str
    sudo: bool = False
    password: str | None = field(default=None, repr=False)  #: sudo's password, if it asks
    timeout: float = STALL_TIMEOUT


def open_script(target: Target, mode: str, mappings: list[Mapping], token: str | None = None) -> Stream:
    """Start the script; hand it its token (``token`` in ops mode, else a
    fresh random part it completes). Raises NoShell if the account did not
    run it."""
    prompt = None
    if target.sudo:
        prompt = f"[synctasks sudo {secrets.token_hex(6)}] " if target.password else ""
    try:
        chan = target.c.transport.open_session(timeout=target.timeout)
        chan.exec_command(command(mode, prompt))
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise RemoteError(f"cannot start the remote command: {exc}", host=target.label, transient=True) from None
    stream = Stream(chan, target.label, target.timeout)
    line = (token or secrets.token_hex(8)).encode() + b"\n"
    if mode == "checksum":
        line += HASHER + b"\n"
    if mode != "ops":
        # The dests, one per line (input validation refuses newlines in them).
        line += b"".join(_dest_line(m).encode("utf-8", "surrogateescape") + b"\n" for m in mappings) + b"\n"
    if target.sudo:
        _through_sudo(stream, prompt, target.password)
    else:
        # At once: an account that runs no shell (an SFTP server forced on
        # exec) takes this for a bad packet and ends, rather than stalling.
        stream.send(line)
    _first_answer(stream)
    if target.sudo:
        stream.send(line)
    return stream


def _dest_line(mapping: Mapping) -> str:
    """``d:DEST`` / ``f:DEST``; upper case when the mapping names an owner or
    group, so the listing carries names as well as ids (names cost GNU find
    a lookup per entry)."""
    kind = "d" if mapping.is_dir else "f"
    return (kind.upper() if mapping.owner or mapping.group else kind) + ":" + mapping.dest


def _first_answer(stream: Stream) -> None:
    """Wait for the script's ``I`` record; anything else means the account
    does not run our command, and what it said is the message."""
    deadline = time.monotonic() + stream.timeout
    while len(stream.buf) < 2 and not stream.eof:
        if time.monotonic() > deadline:
            # Not a network fault: retrying would stall again.
            raise NoShell(f"no answer from the remote shell for {stream.timeout:.0f}s (an account that runs "
                          "no commands? set protocol = sftp)", "", host=stream.label)
        stream.pump(block=True)
    if bytes(stream.buf[:2]) == b"I\0":
        del stream.buf[:2]
        return
    said = (bytes(stream.buf[:2000]).decode("utf-8", "replace") + "\n" + stream.stderr_text()).strip()
    said = " ".join(l.strip() for l in said.splitlines() if l.strip() and l.isprintable())
    raise NoShell(f"the account did not run the shell command{': ' + said if said else ''}", said,
                  host=stream.label)


def _through_sudo(stream: Stream, prompt: str | None, password: str | None) -> None:
    """Answer sudo's own prompt (only then is the password sent), or fail at
    once with what sudo said."""
    deadline = time.monotonic() + stream.timeout
    answered = False
    while True:
        stream._take_stderr()
        said = stream.err.decode("utf-8", "replace")
        if answered and said.count(prompt) > 1:  # asked again: the password was wrong
            raise RemoteError("sudo refused the password: check the sudo password (passkey or "
                              "sudo_passkey_env)", host=stream.label)
        if prompt and prompt in said and not answered:
            stream.send(password.encode() + b"\n")
            answered = True
            continue
        lowered = said.lower()
        if "a password is required" in lowered and not prompt:
            raise RemoteError("sudo wants a password and none was given: set sudo_passkey_env (or log in "
                              "with a password), or allow NOPASSWD for this user", host=stream.label)
        if any(refusal in lowered for refusal in SUDO_REFUSALS):
            last = [l for l in said.replace(prompt or "\0", "").splitlines() if l.strip()][-1:] or [said]
            raise RemoteError(f"sudo refused: {last[0].strip()}; check the user's sudo rights and the sudo "
                              "password (passkey or sudo_passkey_env)", host=stream.label)
        if stream.chan.recv_ready() or stream.chan.exit_status_ready():
            return
        if time.monotonic() > deadline:
            if not said.strip():
                # Not even sudo answered: an account that runs no command
                # (an SFTP server forced on every exec waits for packets).
                raise NoShell(f"no answer from sudo for {stream.timeout:.0f}s", "", host=stream.label)
            raise RemoteError(f"no answer from sudo for {stream.timeout:.0f}s", host=stream.label)
        time.sleep(0.005)


def read_listing(stream: Stream, on_home=None) -> Listing:
    """The listing; ``on_home(home)`` runs as soon as the remote home is
    known, before the (maybe long) listing is read: it may raise to stop."""
    first = stream.read_until(b"\0", limit=4096)  # T<token>: the run's token as the script made it
    if not first.startswith(b"T") or not re.fullmatch(rb"T[A-Za-z0-9._-]+-\d+-[0-9a-f]{16}\0", first):
        raise RemoteError(stream.failure(f"unexpected answer from the remote shell: {first[:80]!r}"),
                          host=stream.label)
    token = first[1:-1]
    home = stream.read_until(b"\0", limit=1 << 16)  # H<home>
    if on_home is not None and home.startswith(b"H"):
        try:
            on_home(home[1:-1].decode("utf-8", "surrogateescape"))
        except BaseException:
            stream.chan.close()
            raise
    return parse_listing(first + home + stream.read_until(b"Z" + token + b"\0", limit=1 << 30))


def list_host(target: Target, mappings: list[Mapping], options: SyncOptions, on_home=None
              ) -> tuple[Stream, Listing]:
    """Start the script and read the listing of every dest."""
    mode = "checksum" if options.compare == "checksum" else "list"
    stream = open_script(target, mode, mappings)
    if mode == "checksum":
        # sha256sum answers in blocks: big files can keep it quiet for long.
        stream.chan.settimeout(stream.timeout * 10)
    listing = read_listing(stream, on_home)
    stream.chan.settimeout(stream.timeout)
    return stream, listing


def finish_without_changes(stream: Stream, token: str) -> None:
    ops = Ops(token)
    ops.quit()
    stream.send(ops.take())
    stream.chan.close()


# --------------------------------------------------------------------------
# Carrying a plan out
# --------------------------------------------------------------------------
def _message(before: bytes) -> str:
    """An operation's error output, as one line."""
    lines = [l.strip() for l in before.decode("utf-8", "replace").splitlines() if l.strip()]
    return "; ".join(dict.fromkeys(lines))


def _prep_reason(message: str, base: str) -> str:
    """Say which remote folder could not be written, not which temporary one.
    ``base``: the folder whose staging folder was being made ("" for mkdir -p)."""
    match = re.search(r"can(?:no|')t create directory '?([^']*?)'?: ([^;]*)", message)
    if not match:
        return f"cannot create the remote folders: {message or 'mkdir failed'}"
    path, why = match.groups()
    if base:
        inner = posixpath.dirname(path.rstrip("/"))
        folder = posixpath.normpath(posixpath.join(base, inner)) if inner and not path.startswith("/") else base
        return f"cannot write into {folder}: {why}"
    return f"cannot create folder {path}: {why}"


def touch_stamp(seconds: int) -> str:
    """``touch -t`` form (UTC, the script sets TZ) of a modification time."""
    return time.strftime("%Y%m%d%H%M.%S", time.gmtime(seconds))


def _below(path: str, folder: str) -> str:
    """``path`` relative to ``folder``, which holds it (posixpath.relpath
    without its cost: both are clean absolute paths)."""
    if folder == "/":
        return path[1:]
    return path[len(folder) + 1:] if path.startswith(folder + "/") else posixpath.relpath(path, folder)


def _by_folder(paths, anchor: str) -> dict[tuple[str, str], list[str]]:
    """Group remote paths as {(top, dir): [names]}."""
    groups: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        folder, name = posixpath.split(path)
        groups.setdefault(locate(folder or "/", anchor), []).append(name)
    return groups


class ShellRun:
    """One host's plan carried out through the script (prepare, send, commit)."""

    def __init__(self, target: Target, stream: Stream, plan: HostPlan, mappings: list[Mapping],
                 options: SyncOptions, trees: LocalTrees | None, perl: bool = False):
        self.target, self.stream, self.plan, self.mappings = target, stream, plan, mappings
        self.options, self.trees = options, trees
        #: As root, every folder is entered on its own and nothing is reached
        #: by a path below the dest (a link swapped in is never followed):
        #: one sink and one move per folder. As the login user, one sink per
        #: mapping walks into the folders, and one perl renames the lot.
        self.secure = target.sudo
        self.perl = perl and not self.secure
        self.sink = PERL_SINK if perl else b""
        self.label = target.label
        self.log = get_logger(self.label)
        self.token = plan.token
        self.staging = staging_name(plan.token)
        self.markers = Markers(stream, self.token)
        #: the mappings whose folders could be made (all, until prepare's answers say otherwise)
        self.live: list[MappingPlan] = plan.mappings
        #: the commit's ops as :meth:`commit_ops` makes them, made while the sinks wrote
        self.ahead: tuple[bytes, list[tuple]] | None = None
        #: prepare's ops, whose answers are still to be read (see :meth:`prepared`)
        self._owners: list[tuple[MappingPlan | None, str]] | None = None
        #: existing remote folder -> the dest of the mapping it belongs to
        self.anchor: dict[str, str] = {}
        #: existing remote folder -> the folder its SCP stream starts from
        self.root: dict[str, str] = {}
        for mapping_plan in plan.mappings:
            bases = mapping_plan.bases
            common = posixpath.commonpath(bases) if bases else ""
            for base in bases:
                self.anchor.setdefault(base, mapping_plan.mapping.dest)
                self.root.setdefault(base, base if self.secure else common)

    def where(self, base: str) -> tuple[str, str]:
        return locate(base, self.anchor.get(base, base))

    def group(self, paths, anchor: str) -> dict[tuple[str, str], list[str]]:
        """Paths as {(top, dir): names} for one op each: per folder as root;
        otherwise paths below the dest share one op (names with slashes)."""
        if self.secure:
            return _by_folder(paths, anchor)
        groups: dict[tuple[str, str], list[str]] = {}
        prefix = anchor.rstrip("/") + "/"
        for path in paths:
            if path.startswith(prefix):
                groups.setdefault(locate(anchor, anchor), []).append(path[len(prefix):])
            else:
                folder, name = posixpath.split(path)
                groups.setdefault(locate(folder or "/", anchor), []).append(name)
        return groups

    def stage_root(self, base: str) -> str:
        return posixpath.join(base, self.staging)

    def staged(self, item) -> str:
        """Path of a Send or NewDir relative to its staging folder."""
        path = posixpath.join(item.stage, item.name) if isinstance(item, Send) else item.stage
        return _below(path, self.stage_root(item.base))

    def check_cancel(self) -> None:
        if self.options.cancelled:
            self.stream.chan.close()  # the script stops; staging is a leftover for the next run
            raise Interrupted("stopped: files in flight were abandoned (never committed)", host=self.label)

    # -- 1. prepare -----------------------------------------------------
    def prepare(self) -> None:
        """Send the ops that clear leftovers of cut runs and make missing
        parents and this run's staging folders; :meth:`prepared` reads how
        they went."""
        ops = Ops(self.token)
        if self.plan.stale:
            self.log.info("removing %d temporary folder(s) left by an earlier cut run", len(self.plan.stale))
        leftovers: dict[str, list[str]] = {}
        for path in self.plan.stale:
            folder, name = posixpath.split(path)
            leftovers.setdefault(folder or "/", []).append(name)
        for folder, names in leftovers.items():
            ops.rm((folder, ""), names)
        owners: list[tuple[MappingPlan | None, str]] = [(None, "")] * len(ops.names)
        made: set[str] = set()
        for mapping_plan in self.plan.mappings:
            if mapping_plan.mkparent:
                ops.mkparent(mapping_plan.mkparent)
                owners.append((mapping_plan, ""))
            if self.secure:
                for base in mapping_plan.bases:
                    if base not in made:
                        made.add(base)
                        ops.mkstage(self.where(base))
                        owners.append((mapping_plan, base))
                continue
            per_root: dict[str, list[str]] = {}
            for base in mapping_plan.bases:
                if base not in made:
                    made.add(base)
                    root = self.root[base]
                    per_root.setdefault(root, []).append(_below(self.stage_root(base), root))
            for root, names in per_root.items():
                if self.perl:
                    ops.perl("mkdir", self.where(root), names)
                else:
                    ops.mkdirs(self.where(root), names)
                owners.append((mapping_plan, root))
        self.send_ops(ops)
        self._owners = owners

    def prepared(self) -> bool:
        """Read prepare's answers (once); a mapping whose folders cannot be
        made fails alone, and leaves :attr:`live`. False then: the script
        refuses every later stream (see remote.sh's ``mark``)."""
        owners, self._owners = self._owners or [], None
        broken: dict[int, str] = {}
        for owner, base in owners:
            before, op, status = self.markers.next()
            if not status:
                continue
            if owner is None:
                self.log.error("could not remove leftovers of an earlier run: %s", _message(before))
            elif id(owner) not in broken:
                broken[id(owner)] = _prep_reason(_message(before), base)
                self.log.error("%s: %s", owner.mapping.dest, broken[id(owner)])
                owner.fail(broken[id(owner)])
        if broken:
            self.live = [p for p in self.live if id(p) not in broken]
        return not broken

    def reopen(self) -> Stream:
        """Go on in a new script (the old channel's is swallowing or
        refusing); returns the old channel's stream, to close at the end."""
        old = self.stream
        self.stream = open_script(self.target, "ops", self.mappings, self.token)
        self.markers = Markers(self.stream, self.token)
        return old

    def send_ops(self, ops: Ops) -> None:
        if not self.stream.send(ops.take()):
            raise RemoteError(self.stream.failure("the connection stalled or closed while sending"),
                              host=self.label, transient=True)

    # -- 2. transfer ----------------------------------------------------
    def transfer(self, failed: dict[int, str], careful: set[str]) -> list[Stream]:
        """The files and new folders of the live mappings: one SCP sink per
        staging folder, streams sent back to back (no wait per file). After
        a sink stopped early, the script only swallows what is left of its
        input: the rest goes on a new channel. Returns the channels to close
        at the end."""
        sends, new_dirs = self.items()
        if not sends and not new_dirs:
            return []
        size = sum(s.local.size for s in sends)
        swallowing: list[Stream] = []
        if size > PIPELINE_MAX and not self.prepared():
            swallowing.append(self.reopen())
            sends, new_dirs = self.items()
        planned = getattr(self.options.progress, "planned", None)
        if planned:
            planned(self.label, len(sends), size)
        groups = self.groups_of(sends, new_dirs)
        done = [0, 0]
        while groups:
            stopped, groups = self._send_groups(groups, failed, careful, done)
            if stopped:
                swallowing.append(self.reopen())
            if groups is None:  # refused: a mapping's folders could not be made
                done[:] = [0, 0]
                groups = self.groups_of(*self.items())
        return swallowing

    def items(self) -> tuple[list[Send], list[NewDir]]:
        """The files and the new folders of the live mappings."""
        return _joined([p.sends for p in self.live]), _joined([p.new_dirs for p in self.live])

    def moves(self) -> tuple[list[Send], list[Send]]:
        """The files and the links of the live mappings: what the commit moves."""
        return _joined([p.sends for p in self.live]), _joined([p.links for p in self.live])

    def groups_of(self, sends: list[Send], new_dirs: list[NewDir]) -> dict[str, tuple[list[Send], list[NewDir]]]:
        """The files and new folders of each SCP stream, by the folder it starts from."""
        groups: dict[str, tuple[list[Send], list[NewDir]]] = {}
        roots = {self.root[base] for base in {s.base for s in sends} | {d.base for d in new_dirs}}
        if len(roots) == 1:  # one stream: its files are the list itself (a copy is 8 B per file per host)
            groups[roots.pop()] = (sends, new_dirs)
        else:
            for send in sends:
                groups.setdefault(self.root[send.base], ([], []))[0].append(send)
            for new_dir in new_dirs:
                groups.setdefault(self.root[new_dir.base], ([], []))[1].append(new_dir)
        return groups

    def _send_groups(self, groups, failed, careful, done):
        streams = []
        ops = Ops(self.token)
        for base, (base_sends, base_dirs) in groups.items():
            self.check_cancel()
            scp = ScpStream(self.token, base_sends)
            # (the perl sink takes its stream in frames, sent as made: no length)
            length = scp_records(scp, base_dirs, self.stage_root(base) if self.secure else base,
                                 measure=not self.sink)
            # The perl sink reads the stream in big blocks: on many small files
            # (scp -t reads each header a byte at a time), and on big ones
            # (GNU head feeding scp -t copies it once more; 512 MiB: 2.6-2.8 s
            # against 2.9-3.2 s).
            ops.scp(self.where(base), length, staged=self.secure, sink=self.sink)
            self.send_ops(ops)
            send_scp(self.stream, scp, self.options.progress, self.label, done, self.trees, cancel=self.check_cancel,
                     framed=bool(self.sink))
            streams.append((base, scp))
        if not self.prepared():
            return True, None  # the script refused these streams
        if self.ahead is None and not failed and not careful:
            # The sinks are still writing: make the commit meanwhile, as it
            # is when nothing fails (25 ms of client CPU for 2,000 files,
            # off the serial path where the host has cores of its own).
            # (prepare's answers are in: the live mappings are final)
            self.ahead = self.commit_ops(self.live, *self.moves(), {}, set())
        for index, (base, scp) in enumerate(streams):
            read_scp_answers(self.stream, scp)
            _, _, statuses = self.markers.next_all()
            status, stopped = (statuses + [1, 1])[:2]  # scp's status, head's
            reason = scp.broken or self.stream.failure(f"the transfer into {base} stopped (scp status {status})")
            if status or stopped or scp.broken:
                self.log.error("scp into %s failed (status %d): %s", base, status, reason)
                careful.update(item.base for item in scp.sends + groups[base][1])
            failed.update(scp.failed)
            for send in scp.unconfirmed():
                failed.setdefault(id(send), reason)
            if stopped:
                return True, {b: groups[b] for b, _ in streams[index + 1:]}
        return False, {}

    # -- 3. commit ------------------------------------------------------
    def commit(self, live: list[MappingPlan], sends: list[Send], links: list[Send], failed: dict[int, str],
               careful: set[str]) -> None:
        """Send the commit's ops (made while the sinks wrote, when nothing
        failed: see :meth:`_send_groups`) and read how each went."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and not failed and not careful:
            payload, meaning = ahead
        else:
            payload, meaning = self.commit_ops(live, sends, links, failed, careful)
        if not self.stream.send(payload):
            raise RemoteError(self.stream.failure("the connection closed before the commit"), host=self.label)
        self.read_commit(live, sends, links, failed, meaning)

    def commit_ops(self, live: list[MappingPlan], sends: list[Send], links: list[Send], failed: dict[int, str],
                   careful: set[str]) -> tuple[bytes, list[tuple]]:
        """The commit's ops, and how to read each one's outcome: make links,
        move what arrived into place by name, delete, remove the staging
        folders, then chmod, chown and touch.

        From a staging folder whose transfer went wrong (``careful``) only
        the files known to have arrived whole move, and none of the new
        folders it was building. Deletions and clean-up come before the
        chmods, which may take away our own write permission on a folder.
        """
        ops = Ops(self.token)
        for mapping_plan in live:
            lost = {d.path for d in mapping_plan.new_dirs if d.base in careful}
            for send in chain(mapping_plan.sends, mapping_plan.links):
                if send.base in careful and send.stage != self.stage_root(send.base):
                    failed.setdefault(id(send), f"its new folder could not be completed in {send.base}")
            for record in mapping_plan.result.files:
                if record.action == "mkdir" and record.path.rstrip("/") in lost:
                    record.action, record.reason = "fail", "the transfer into its parent folder failed"
        new_dirs = [d for p in live for d in p.new_dirs if d.base not in careful]
        #: per op, in order: how to read its outcome
        meaning: list[tuple] = []

        def add(kind: str, *about) -> None:
            meaning.extend([(kind, *about)] * (len(ops.names) - len(meaning)))

        for link in links:
            ops.ln(self.where(link.base), link.local.link, self.staged(link))
            add("ln", link)
        # A staging folder must hold only what arrived whole: drop the rest.
        by_base: dict[str, list[str]] = {}
        for send in sends:
            if id(send) in failed:
                by_base.setdefault(send.base, []).append(self.staged(send))
        for base, names in by_base.items():
            ops.rm(self.where(base), names, staged=True)
        add("tidy")
        # A file where a folder now goes (or the other way round) is removed
        # only now, and only if its replacement arrived.
        removes = {r for mapping_plan in live for r in mapping_plan.removes}
        if removes:  # (a set of every path sent would cost ~40 B per file per host)
            arrived = {s.path for s in chain(sends, links) if s.path in removes and id(s) not in failed
                       and s.base not in careful}
            arrived |= {d.path for d in new_dirs}
            for mapping_plan in live:
                for where, names in self.group([r for r in mapping_plan.removes if r in arrived],
                                               mapping_plan.mapping.dest).items():
                    ops.rm(where, names)
        add("tidy")
        # (the list itself when nothing failed: a copy is 8 B per file per host)
        moving = [s for s in chain(sends, links) if id(s) not in failed] if failed or links else sends
        chowning = any(chown_spec(mapping_plan.mapping) for mapping_plan in live)
        moving_ids = {id(s) for s in moving} if chowning else set()
        # Owner and group before the move, so files appear with them.
        for mapping_plan in live:
            spec = chown_spec(mapping_plan.mapping)
            if spec:
                items = [s for s in chain(mapping_plan.sends, mapping_plan.links) if id(s) in moving_ids]
                items += [d for d in mapping_plan.new_dirs if d.base not in careful]
                per_base: dict[str, list[str]] = {}
                for item in items:
                    per_base.setdefault(item.base, []).append(self.staged(item))
                for base, names in per_base.items():
                    ops.chown(spec, self.where(base), names, staged=True)
                add("chown", mapping_plan, ("chown", "send", "link", "mkdir"))
        # By name: what we sent, straight below each staging folder (files
        # inside a new folder travel with it).
        direct: dict[str, list[str]] = {}
        stage_roots: dict[str, str] = {}
        for item in chain(moving, new_dirs):
            if isinstance(item, Send):  # (by its stage: a staged path per file cost 0.5 s per 100,000)
                root = stage_roots.get(item.base) or stage_roots.setdefault(item.base, self.stage_root(item.base))
                if item.stage == root:
                    direct.setdefault(item.base, []).append(item.name)
                continue
            rel = self.staged(item)
            if "/" not in rel:
                direct.setdefault(item.base, []).append(rel)
        if self.perl:
            pairs: dict[str, list[tuple[str, str]]] = {}
            for base, names in direct.items():
                root = self.root[base]
                for name in names:
                    pairs.setdefault(root, []).append((_below(f"{self.stage_root(base)}/{name}", root),
                                                       _below(f"{base.rstrip('/')}/{name}", root)))
            for root, root_pairs in pairs.items():
                ops.perl("mv", self.where(root), [name for pair in root_pairs for name in pair])
                add("mv", root, lambda root=root: (s for s in moving if self.root[s.base] == root),
                    [d for d in new_dirs if self.root[d.base] == root])
        else:
            for base in dict.fromkeys(b for p in live for b in p.bases):
                ops.mv(self.where(base), direct.get(base, []))
                add("mv", base, lambda base=base: (s for s in moving if s.base == base),
                    [d for d in new_dirs if d.base == base])
        for mapping_plan in live:
            for where, names in self.group(mapping_plan.deletes, mapping_plan.mapping.dest).items():
                ops.rm(where, names)
            add("rules", mapping_plan, ("delete",))
        for mapping_plan in live:
            bases = mapping_plan.bases
            stages = [self.stage_root(b) for b in dict.fromkeys(bases + [self.root[b] for b in bases])]
            for where, names in self.group(stages, mapping_plan.mapping.dest).items():
                if self.perl:
                    ops.perl("rm", where, names)
                else:
                    ops.rm(where, names)
        add("cleanup")
        for mapping_plan in live:
            anchor = mapping_plan.mapping.dest
            by_mode: dict[int, list[str]] = {}
            for mode, path in mapping_plan.chmods:
                by_mode.setdefault(mode, []).append(path)
            for new_dir in mapping_plan.new_dirs:
                # Built writable, and mkdir leaves setgid/sticky bits out.
                if new_dir.base not in careful and (new_dir.mode & 0o700 != 0o700 or new_dir.mode & 0o7000):
                    by_mode.setdefault(new_dir.mode & 0o7777, []).append(new_dir.path)
            # Deepest first, so a folder made read-only is chmodded after its contents.
            for mode, paths in sorted(by_mode.items()):
                groups = self.group(sorted(paths, key=lambda p: -p.count("/")), anchor)
                for where in sorted(groups, key=lambda w: -len(posixpath.join(*w).split("/"))):
                    ops.chmod(mode, where, groups[where])
            add("rules", mapping_plan, ("chmod",))
            spec = chown_spec(mapping_plan.mapping)
            if spec:
                for where, names in self.group(mapping_plan.chowns, anchor).items():
                    ops.chown(spec, where, names)
                add("rules", mapping_plan, ("chown",))
            by_stamp: dict[str, list[str]] = {}
            for seconds, path in mapping_plan.touches:
                by_stamp.setdefault(touch_stamp(seconds), []).append(path)
            for stamp, paths in sorted(by_stamp.items()):
                for where, names in self.group(paths, anchor).items():
                    ops.touch(stamp, where, names)
            add("rules", mapping_plan, ("touch",))
        ops.quit()
        add("quit")
        return ops.take(), meaning

    def read_commit(self, live: list[MappingPlan], sends: list[Send], links: list[Send], failed: dict[int, str],
                    meaning: list[tuple]) -> None:
        """Read the commit's answers, op by op (``meaning``: see :meth:`commit_ops`)."""
        log = self.log
        for about in meaning:
            before, op, status = self.markers.next()
            if not status or op == "q":
                continue
            message = _message(before)
            kind = about[0]
            if kind == "ln":
                failed[id(about[1])] = f"cannot create the link: {message}"
            elif kind == "mv":
                folder, moved, base_dirs = about[1:]  # moved(): what that op moved (made only now)
                named = [s for s in moved() if s.name in message]
                for send in named or moved():  # unnamed: we cannot tell which
                    failed.setdefault(id(send), f"cannot move into {folder}: {message}")
                lost = {d.path + "/" for d in base_dirs if d.path.rsplit("/", 1)[-1] in message or not named}
                for mapping_plan in live:
                    for record in mapping_plan.result.files:
                        if record.action == "mkdir" and record.path in lost:
                            record.action, record.reason = "fail", f"cannot move into {folder}: {message}"
            elif kind in ("chown", "rules"):
                mapping_plan, actions = about[1:]
                problem = f"{op} failed: {message or 'status ' + str(status)}"
                log.error("%s: %s", mapping_plan.mapping.dest, problem)
                if kind == "chown":  # staged files went in without the owner asked for
                    for item in chain(mapping_plan.sends, mapping_plan.links):
                        failed.setdefault(id(item), problem)
                mapping_plan.fail(problem, actions)
            elif kind == "cleanup":
                log.warning("could not remove the temporary folders: %s", message)
            else:
                log.warning("could not tidy the staging folders: %s", message)

        for send in chain(sends, links):
            if id(send) in failed:
                send.action = "fail"
                send.reason = failed[id(send)]
                log.error("%s: %s", send.path, send.reason)
        self.stream.chan.close()


def _staging_free(reason: str, send: Send) -> str:
    """scp names the temporary path in its messages; name the real one."""
    temporary = posixpath.join(send.stage, send.name)
    if temporary in reason:
        reason = reason.replace(temporary, send.path)
    return reason.removeprefix("scp: ")


def _joined(lists: list[list]) -> list:
    """The lists as one: the list itself when there is one (a copy of a
    mapping's sends is 8 B per file per host)."""
    return lists[0] if len(lists) == 1 else [item for items in lists for item in items]


def apply(target: Target, stream: Stream, plan: HostPlan, mappings: list[Mapping], options: SyncOptions,
          trees: LocalTrees | None = None, perl: bool = False) -> None:
    """Prepare, transfer, commit (see the module docstring)."""
    run = ShellRun(target, stream, plan, mappings, options, trees, perl)
    run.check_cancel()
    run.prepare()
    failed: dict[int, str] = {}
    #: staging folders whose transfer went wrong: commit only what is known good
    careful: set[str] = set()
    swallowing: list[Stream] = []
    try:
        swallowing = run.transfer(failed, careful)
        run.prepared()  # (read already, unless nothing was sent)
        live = run.live
        sends, links = run.moves()
        for send in sends:
            if id(send) in failed:
                failed[id(send)] = _staging_free(failed[id(send)], send)
        try:
            run.commit(live, sends, links, failed, careful)
        except RemoteError as exc:
            exc.transient = False  # some files may be in place already: no blind retry
            raise
    finally:
        for old in swallowing:
            old.chan.close()
