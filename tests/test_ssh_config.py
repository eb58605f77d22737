"""ssh_config aliases and ProxyJump (Fabric's loading), in both connection paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MAIN_HOSTS

from testing.testproxy import TcpProxy

BIN = Path(sys.executable).parent


def write_ssh_config(project, server, jump_port: int | None = None) -> Path:
    lines = [
        "Host web-alias",
        f"    HostName {MAIN_HOSTS[1]}",
        f"    Port {server.port}",
        f"    User {server.user}",
        f"    IdentityFile {server.client_key}",
    ]
    if jump_port:
        lines += ["    ProxyJump jumphost", "Host jumphost", f"    HostName {MAIN_HOSTS[0]}",
                  f"    Port {jump_port}", f"    User {server.user}", f"    IdentityFile {server.client_key}"]
    path = project.root / "ssh_config"
    path.write_text("\n".join(lines) + "\n")
    project.config["sync"]["ssh_config"] = str(path)
    return path


def alias_project(project, server, remote):
    project.file("site/a.txt", "via alias")
    project.hosts.append({"ip_address": "web-alias"})  # user, port, key: all from ssh_config
    project.map("web-alias", [{"src": "site", "dest": f"{remote}/alias"}])
    with open(project.known_hosts, "a") as handle:
        handle.write(f"[{MAIN_HOSTS[1]}]:{server.port} {server.host_key_line}\n")


@pytest.mark.parametrize("path", ["fabric", "console"])
def test_alias_supplies_host_user_port_and_key(project, server, remote, path, capsys):
    write_ssh_config(project, server)
    alias_project(project, server, remote)
    if path == "fabric":
        status, out, _ = project.run(capsys=capsys)
    else:
        project.write()
        done = subprocess.run([str(BIN / "synctasks"), "sync", "--config", str(project.config_path)],
                              capture_output=True, text=True)
        status, out = done.returncode, done.stdout + done.stderr
    assert status == 0, out
    assert (remote / "alias/a.txt").read_text() == "via alias"


@pytest.mark.parametrize("path", ["fabric", "console"])
def test_proxyjump_goes_through_the_jump_host(project, server, remote, path):
    with TcpProxy((MAIN_HOSTS[0], server.port), listen=(MAIN_HOSTS[0], 0)) as jump_door:
        write_ssh_config(project, server, jump_port=jump_door.port)
        alias_project(project, server, remote)
        with open(project.known_hosts, "a") as handle:
            handle.write(f"[{MAIN_HOSTS[0]}]:{jump_door.port} {server.host_key_line}\n")
        project.write()
        if path == "fabric":
            status = project.run()[0]
        else:
            status = subprocess.run([str(BIN / "synctasks"), "sync", "--config", str(project.config_path)],
                                    capture_output=True).returncode
        assert status == 0
        assert jump_door.bytes_forwarded > 1000  # the session went through the jump host
    assert (remote / "alias/a.txt").read_text() == "via alias"


def test_unknown_jump_host_key_is_refused(project, server, remote, capsys):
    with TcpProxy((MAIN_HOSTS[0], server.port), listen=(MAIN_HOSTS[0], 0)) as jump_door:
        write_ssh_config(project, server, jump_port=jump_door.port)
        alias_project(project, server, remote)  # the jump host's key is NOT in known_hosts
        status, out, _ = project.run(capsys=capsys)
    assert status == 1 and "unknown host key" in out
    assert not (remote / "alias").exists()


def test_only_accepts_patterns(project, server, remote, capsys):
    project.file("site/a", "a")
    for address in MAIN_HOSTS:
        project.add_host(server, address, [{"src": "site", "dest": f"{remote}/{address}"}])
    status, out, _ = project.run("--only", "127.0.0.[23]", capsys=capsys)
    assert status == 0
    assert sorted(p.name for p in remote.iterdir()) == MAIN_HOSTS[:2]
