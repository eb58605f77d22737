"""A throwaway SSH server on loopback, shared by the tests, the demo and the
benchmarks.

It starts a real OpenSSH ``sshd`` (or Dropbear) listening on one or more
loopback addresses (127.0.0.2, 127.0.0.3, ...) at one high port, with fresh
host and client keys. Each address stands in for one host. Run as root, it
logs in a dedicated test user with both a key and a password; run as another
user, it serves that user by key only (sshd cannot check passwords then).

``host_type`` makes the server stand in for the kinds of host synctasks must
sync to (run as root only):

==============  ===========================================================
``gnu``         a shell account on a GNU userland (the default)
``busybox``     login shell busybox ash, PATH = busybox applets + ``scp``
                only (user ``synctasks-bb``; OpenSSH ``SetEnv PATH`` in a
                ``Match User`` block, Dropbear a forced command): Alpine,
                OpenWrt
``sftp-only``   OpenSSH ``ForceCommand internal-sftp``
``sftp-chroot`` the same, chrooted (``ChrootDirectory`` under /srv)
``sftp-server`` OpenSSH ``ForceCommand /usr/lib/openssh/sftp-server``
``scp-only``    an rssh/scponly-like account: a forced command that runs
                ``scp -t`` / ``scp -f`` and refuses everything else
==============  ===========================================================

Nothing here ever listens on or connects to an address outside 127.0.0.0/8.
"""

from __future__ import annotations

import getpass
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TEST_USER = "synctasks-test"
#: The login user of the BusyBox host types (its login shell is busybox ash).
BUSYBOX_USER = "synctasks-bb"
SSHD = "/usr/sbin/sshd"
DROPBEAR = "/usr/sbin/dropbear"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"

#: A BusyBox userland: one link per busybox applet, plus OpenSSH's scp. The
#: BusyBox accounts' PATH is this folder alone, so no GNU tool is reachable.
#: Shared by every test session of the machine (the login shell in
#: /etc/passwd points into it), hence not in a session's temporary folder.
BUSYBOX_BIN = Path("/opt/synctasks-busybox/bin")
BUSYBOX_ASH = BUSYBOX_BIN / "ash"

#: Chrooted SFTP accounts: sshd wants every component of ChrootDirectory
#: root-owned and writable by no one else, which rules out /tmp.
CHROOT_BASE = Path("/srv/synctasks-chroot")
#: The folder inside a chroot that the login user may write to.
CHROOT_UPLOAD = "upload"

#: What the scp-only account says to anything but scp's sink or source.
SCP_ONLY_REFUSAL = "This account is restricted to scp (scp -t / scp -f)."

#: The scp-only account's forced command (sshd runs it with /bin/sh -c).
SCP_ONLY_COMMAND = r"""#!/bin/sh
refuse() {
    echo '@REFUSAL@' >&2
    exit 1
}
newline='
'
case "$SSH_ORIGINAL_COMMAND" in
    *"$newline"* | *\;* | *\&* | *\|* | *\`* | *\$* | *\<* | *\>* | *\(* | *\)* | *\{* | *\}* | *\\*)
        refuse ;;
    "scp -t "* | "scp -f "* | "scp "*" -t "* | "scp "*" -f "*)
        exec /bin/sh -c "$SSH_ORIGINAL_COMMAND" ;;
    *)
        refuse ;;
esac
"""

HOST_TYPES = ("gnu", "busybox", "sftp-only", "sftp-chroot", "sftp-server", "scp-only")
#: Host types whose account runs shell commands (the rest speak SFTP or SCP only).
SHELL_HOST_TYPES = ("gnu", "busybox")


class ServerError(RuntimeError):
    """The test server could not be started."""


def loopback_addresses(count: int, first: int = 2) -> list[str]:
    """``count`` loopback addresses starting at 127.0.0.<first>."""
    return [f"127.0.0.{first + i}" for i in range(count)]


def free_port(addresses: list[str]) -> int:
    """A high port that is free on every one of ``addresses``."""
    for _ in range(200):
        port = secrets.randbelow(20000) + 30000
        try:
            for address in addresses:
                with socket.socket() as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        return port
    raise ServerError("no free port found on " + ", ".join(addresses))


def _run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise ServerError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


#: The test user's password, made once per machine and kept root-only, so
#: that test sessions running side by side (or a demo during a test run)
#: never change it under each other.
PASSWORD_FILE = Path("/var/lib/synctasks-test/password")


