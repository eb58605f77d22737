"""Fixtures: real SSH servers on loopback and throwaway projects.

One OpenSSH server (with SFTP) listens on 127.0.0.2-4, an SCP-only OpenSSH
server (no Subsystem sftp line) on 127.0.0.5 and Dropbear on 127.0.0.6, all
for the whole session. Each test gets its own project folder and its own
"remote" folder (owned by the login user) to sync into.

The host types of testing.testserver (BusyBox over OpenSSH and Dropbear,
SFTP-only accounts, an scp-only account) each have a server of their own on
127.0.0.40-45 (connection_info.json keys hosts by address; test_faults uses
.10 and .20-35), started on first use and kept for the session.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from synctasks import cli
from testing.testserver import RemoteDir, TestServer, loopback_addresses, make_client_key

MAIN_HOSTS = loopback_addresses(3)  # 127.0.0.2-4
SCP_ONLY_HOST = "127.0.0.5"
DROPBEAR_HOST = "127.0.0.6"
UNREACHABLE_HOST = "127.0.0.9"  # nothing listens there
BUSYBOX_HOST = "127.0.0.40"
DROPBEAR_BUSYBOX_HOST = "127.0.0.41"
SFTP_ONLY_HOST = "127.0.0.42"
SFTP_CHROOT_HOST = "127.0.0.43"
SFTP_SERVER_HOST = "127.0.0.44"
SCP_ONLY_ACCOUNT_HOST = "127.0.0.45"


@pytest.fixture(scope="session")
def server_root():
    # Not under pytest's tmp folders: those are 0700 and the login user of
    # the test servers must reach its "remote" folders.
    root = Path(tempfile.mkdtemp(prefix="synctasks-tests-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def client_key(server_root):
    return make_client_key(server_root / "client")


@pytest.fixture(scope="session")
def server(server_root, client_key):
    with TestServer(server_root / "openssh", addresses=MAIN_HOSTS, client_key=client_key) as srv:
        yield srv


@pytest.fixture(scope="session")
def scp_only_server(server_root, client_key, server):
    with TestServer(server_root / "scp-only", addresses=[SCP_ONLY_HOST], sftp=False, client_key=client_key,
                    password=server.password) as srv:
        yield srv


@pytest.fixture(scope="session")
def dropbear_server(server_root, client_key, server):
    with TestServer(server_root / "dropbear", addresses=[DROPBEAR_HOST], kind="dropbear", client_key=client_key,
                    password=server.password) as srv:
        yield srv


def _host_type_server(server_root, client_key, name, address, host_type, kind="openssh"):
    with TestServer(server_root / name, addresses=[address], kind=kind, host_type=host_type,
                    client_key=client_key) as srv:
        yield srv


@pytest.fixture(scope="session")
def busybox_server(server_root, client_key):
    """BusyBox userland over OpenSSH (Alpine-like): user synctasks-bb."""
    yield from _host_type_server(server_root, client_key, "busybox", BUSYBOX_HOST, "busybox")


@pytest.fixture(scope="session")
def dropbear_busybox_server(server_root, client_key):
    """BusyBox userland over Dropbear (OpenWrt-like): user synctasks-bb."""
    yield from _host_type_server(server_root, client_key, "dropbear-busybox", DROPBEAR_BUSYBOX_HOST, "busybox",
                                 kind="dropbear")


@pytest.fixture(scope="session")
def sftp_only_server(server_root, client_key):
    """ForceCommand internal-sftp."""
    yield from _host_type_server(server_root, client_key, "sftp-only", SFTP_ONLY_HOST, "sftp-only")


@pytest.fixture(scope="session")
def sftp_chroot_server(server_root, client_key):
    """ForceCommand internal-sftp in a ChrootDirectory (remote_dir() is inside it)."""
    yield from _host_type_server(server_root, client_key, "sftp-chroot", SFTP_CHROOT_HOST, "sftp-chroot")


@pytest.fixture(scope="session")
def sftp_server_server(server_root, client_key):
    """ForceCommand /usr/lib/openssh/sftp-server."""
    yield from _host_type_server(server_root, client_key, "sftp-server", SFTP_SERVER_HOST, "sftp-server")


@pytest.fixture(scope="session")
def scp_only_account_server(server_root, client_key):
    """An rssh/scponly-like account: only `scp -t` / `scp -f` run."""
    yield from _host_type_server(server_root, client_key, "scp-only-account", SCP_ONLY_ACCOUNT_HOST, "scp-only")


class HostCase:
    """One host type under test: its server, the address to sync to, and a
    fresh remote folder (``remote.real`` on disk, ``remote.seen`` in dests)."""

    def __init__(self, name: str, srv: TestServer, address: str):
        self.name = name
        self.server = srv
        self.address = address
        self.remote: RemoteDir = srv.remote_dir()

    def __repr__(self) -> str:
        return f"HostCase({self.name}, {self.address}:{self.server.port}, {self.server.kind}/{self.server.host_type})"


#: host type -> (server fixture, address): what the host-type tests run on.
HOST_TYPE_SERVERS = {
    "gnu": ("server", MAIN_HOSTS[0]),
    "gnu-scp-only-server": ("scp_only_server", SCP_ONLY_HOST),
    "dropbear-gnu": ("dropbear_server", DROPBEAR_HOST),
    "busybox": ("busybox_server", BUSYBOX_HOST),
    "dropbear-busybox": ("dropbear_busybox_server", DROPBEAR_BUSYBOX_HOST),
    "sftp-only": ("sftp_only_server", SFTP_ONLY_HOST),
    "sftp-chroot": ("sftp_chroot_server", SFTP_CHROOT_HOST),
    "sftp-server": ("sftp_server_server", SFTP_SERVER_HOST),
    "scp-only-account": ("scp_only_account_server", SCP_ONLY_ACCOUNT_HOST),
}


@pytest.fixture
def host_case(request):
    """Parametrize indirectly with a HOST_TYPE_SERVERS key."""
    fixture, address = HOST_TYPE_SERVERS[request.param]
    return HostCase(request.param, request.getfixturevalue(fixture), address)


# One file per test session: sessions side by side never remove each other's.
SUDOERS = Path(f"/etc/sudoers.d/synctasks-test-{os.getpid()}")


@pytest.fixture(scope="session")
def sudo_rights(server):
    """The login user may sudo, with its password (asked every time)."""
    if not Path("/usr/bin/sudo").exists():
        pytest.fail("sudo is missing: scripts/bootstrap.sh installs it")
    SUDOERS.write_text(f"Defaults:{server.user} timestamp_timeout=0, !lecture\n{server.user} ALL=(ALL) ALL\n")
    SUDOERS.chmod(0o440)
    import subprocess

    check = subprocess.run(["visudo", "-c", "-f", str(SUDOERS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    yield
    SUDOERS.unlink()


@pytest.fixture
def remote(server, server_root):
    """A fresh folder the login user owns: the "remote" side of a test."""
    return server.make_writable_dir(server_root / "remote" / uuid.uuid4().hex[:12])


class Project:
    """A synctasks project folder: config.ini, connection_info.json, hosts/."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (root / "hosts").mkdir(exist_ok=True)
        self.hosts: list[dict] = []
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text("")
        self.config = {"security": {"known_hosts": str(self.known_hosts)}, "sync": {"retries": "0",
                                                                                    "connect_timeout": "5"}}

    @property
    def config_path(self) -> Path:
        return self.root / "config.ini"

    def add_host(self, srv: TestServer, address: str, mappings: list[dict], auth: str = "key",
                 trust: bool = True, port: int | None = None) -> dict:
        """Add a host entry (``port``: another way in, e.g. a proxy's)."""
        entry = srv.connection_entry(address, auth)
        entry["port"] = port or srv.port
        self.hosts.append(entry)
        self.map(address, mappings)
        if trust:
            with open(self.known_hosts, "a") as handle:
                handle.write(f"[{address}]:{entry['port']} {srv.host_key_line}\n")
        return entry

    def map(self, address: str, mappings: list[dict]) -> None:
        (self.root / "hosts" / f"{address}.json").write_text(json.dumps(mappings))

    def write(self) -> None:
        info = self.root / "connection_info.json"
        info.write_text(json.dumps(self.hosts, indent=1))
        info.chmod(0o600)
        lines = []
        for section, keys in self.config.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {v}" for k, v in keys.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def run(self, *args: str, capsys=None) -> tuple[int, str, str]:
        """Run the console script in-process: (status, stdout, stderr)."""
        self.write()
        if capsys:
            capsys.readouterr()
        status = cli.main(["--config", str(self.config_path), *args])
        out, err = capsys.readouterr() if capsys else ("", "")
        return status, out, err

    def file(self, rel: str, content: bytes | str = b"", mode: int | None = None) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        if mode is not None:
            path.chmod(mode)
        return path


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path / "project")


