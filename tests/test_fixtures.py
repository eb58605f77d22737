"""The host-type fixtures are what they claim, checked against the real
servers with paramiko before any sync test trusts them."""

from __future__ import annotations

import base64
import configparser
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
from setuptools import find_packages

from testing.testserver import BUSYBOX_ASH, BUSYBOX_BIN, CHROOT_BASE, CHROOT_UPLOAD, SCP_ONLY_REFUSAL, TestServer

ROOT = Path(__file__).resolve().parent.parent
BUSYBOX = os.path.realpath(shutil.which("busybox") or "/bin/busybox")
SCP = os.path.realpath(shutil.which("scp") or "/usr/bin/scp")


def connect(srv: TestServer, address: str) -> paramiko.SSHClient:
    """A paramiko client logged in by key, the server's host key checked."""
    client = paramiko.SSHClient()
    key_type, key_data = srv.host_key_line.split()[:2]
    key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data))
    client.get_host_keys().add(f"[{address}]:{srv.port}", key_type, key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(address, srv.port, username=srv.user, key_filename=str(srv.client_key), look_for_keys=False,
                   allow_agent=False, timeout=5)
    return client


def run(client: paramiko.SSHClient, command: str, stdin: bytes = b"", timeout: float = 10) -> tuple[int, str, str]:
    """Run ``command`` on an exec channel: (exit status, stdout, stderr).
    Standard input gets ``stdin`` then EOF; waits for the exit with a deadline."""
    channel = client.get_transport().open_session(timeout=timeout)
    channel.settimeout(0.2)
    channel.exec_command(command)
    if stdin:
        channel.sendall(stdin)
    channel.shutdown_write()
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    while True:
        for ready, recv, sink in ((channel.recv_ready, channel.recv, out),
                                  (channel.recv_stderr_ready, channel.recv_stderr, err)):
            while ready():
                sink += recv(65536)
        if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        if time.monotonic() > deadline:
            channel.close()
            raise AssertionError(f"{command!r} did not finish within {timeout}s (out={bytes(out)!r})")
        time.sleep(0.01)
    status = channel.recv_exit_status()
    channel.close()
    return status, out.decode(errors="replace"), err.decode(errors="replace")


BUSYBOX_SERVERS = ["busybox_server", "dropbear_busybox_server"]


@pytest.fixture(scope="module", params=BUSYBOX_SERVERS)
def busybox_host(request):
    srv = request.getfixturevalue(request.param)
    client = connect(srv, srv.addresses[0])
    yield srv, client
    client.close()


def test_busybox_account_path_holds_only_busybox_and_scp(busybox_host):
    srv, client = busybox_host
    status, out, err = run(client, 'printf "%s\\n" "$PATH"')
    assert (status, out, err) == (0, f"{BUSYBOX_BIN}\n", "")
    # Every command reachable by PATH is busybox, but scp (OpenSSH's): one
    # stat for all (same machine, so device:inode pairs compare).
    status, out, _ = run(client, 'IFS=:; for d in $PATH; do stat -L -c "%d:%i" "$d"/*; done | sort -u')
    assert status == 0 and sorted(out.split()) == sorted(f"{os.stat(p).st_dev}:{os.stat(p).st_ino}"
                                                         for p in (BUSYBOX, SCP))
    status, out, _ = run(client, 'ls "$PATH" | wc -l')
    assert int(out) > 100  # the applets are there, not just a few
    # The shell running the commands is busybox ash, the account's login shell.
    status, out, _ = run(client, 'readlink -f /proc/$$/exe; grep "^$(id -un):" /etc/passwd | cut -d: -f7')
    assert out.split() == [BUSYBOX, str(BUSYBOX_ASH)]


@pytest.mark.parametrize("tool", ["find", "head", "mv", "stat", "sh", "sha256sum", "touch", "mkdir", "rm", "chmod"])
def test_busybox_answers_for(busybox_host, tool):
    _, client = busybox_host
    status, out, _ = run(client, f'readlink -f "$(command -v {tool})"; {tool} --help 2>&1 | head -n 1')
    path, banner = out.splitlines()[:2]
    assert path == BUSYBOX
    assert re.match(r"BusyBox v1\.\d+\.\d+", banner), banner


def test_busybox_tools_lack_the_gnu_extensions(busybox_host):
    _, client = busybox_host
    status, out, err = run(client, "find / -maxdepth 0 -printf x")
    assert status != 0 and out == "" and "-printf" in err
    status, out, err = run(client, "printf a | sha256sum -z")
    assert status != 0
    status, out, _ = run(client, "stat -c '%s %Y %a' /")  # what BusyBox stat does have
    assert status == 0 and re.fullmatch(r"\d+ \d+ \d+\n", out)


def test_busybox_server_software(busybox_host):
    srv, client = busybox_host
    banner = client.get_transport().remote_version
    assert banner.startswith("SSH-2.0-dropbear" if srv.kind == "dropbear" else "SSH-2.0-OpenSSH"), banner


def test_gnu_control_host_has_gnu_tools(server):
    client = connect(server, server.addresses[0])
    try:
        status, out, _ = run(client, "find --version | head -n 1; find / -maxdepth 0 -printf ok")
    finally:
        client.close()
    assert status == 0 and "GNU findutils" in out and out.endswith("ok")


SFTP_SERVERS = ["sftp_only_server", "sftp_chroot_server", "sftp_server_server"]


@pytest.mark.parametrize("fixture", SFTP_SERVERS)
def test_sftp_account_refuses_exec_but_speaks_sftp(request, fixture):
    srv = request.getfixturevalue(fixture)
    remote = srv.remote_dir()
    client = connect(srv, srv.addresses[0])
    try:
        status, out, err = run(client, "echo MARKER-$((6*7)); id")
        assert "MARKER-42" not in out + err and "uid=" not in out + err
        if srv.host_type == "sftp-server":
            # sftp-server runs instead of the command: it reads no SFTP packet and
            # ends at EOF without a word.
            assert out == ""
        else:
            assert status == 1 and out == "This service allows sftp connections only.\n"
        sftp = client.open_sftp()
        with sftp.open(remote.at("hello.txt"), "w") as handle:
            handle.write(b"over sftp")
        sftp.chmod(remote.at("hello.txt"), 0o640)
        assert sftp.listdir(remote.seen) == ["hello.txt"]
        sftp.close()
    finally:
        client.close()
    on_disk = remote.real / "hello.txt"
    assert on_disk.read_bytes() == b"over sftp"
    assert on_disk.stat().st_mode & 0o777 == 0o640
    assert on_disk.stat().st_uid == remote.real.stat().st_uid  # written as the login user


def test_chroot_is_a_chroot(sftp_chroot_server):
    srv = sftp_chroot_server
    chroot = srv.chroot
    assert chroot.parent == CHROOT_BASE and not str(chroot).startswith("/tmp/")
    for folder in [chroot, *chroot.parents]:
        info = folder.stat()
        assert info.st_uid == 0 and not info.st_mode & 0o022, folder  # what sshd demands
    remote = srv.remote_dir()
    (remote.real / "marker").write_text("inside")
    client = connect(srv, srv.addresses[0])
    try:
        sftp = client.open_sftp()
        assert sftp.listdir("/") == [CHROOT_UPLOAD]
        assert sftp.normalize("/..") == "/"
        with pytest.raises(IOError):
            sftp.stat("/etc/passwd")
        with sftp.open(remote.at("marker")) as handle:
            assert handle.read() == b"inside"
        sftp.close()
    finally:
        client.close()
    assert remote.seen == f"/{CHROOT_UPLOAD}/{remote.real.name}"


def test_scp_only_account_refuses_shell_accepts_scp(scp_only_account_server):
    srv = scp_only_account_server
    remote = srv.remote_dir()
    client = connect(srv, srv.addresses[0])
    try:
        for command in ["sh -c 'echo MARKER'", "echo MARKER", f"scp -t {remote.seen}; echo MARKER",
                        f"scp -t $(echo {remote.seen})"]:
            status, out, err = run(client, command)
            assert (status, out, err.strip()) == (1, "", SCP_ONLY_REFUSAL), command
        # scp's sink protocol: a \0 from the sink after each step.
        status, out, err = run(client, f"scp -t -- {remote.seen}/",
                               stdin=b"C0640 9 via-scp.txt\nover scp\n\0")
        assert (status, out, err) == (0, "\0\0\0", "")
        with pytest.raises((paramiko.SSHException, EOFError)):
            client.open_sftp()
    finally:
        client.close()
    on_disk = remote.real / "via-scp.txt"
    assert on_disk.read_bytes() == b"over scp\n"
    assert on_disk.stat().st_mode & 0o777 == 0o640


def test_fixture_scripts_pass_shellcheck(dropbear_busybox_server, scp_only_account_server):
    scripts = [dropbear_busybox_server.workdir / "busybox-command", scp_only_account_server.workdir / "scp-only"]
    assert all(script.exists() for script in scripts)
    done = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_testing_package_is_not_installed():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    include = config.get("options.packages.find", "include").split()
    packages = find_packages(str(ROOT), include=include)
    assert "synctasks" in packages
    assert not [p for p in packages if p.split(".")[0] in ("testing", "tests", "bench")]
    assert not (ROOT / "synctasks" / "testserver.py").exists()
    assert "python -m testing.demo" in (ROOT / "scripts" / "demo.sh").read_text()