def test_password() -> str:
    """The machine's test-user password (created on first use)."""
    if PASSWORD_FILE.exists():
        return PASSWORD_FILE.read_text().strip()
    PASSWORD_FILE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = "pw-" + secrets.token_hex(8)
    fd = os.open(PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def ensure_user(name: str, password: str, shell: str = "/bin/sh") -> str:
    """Create (once) an unprivileged login user with ``shell``; set its password."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        try:
            _run("useradd", "--create-home", "--shell", shell, name)
        except ServerError:
            pwd.getpwnam(name)  # another test session made it meanwhile
        entry = pwd.getpwnam(name)
    if entry.pw_shell != shell:
        _run("usermod", "--shell", shell, name)
    _run("chpasswd", stdin=f"{name}:{password}\n")
    return name


def ensure_test_user(password: str) -> str:
    """Create (once) the unprivileged test user and set its password."""
    return ensure_user(TEST_USER, password)


def ensure_busybox_userland() -> Path:
    """Fill BUSYBOX_BIN with busybox applet links and scp (idempotent, and
    safe with test sessions doing the same side by side); BUSYBOX_ASH becomes
    a valid login shell (Dropbear only logs in users whose shell is in
    /etc/shells)."""
    found = shutil.which("busybox")
    if not found:
        raise ServerError("busybox is missing: run scripts/bootstrap.sh (installs busybox)")
    busybox = os.path.realpath(found)
    scp = os.path.realpath(shutil.which("scp") or "/usr/bin/scp")
    # One link per applet, named after it: busybox dispatches on argv[0].
    links = {name: busybox for name in _run(busybox, "--list").split()}
    links["scp"] = scp
    BUSYBOX_BIN.mkdir(parents=True, exist_ok=True)
    for folder in (BUSYBOX_BIN.parent, BUSYBOX_BIN):
        os.chmod(folder, 0o755)
    for name, target in links.items():
        link = BUSYBOX_BIN / name
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        staged = BUSYBOX_BIN / f".{name}.{os.getpid()}"
        os.symlink(target, staged)
        os.replace(staged, link)
    shells = Path("/etc/shells")
    if str(BUSYBOX_ASH) not in shells.read_text().split():
        with open(shells, "a") as handle:
            handle.write(f"{BUSYBOX_ASH}\n")
    return BUSYBOX_BIN


@dataclass(frozen=True)
class RemoteDir:
    """A folder on the "remote" side that the login user may write to.

    ``seen`` is its path as the SSH account names it (what a mapper's dest
    holds); ``real`` is where it is on this machine's disk, to prepare and
    inspect it. They differ under a ChrootDirectory."""

    real: Path
    seen: str

    def at(self, rel: str) -> str:
        """The path of ``rel`` (below this folder) as the account names it."""
        return f"{self.seen.rstrip('/')}/{rel}" if rel else self.seen


def make_client_key(folder: Path) -> Path:
    """A fresh ed25519 client key pair in ``folder`` (no passphrase)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "client_ed25519"
    if not key.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "synctasks-test", "-f", str(key))
    return key