def give(srv: TestServer, *paths: Path) -> None:
    """Hand remote-side files the test made (as root) to the login user."""
    import pwd

    entry = pwd.getpwnam(srv.user)
    for top in paths:
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            os.lchown(path, entry.pw_uid, entry.pw_gid)


def tree_state(root: Path) -> dict[str, tuple]:
    """rel path -> (kind, bytes or link target, mode, mtime in µs, inode) for a tree."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = ("l", os.readlink(path), None, None, info.st_ino)
        elif path.is_dir():
            state[rel] = ("d", None, info.st_mode & 0o7777, None, info.st_ino)
        else:
            state[rel] = ("f", path.read_bytes(), info.st_mode & 0o7777, info.st_mtime_ns // 1000, info.st_ino)
    return state


def without_inodes(state: dict) -> dict:
    return {k: v[:4] for k, v in state.items()}


def leftover_name() -> str:
    """The staging folder name of a run of this machine that has ended: what
    a cut run leaves (node and PID as the remote script makes them)."""
    import re
    import socket
    import subprocess

    node = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    pid = subprocess.Popen(["true"])
    pid.wait()
    from synctasks.constants import STAGING_PREFIX

    return f"{STAGING_PREFIX}{node}-{pid.pid}-{'0123456789abcdef'}"
