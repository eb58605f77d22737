"""Every remote command synctasks runs is built here.

A host is synced through ONE remote command (one login-shell start, one round
trip), a small POSIX ``sh`` script that:

1. lists the remote state of every dest in one go (GNU ``find -printf``,
   NUL-separated, so any byte but NUL survives), with SHA-256 sums when the
   compare mode is checksum, then
2. reads operations from its standard input, one per line, each line tagged
   with this run's token (the script's PID and a random part): remove, make
   folders, make links, receive files with ``scp -t`` (the SCP sink, its
   target one staging folder), move the received files into place, chmod,
   chown, touch, quit. After each operation it prints a marker line
   ``@@<token>@@ <op> <status>`` on standard output, preceded by the
   operation's error messages (its stderr goes to stdout, so an error
   arrives with the operation it belongs to).

``head -c`` hands each sink exactly its stream, so the script reads the next
operation right after it. If head could not pass the whole stream on (the
sink stopped early), the script only swallows its input from then on:
whatever of the stream was not consumed must never be taken for an
operation. The same script started in
``ops`` mode (no listing) finishes the work on a second channel.

Paths travel as arguments (quoted with :func:`shlex.quote`) or as stdin
lines read with ``read -r``; they are never pasted into shell code.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from .constants import STAGING_PREFIX

# The script is one ``sh -c`` argument, single-quoted for the login shell
# (any POSIX-like shell; csh-family login shells are not supported).
SCRIPT = r"""
# Every path we are given is absolute; a relative one must never land in $HOME.
cd / || exit 5
mode=$2; skip=$3
# The run's token carries this shell's PID: a staging folder whose PID is
# alive belongs to a run in progress (another run may share its parent).
if [ "$mode" = ops ]; then t=$1; else t=$$-$1; fi
shift 3
P=__STAGING__
gnuhead=
STALE='for s do
  n=${s##*/}; r=${n#__STAGING__}; pid=${r%%-*}
  if [ -r "/proc/$pid/stat" ]; then
    IFS= read -r st <"/proc/$pid/stat"; st=${st##*") "}; st=${st%% *}
    [ "$st" = Z ] || continue
  elif [ ! -d /proc/self ] && kill -0 "$pid" 2>/dev/null; then continue
  fi
  printf "S%s\0" "$s"
done'
mark() { printf '\n@@%s@@ %s %s\n' "$t" "$1" "$2"; }
batch() {
  cmd=$1; pre=$2; suf=$3; rc=0; set --
  while IFS= read -r p; do
    [ -n "$p" ] || break
    set -- "$@" "$pre$p"
    if [ $# -ge 400 ]; then eval "$cmd \"\$@\" $suf" || rc=1; set --; fi
  done
  if [ $# -gt 0 ]; then eval "$cmd \"\$@\" $suf" || rc=1; fi
  return $rc
}
moveall() {
  # Rename everything in staging folder $1 into $2, one mv per name pattern
  # (names come from the folder itself, not from stdin: fast for many files).
  # $3 = many: too many names for one command line, let find batch them.
  s=$1; d=$2; rc=0
  if [ "$3" = many ]; then
    find "$s" -mindepth 1 -maxdepth 1 -exec mv -f -t "$d" {} + || rc=1
    return $rc
  fi
  for g in '*' '.[!.]*' '..?*'; do
    set -- "$s"/$g
    if [ $# -eq 1 ] && [ ! -e "$1" ] && [ ! -h "$1" ]; then continue; fi
    mv -f -- "$@" "$d/" || rc=1
  done
  return $rc
}
printf 'I%s\0' "$t"  # first, in every mode: the script runs (sudo let it)
if [ "$mode" != ops ]; then
  printf 'H%s\0' "$HOME"
  if find / -maxdepth 0 -printf '' >/dev/null 2>&1; then :; else
    printf 'Xthe remote find has no -printf: install GNU findutils on the host\0'; exit 4
  fi
  for m do
    k=${m%%:*}; d=${m#*:}
    printf 'M%s\0' "$d"
    if [ "$k" = d ]; then depth=; else depth='-maxdepth 0'; fi
    if [ -e "$d" ] || [ -h "$d" ]; then
      find -H "$d" $depth -name "$P*" -prune -exec sh -c "$STALE" sh {} + \
        -o -printf 'E%y %m %s %T@ %p\0%l\0%u\0%g\0'
      if [ "$mode" = checksum ]; then
        find -H "$d" $depth -name "$P*" -prune -o -type f -exec sha256sum -z -- {} +
      fi
    fi
    # Staging folders of a cut run can also sit beside dest (a new dest is
    # built there, a file's staging folder is there).
    p=${d%/*}; [ -n "$p" ] || p=/
    if [ -d "$p" ]; then find "$p" -mindepth 1 -maxdepth 1 -name "$P*" -exec sh -c "$STALE" sh {} +; fi
  done
  printf 'Z%s\0' "$t"
fi
umask 077
while IFS= read -r line; do
  if [ "$skip" = 1 ]; then
    # Under sudo -S: the password line we sent, if sudo did not need it.
    skip=0; case $line in "@@$t@@ "*) ;; *) continue ;; esac
  fi
  case $line in "@@$t@@ "*) op=${line#"@@$t@@ "} ;; *) mark bad 3; exit 3 ;; esac
  case $op in
  rm) batch 'rm -rf --' '' '' 2>&1; mark rm $? ;;
  mkdir) batch 'mkdir -p --' '' '' 2>&1; mark mkdir $? ;;
  mkparent) umask 022; batch 'mkdir -p --' '' '' 2>&1; rc=$?; umask 077; mark mkparent $rc ;;
  ln) IFS= read -r target; IFS= read -r path; ln -s -- "$target" "$path" 2>&1; mark ln $? ;;
  scp) IFS= read -r stg; IFS= read -r size
    case $size in *[!0-9]*|'') mark bad 3; exit 3 ;; esac
    # The sink's target is one staging folder: whatever happens in the
    # stream, it cannot write above it. head hands it exactly its stream in
    # big reads (the sink reads records a byte at a time); its answers wait
    # in a file, read once.
    a=$stg/$P$t.acks; h=$stg/$P$t.head
    if [ -z "$gnuhead" ]; then
      # Only GNU head -c stops reading at its count (others read ahead).
      if head --version 2>/dev/null | grep -q coreutils; then gnuhead=1; else gnuhead=0; fi
    fi
    umask 0
    if [ "$gnuhead" = 1 ]; then
      { head -c "$size"; echo $? >"$h"; } | scp -r -d -t -- "$stg" >"$a"; rc=$?
      umask 077; hs=1; if [ -r "$h" ]; then IFS= read -r hs <"$h"; fi
    else
      # The sink reads no further than its stream; but if it failed, how
      # far it read is unknown.
      scp -r -d -t -- "$stg" >"$a"; rc=$?; umask 077; hs=$rc
    fi
    cat "$a"; rm -f "$a" "$h"; mark scp "$rc $hs"
    # Unless head passed on the whole stream, what is left of it must never
    # be taken for operations: swallow it until the client closes. (The
    # client commits on a second channel meanwhile; this PID stays alive, so
    # no other run takes the staging folders for stale.)
    [ "$hs" = 0 ] || exec cat >/dev/null ;;
  mvnames) IFS= read -r dst; batch 'mv -f --' "$dst/$P$t/" '"$dst/"' 2>&1; mark mvnames $? ;;
  mv) IFS= read -r dst; IFS= read -r many; moveall "$dst/$P$t" "$dst" "$many" 2>&1; mark mv $? ;;
  chmod) IFS= read -r bits
    case $bits in *[!0-7]*|'') mark bad 3; exit 3 ;; esac
    batch "chmod $bits --" '' '' 2>&1; mark chmod $? ;;
  chown) IFS= read -r spec
    case $spec in *[!A-Za-z0-9_.:-]*|'') mark bad 3; exit 3 ;; esac
    batch "chown -h $spec --" '' '' 2>&1; mark chown $? ;;
  touch) IFS= read -r stamp
    case $stamp in *[!0-9.]*|'') mark bad 3; exit 3 ;; esac
    TZ=UTC0; export TZ; batch "touch -m -t $stamp --" '' '' 2>&1; rc=$?; unset TZ; mark touch $rc ;;
  q) mark q 0; exit 0 ;;
  *) mark bad 3; exit 3 ;;
  esac
done
""".replace("__STAGING__", STAGING_PREFIX)


def staging_name(token: str) -> str:
    return STAGING_PREFIX + token


def command(token: str, mode: str, dests: list[tuple[bool, str]], sudo: bool = False,
            password_line: bool = False) -> str:
    """The one remote command of a host.

    ``mode`` is ``list`` or ``checksum`` (list, then take ops) or ``ops`` (no
    listing); ``dests`` holds ``(is_dir, dest)`` per mapping. With ``sudo``
    the script runs as root through ``sudo -S``; ``password_line`` says the
    first stdin line is sudo's password (skipped if sudo did not read it).
    """
    args = [token, mode, "1" if password_line else "0"] + [("d:" if d else "f:") + dest for d, dest in dests]
    prefix = "exec sudo -S -p '' -- sh -c " if sudo else "exec sh -c "
    return prefix + shlex.quote(SCRIPT) + " sh " + " ".join(shlex.quote(a) for a in args)


# --------------------------------------------------------------------------
# The listing
# --------------------------------------------------------------------------
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


@dataclass
class Listing:
    token: str = ""  #: the run's token as the script made it (<pid>-<random>)
    home: str = ""
    #: dest -> {absolute path -> entry}
    entries: dict[str, dict[str, RemoteEntry]] = field(default_factory=dict)
    #: leftovers of cut runs (staging folders), to remove
    stale: list[str] = field(default_factory=list)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def parse_listing(data: bytes) -> Listing:
    """Parse the NUL-separated listing (everything before the ``Z`` record)."""
    listing = Listing()
    records = data.split(b"\0")
    current: dict[str, RemoteEntry] | None = None
    i = 0
    while i < len(records):
        record = records[i]
        i += 1
        if not record:
            continue
        tag = record[:1]
        if tag == b"I":
            listing.token = _text(record[1:])
        elif tag == b"H":
            listing.home = _text(record[1:])
        elif tag == b"X":
            from .errors import RemoteError

            raise RemoteError(_text(record[1:]))
        elif tag == b"M":
            current = listing.entries.setdefault(_text(record[1:]), {})
        elif tag == b"S":
            stale = _text(record[1:])
            # Sent back as a line: a name with a newline would split in two.
            if stale.startswith("/") and "\n" not in stale:
                listing.stale.append(stale)
        elif tag == b"E":
            # Link target, owner and group follow as records of their own
            # (group names may hold spaces: "domain users").
            link, owner, group = (_text(r) for r in (records[i:i + 3] + [b"", b"", b""])[:3])
            i += 3
            kind, mode, size, mtime, path = record[1:].split(b" ", 4)
            current[_text(path)] = RemoteEntry(
                kind=kind.decode(),
                mode=int(mode, 8),
                size=int(size),
                mtime=int(mtime.split(b".")[0]),
                link=link,
                owner=owner,
                group=group,
            )
        elif len(record) > 66 and record[64:66] == b"  ":
            path = _text(record[66:])
            entry = current.get(path) if current is not None else None
            if entry is not None:
                entry.sha256 = record[:64].decode()
        elif tag == b"Z":
            break  # the end record (Z<token>)
    return listing


# --------------------------------------------------------------------------
# Operations sent to the script's stdin
# --------------------------------------------------------------------------
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

    def _batch(self, name: str, head: list[str], paths: list[str]) -> None:
        if paths:
            self._op(name, *head, *paths, "")

    def rm(self, paths: list[str]) -> None:
        self._batch("rm", [], paths)

    def mkdir(self, paths: list[str]) -> None:
        self._batch("mkdir", [], paths)

    def mkparent(self, paths: list[str]) -> None:
        self._batch("mkparent", [], paths)

    def ln(self, target: str, path: str) -> None:
        self._op("ln", target, path)

    def scp(self, staging: str, size: int) -> None:
        """Run the SCP sink into ``staging`` on the next ``size`` bytes."""
        self._op("scp", staging, str(size))

    def mvnames(self, folder: str, names: list[str]) -> None:
        """Move the named files of ``folder``'s staging folder into it."""
        self._batch("mvnames", [folder], names)

    def mv(self, folder: str, count: int) -> None:
        """Move every file of ``folder``'s staging folder into ``folder``."""
        self._op("mv", folder, "many" if count > 1000 else "few")

    def chmod(self, mode: int, paths: list[str]) -> None:
        self._batch("chmod", [f"{mode:04o}"], paths)

    def chown(self, spec: str, paths: list[str]) -> None:
        """``spec``: owner, owner:group or :group."""
        self._batch("chown", [spec], paths)

    def touch(self, stamp: str, paths: list[str]) -> None:
        self._batch("touch", [stamp], paths)

    def quit(self) -> None:
        self._op("q")

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts = []
        return data


def marker(token: str) -> bytes:
    return f"\n@@{token}@@ ".encode()