@dataclass
class TestServer:
    """One SSH server process listening on ``addresses`` at ``port``."""

    __test__ = False  # not a pytest test class

    workdir: Path
    addresses: list[str] = field(default_factory=lambda: ["127.0.0.2"])
    port: int = 0
    kind: str = "openssh"  #: "openssh" or "dropbear"
    sftp: bool = True  #: False gives an SCP-only server (no Subsystem sftp)
    #: What the account is: one of HOST_TYPES (see the module's docstring).
    #: Dropbear offers "gnu" and "busybox".
    host_type: str = "gnu"
    client_key: Path | None = None
    user: str = ""
    password: str | None = None
    host_key_line: str = ""  #: "ssh-ed25519 AAAA..." of the server
    process: subprocess.Popen | None = None
    #: sftp-chroot: the ChrootDirectory on this machine's disk.
    chroot: Path | None = None
    #: More sshd_config lines (OpenSSH), e.g. a SetEnv PATH for a fault.
    extra_config: list[str] = field(default_factory=list)

    @property
    def runs_commands(self) -> bool:
        """The account runs shell commands (the rest speak SFTP or SCP only)."""
        return self.host_type in SHELL_HOST_TYPES

    @property
    def speaks_sftp(self) -> bool:
        """An SFTP subsystem answers (Dropbear's points at a missing binary here)."""
        return self.kind == "openssh" and self.sftp and self.host_type != "scp-only"

    def start(self) -> "TestServer":
        for address in self.addresses:
            if not address.startswith("127."):
                raise ServerError(f"refusing to listen on {address}: loopback only")
        if self.host_type not in HOST_TYPES:
            raise ServerError(f"unknown host type {self.host_type!r}: one of {', '.join(HOST_TYPES)}")
        if self.kind == "dropbear" and self.host_type not in SHELL_HOST_TYPES:
            raise ServerError(f"the {self.host_type} host type is OpenSSH's (ForceCommand, ChrootDirectory)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        if self.client_key is None:
            self.client_key = make_client_key(self.workdir)
        if os.geteuid() == 0:
            if self.password is None:
                self.password = test_password()
            if self.host_type == "busybox":
                ensure_busybox_userland()
                self.user = ensure_user(BUSYBOX_USER, self.password, str(BUSYBOX_ASH))
            else:
                self.user = ensure_test_user(self.password)
        elif self.host_type != "gnu":
            raise ServerError(f"the {self.host_type} host type needs root (a dedicated user, a chroot)")
        else:
            self.user = getpass.getuser()
            self.password = None
        if self.host_type == "sftp-chroot":
            self._make_chroot()
        if not self.port:
            self.port = free_port(self.addresses)
        if self.kind == "dropbear":
            self._start_dropbear()
        else:
            self._start_openssh()
        self._wait_ready()
        return self

    # -- OpenSSH ---------------------------------------------------------
    def _start_openssh(self) -> None:
        if not Path(SSHD).exists():
            raise ServerError(f"{SSHD} is missing: run scripts/bootstrap.sh (installs openssh-server)")
        host_key = self.workdir / "ssh_host_ed25519_key"
        if not host_key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        self.host_key_line = " ".join(Path(str(host_key) + ".pub").read_text().split()[:2])
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(Path(str(self.client_key) + ".pub").read_text())
        os.chmod(authorized, 0o644)
        lines = [f"Port {self.port}"]
        lines += [f"ListenAddress {a}" for a in self.addresses]
        lines += [
            f"HostKey {host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if self.password else 'no'}",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            f"AllowUsers {self.user}",
            "MaxStartups 200:30:400",
            "MaxSessions 64",
            "LogLevel VERBOSE",
        ]
        if self.sftp:
            lines.append("Subsystem sftp internal-sftp")
        lines += self.extra_config
        lines += self._restrictions()
        config = self.workdir / "sshd_config"
        config.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(self.workdir / "sshd.log", "ab")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log, start_new_session=True
        )

    def _restrictions(self) -> list[str]:
        """The sshd_config Match block that makes the account its host type."""
        block = [f"Match User {self.user}"]
        if self.host_type == "busybox":
            # sshd runs `ash -c CMD` (argv[0] "ash": busybox's shell) with this PATH.
            return block + [f"    SetEnv PATH={BUSYBOX_BIN}"]
        if self.host_type == "gnu":
            return []
        block += ["    AllowTcpForwarding no", "    X11Forwarding no", "    PermitTTY no"]
        if self.host_type == "sftp-only":
            return block + ["    ForceCommand internal-sftp"]
        if self.host_type == "sftp-chroot":
            return block + [f"    ChrootDirectory {self.chroot}", "    ForceCommand internal-sftp"]
        if self.host_type == "sftp-server":
            return block + [f"    ForceCommand {SFTP_SERVER}"]
        return block + [f"    ForceCommand {self._write_scp_only_command()}"]

    def _write_scp_only_command(self) -> Path:
        """The scp-only account's forced command, like rssh or scponly: scp's
        sink or source run, with nothing a shell would read as code."""
        script = self.workdir / "scp-only"
        script.write_text(SCP_ONLY_COMMAND.replace("@REFUSAL@", SCP_ONLY_REFUSAL))
        os.chmod(script, 0o755)
        return script

    def _make_chroot(self) -> None:
        """A root-owned ChrootDirectory of this server alone (side-by-side
        test sessions each have theirs), with CHROOT_UPLOAD writable inside."""
        if self.chroot is None:
            CHROOT_BASE.mkdir(parents=True, exist_ok=True)
            os.chmod(CHROOT_BASE, 0o755)
            _remove_orphan_chroots()
            self.chroot = CHROOT_BASE / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.chroot.mkdir(mode=0o755, exist_ok=True)
        os.chmod(self.chroot, 0o755)
        upload = self.chroot / CHROOT_UPLOAD
        upload.mkdir(exist_ok=True)
        entry = pwd.getpwnam(self.user)
        os.chown(upload, entry.pw_uid, entry.pw_gid)

    # -- Dropbear --------------------------------------------------------
    def _start_dropbear(self) -> None:
        if not Path(DROPBEAR).exists():
            raise ServerError(f"{DROPBEAR} is missing: run scripts/bootstrap.sh (installs dropbear-bin)")
        if os.geteuid() != 0:
            raise ServerError("the Dropbear test server needs root (it reads ~/.ssh/authorized_keys of the test user)")
        host_key = self.workdir / "dropbear_ed25519_host_key"
        if not host_key.exists():
            _run("dropbearkey", "-t", "ed25519", "-f", str(host_key))
        public = _run("dropbearkey", "-y", "-f", str(host_key))
        self.host_key_line = next(
            " ".join(line.split()[:2]) for line in public.splitlines() if line.startswith("ssh-")
        )
        home = Path(pwd.getpwnam(self.user).pw_dir)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        key_line = Path(str(self.client_key) + ".pub").read_text().strip()
        existing = authorized.read_text() if authorized.exists() else ""
        if key_line not in existing:
            with open(authorized, "a") as handle:
                handle.write(key_line + "\n")
        entry = pwd.getpwnam(self.user)
        for path in (ssh_dir, authorized):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(authorized, 0o600)
        argv = [DROPBEAR, "-F", "-E", "-r", str(host_key), "-P", str(self.workdir / "dropbear.pid")]
        if self.host_type == "busybox":
            argv += ["-c", str(self._write_dropbear_busybox_command())]
        for address in self.addresses:
            argv += ["-p", f"{address}:{self.port}"]
        log = open(self.workdir / "dropbear.log", "ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def _write_dropbear_busybox_command(self) -> Path:
        """Dropbear always sets its compiled-in PATH: this forced command sets
        the BusyBox host's own, then runs the client's command with ash."""
        script = self.workdir / "busybox-command"
        script.write_text(f"""#!{BUSYBOX_ASH}
# shellcheck shell=dash
# Dropbear's own PATH gives way to the BusyBox host's.
# shellcheck disable=SC2123
PATH={BUSYBOX_BIN}
export PATH
[ -n "$SSH_ORIGINAL_COMMAND" ] || exec ash -l
exec ash -c "$SSH_ORIGINAL_COMMAND"
""")
        os.chmod(script, 0o755)
        return script

    # -- common ----------------------------------------------------------
    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.addresses)
        while pending:
            if self.process.poll() is not None:
                raise ServerError(f"{self.kind} exited at start: see {self.workdir}/*.log")
            try:
                with socket.create_connection((pending[0], self.port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        pending.pop(0)
                        continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"{self.kind} did not answer on {pending[0]}:{self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server and every process it started (its sessions too):
        a crash, not a shutdown."""
        if not self.process:
            return
        for pid in reversed(_descendants(self.process.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.process = None

    def __enter__(self) -> "TestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.chroot is not None:
            shutil.rmtree(self.chroot, ignore_errors=True)

    def known_hosts_lines(self) -> list[str]:
        return [f"[{a}]:{self.port} {self.host_key_line}" for a in self.addresses]

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text("\n".join(self.known_hosts_lines()) + "\n")
        return path

    def connection_entry(self, address: str, auth: str = "key") -> dict:
        """A connection_info.json entry for ``address`` (auth: key or password)."""
        entry = {"ip_address": address, "user": self.user, "port": self.port}
        if auth == "password":
            entry["passkey"] = self.password
        else:
            entry["key_filename"] = str(self.client_key)
        return entry

    def make_writable_dir(self, path: Path) -> Path:
        """A folder that the login user can write to (the "remote" side)."""
        path.mkdir(parents=True, exist_ok=True)
        entry = pwd.getpwnam(self.user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def remote_dir(self, name: str | None = None) -> RemoteDir:
        """A fresh folder the login user owns, where this account can reach
        it: inside the chroot for sftp-chroot, under the workdir otherwise."""
        name = name or secrets.token_hex(6)
        if self.host_type == "sftp-chroot":
            real = self.make_writable_dir(self.chroot / CHROOT_UPLOAD / name)
            return RemoteDir(real, f"/{CHROOT_UPLOAD}/{name}")
        real = self.make_writable_dir(self.workdir / "remote" / name)
        return RemoteDir(real, str(real))


def _remove_orphan_chroots() -> None:
    """Chroots left by test sessions that died without cleaning up (each is
    named after the process that made it)."""
    for entry in CHROOT_BASE.iterdir():
        pid = entry.name.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found
