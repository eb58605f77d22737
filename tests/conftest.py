"""Fixtures: real SSH servers on loopback and throwaway projects.

One OpenSSH server (with SFTP) listens on 127.0.0.2-4, an SCP-only OpenSSH
server (no Subsystem sftp line) on 127.0.0.5 and Dropbear on 127.0.0.6, all
for the whole session. Each test gets its own project folder and its own
"remote" folder (owned by the login user) to sync into.
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
from synctasks.testserver import TestServer, loopback_addresses, make_client_key

MAIN_HOSTS = loopback_addresses(3)  # 127.0.0.2-4
SCP_ONLY_HOST = "127.0.0.5"
DROPBEAR_HOST = "127.0.0.6"
UNREACHABLE_HOST = "127.0.0.9"  # nothing listens there


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
