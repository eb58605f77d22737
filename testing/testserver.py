"""A throwaway SSH server on loopback, shared by the tests, the demo and the
benchmarks.

It starts a real OpenSSH ``sshd`` (or Dropbear) listening on one or more
loopback addresses (127.0.0.2, 127.0.0.3, ...) at one high port, with fresh
host and client keys. Each address stands in for one host. Run as root, it
logs in a dedicated test user with both a key and a password; run as another
user, it serves that user by key only (sshd cannot check passwords then).

Nothing here ever listens on or connects to an address outside 127.0.0.0/8.
"""

from __future__ import annotations

import getpass
import os
import pwd
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TEST_USER = "synctasks-test"
SSHD = "/usr/sbin/sshd"
DROPBEAR = "/usr/sbin/dropbear"


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


def ensure_test_user(password: str) -> str:
    """Create (once) the unprivileged test user and set its password."""
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        _run("useradd", "--create-home", "--shell", "/bin/sh", TEST_USER)
    _run("chpasswd", stdin=f"{TEST_USER}:{password}\n")
    return TEST_USER


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
    client_key: Path | None = None
    user: str = ""
    password: str | None = None
    host_key_line: str = ""  #: "ssh-ed25519 AAAA..." of the server
    process: subprocess.Popen | None = None

    def start(self) -> "TestServer":
        for address in self.addresses:
            if not address.startswith("127."):
                raise ServerError(f"refusing to listen on {address}: loopback only")
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        if self.client_key is None:
            self.client_key = make_client_key(self.workdir)
        if os.geteuid() == 0:
            if self.password is None:
                self.password = test_password()
            self.user = ensure_test_user(self.password)
        else:
            self.user = getpass.getuser()
            self.password = None
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
        config = self.workdir / "sshd_config"
        config.write_text("\n".join(lines) + "\n")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(self.workdir / "sshd.log", "ab")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log, start_new_session=True
        )

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
        for address in self.addresses:
            argv += ["-p", f"{address}:{self.port}"]
        log = open(self.workdir / "dropbear.log", "ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

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
