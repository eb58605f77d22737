"""Host keys are checked by [security] host_key_policy, against the real sshd."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import MAIN_HOSTS
from fabric import Connection

from synctasks import cli
from synctasks.connection import build_connection, open_connection
from synctasks.errors import HostKeyError
from synctasks.inputs import HostEntry, load_settings


def other_key_line(tmp_path) -> str:
    key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return " ".join((tmp_path / "other_host_key.pub").read_text().split()[:2])


def test_fabric_alone_trusts_any_key_but_we_do_not(server, project):
    project.write()
    settings = load_settings(project.config_path, env={})
    entry = HostEntry(name=MAIN_HOSTS[0], user=server.user, port=server.port, key_filename=str(server.client_key))
    # Fabric's own Connection: AutoAddPolicy, no known_hosts, accepts silently.
    plain = Connection(MAIN_HOSTS[0], user=server.user, port=server.port,
                       connect_kwargs={"key_filename": [str(server.client_key)]})
    plain.open()
    assert plain.is_connected
    plain.close()
    # Ours, strict against an empty known_hosts: refused before login.
    c = build_connection(entry, settings)
    with pytest.raises(HostKeyError, match="unknown host key .* for \\[127.0.0.2\\]"):
        open_connection(c, entry.name)
    assert not c.is_connected


def test_unknown_key_refused_under_strict_nothing_sent(project, server, remote, capsys):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}], trust=False)
    status, out, _ = project.run(capsys=capsys)
    assert status == 1
    assert "unknown host key" in out and "ssh-keyscan -p" in out and "accept-new" in out
    assert list(remote.iterdir()) == []


def test_accept_new_records_then_refuses_a_changed_key(project, server, remote, capsys, tmp_path):
    project.file("site/a.txt", "a")
    project.config["security"]["host_key_policy"] = "accept-new"
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}], trust=False)
    status, out, err = project.run(capsys=capsys)
    assert status == 0
    recorded = project.known_hosts.read_text()
    assert f"[{MAIN_HOSTS[0]}]:{server.port} {server.host_key_line}" in recorded
    assert "new host key" in err

    # The server "changes" its key: known_hosts now holds another one.
    project.known_hosts.write_text("# comment\n" + f"[{MAIN_HOSTS[0]}]:{server.port} {other_key_line(tmp_path)}\n")
    (remote / "x/a.txt").unlink()
    status, out, _ = project.run(capsys=capsys)
    assert status == 1
    assert "host key CHANGED" in out and f"{project.known_hosts} line 2" in out and "ssh-keygen -R" in out
    assert not (remote / "x/a.txt").exists()


def test_changed_key_refused_under_strict(project, server, remote, capsys, tmp_path):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}], trust=False)
    project.known_hosts.write_text(f"[{MAIN_HOSTS[0]}]:{server.port} {other_key_line(tmp_path)}\n")
    status, out, _ = project.run(capsys=capsys)
    assert status == 1 and "host key CHANGED" in out and "line 1" in out


def test_policy_off_warns_and_connects(project, server, remote, capsys):
    project.file("site/a.txt", "a")
    project.config["security"]["host_key_policy"] = "off"
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}], trust=False)
    status, out, err = project.run(capsys=capsys)
    assert status == 0
    assert "NOT checked" in err
    assert (remote / "x/a.txt").read_text() == "a"
    assert project.known_hosts.read_text() == ""


def test_hashed_known_hosts_entries_work(project, server, remote):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}])
    subprocess.run(["ssh-keygen", "-H", "-f", str(project.known_hosts)], check=True, capture_output=True)
    assert "|1|" in project.known_hosts.read_text()
    status, _, _ = project.run()
    assert status == 0


# --------------------------------------------------------------------------
# Connections the caller made, and the inventory's own (issue 12, item 4)
# --------------------------------------------------------------------------
def fabric_connection(server, address=MAIN_HOSTS[0]) -> Connection:
    """A Connection as a task makes it: Fabric's AutoAddPolicy, no known_hosts."""
    return Connection(address, user=server.user, port=server.port,
                      connect_kwargs={"key_filename": [str(server.client_key)]})


def test_open_connection_is_checked_whoever_opened_it(server, tmp_path, capsys):
    from synctasks.connection import verify_host_key

    known = tmp_path / "known_hosts"
    with fabric_connection(server) as c:
        assert c.run("echo hi", hide=True, in_stream=False).stdout == "hi\n"  # Fabric trusted the key already
        with pytest.raises(HostKeyError, match=r"unknown host key .* for \[127\.0\.0\.2\]"):
            verify_host_key(c, "strict", known)
        known.write_text(f"[{MAIN_HOSTS[0]}]:{server.port} {other_key_line(tmp_path)}\n")
        with pytest.raises(HostKeyError, match="host key CHANGED .* line 1"):
            verify_host_key(c, "strict", known)
        with pytest.raises(HostKeyError, match="host key CHANGED"):
            verify_host_key(c, "accept-new", known)  # accept-new never takes a changed key
        server.write_known_hosts(known)
        verify_host_key(c, "strict", known)  # known: no error
        verify_host_key(c, "strict", str(known))
    # accept-new on an open connection records the key, once.
    fresh = tmp_path / "fresh" / "known_hosts"
    with fabric_connection(server) as c:
        c.run("true", hide=True, in_stream=False)
        verify_host_key(c, "accept-new", fresh)
        verify_host_key(c, "accept-new", fresh)
        verify_host_key(c, "strict", fresh)
    assert fresh.read_text() == f"[{MAIN_HOSTS[0]}]:{server.port} {server.host_key_line}\n"


def test_inventory_connections_and_group_carry_the_policy(project, server, remote, sudo_rights):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/one"}], auth="password")
    project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": f"{remote}/two"}])
    project.add_host(server, MAIN_HOSTS[2], [{"src": "site", "dest": f"{remote}/three"}], trust=False)
    project.write()
    from synctasks import load_inventory, sync_host
    from synctasks.connection import verify_host_key

    inventory = load_inventory(project.config_path, env={})
    c = inventory.connection(MAIN_HOSTS[0])
    assert isinstance(c, Connection)
    with c:
        result = sync_host(c, inventory.mappings[MAIN_HOSTS[0]])
        assert result.changed
        # ... then restart: the same Connection, sudo's password already set.
        assert c.sudo("id -un", hide=True, in_stream=False).stdout.strip() == "root"
        verify_host_key(c)  # the inventory's own policy and known_hosts
    assert (remote / "one/a.txt").read_text() == "a"

    untrusted = inventory.connection(MAIN_HOSTS[2])
    with pytest.raises(HostKeyError, match="unknown host key"):
        untrusted.run("true", hide=True, in_stream=False)  # Fabric's c.run, our policy: refused before login
    assert not untrusted.is_connected

    from fabric import ThreadingGroup
    from fabric.exceptions import GroupException

    group = inventory.group()
    assert isinstance(group, ThreadingGroup) and len(group) == 3
    with pytest.raises(GroupException) as caught:
        group.run("true", hide=True, in_stream=False)
    results = {c.original_host: r for c, r in caught.value.result.items()}
    assert isinstance(results[MAIN_HOSTS[2]], HostKeyError)
    assert results[MAIN_HOSTS[0]].ok and results[MAIN_HOSTS[1]].ok
    trusted = inventory.group(only=f"{MAIN_HOSTS[0]},{MAIN_HOSTS[1]}")
    assert sorted(c.original_host for c in trusted.run("true", hide=True, in_stream=False)) == MAIN_HOSTS[:2]
    group.close()
    trusted.close()


# --------------------------------------------------------------------------
# Where known keys are read from (issue 11), first contact (issue 12, item 10)
# --------------------------------------------------------------------------
def test_global_known_hosts_file_is_read(project, server, remote):
    from synctasks.connection import GLOBAL_KNOWN_HOSTS

    assert GLOBAL_KNOWN_HOSTS[0] == Path("/etc/ssh/ssh_known_hosts")
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[2], [{"src": "site", "dest": f"{remote}/x"}], trust=False)
    line = f"[{MAIN_HOSTS[2]}]:{server.port} {server.host_key_line}"  # this session's port only
    system = Path("/etc/ssh/ssh_known_hosts")
    before = system.read_text() if system.exists() else None
    try:
        with open(system, "a") as handle:
            handle.write(line + "\n")
        status, _, _ = project.run()
    finally:
        if before is None:
            system.unlink()
        else:
            system.write_text(before)
    assert status == 0 and (remote / "x/a.txt").read_text() == "a"
    assert project.known_hosts.read_text() == ""


@pytest.mark.parametrize("option", ["UserKnownHostsFile", "GlobalKnownHostsFile"])
def test_ssh_config_known_hosts_files_are_read(project, server, remote, tmp_path, option):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": f"{remote}/x"}], trust=False)
    elsewhere = tmp_path / "elsewhere" / "known"
    elsewhere.parent.mkdir()
    elsewhere.write_text(f"[{MAIN_HOSTS[1]}]:{server.port} {server.host_key_line}\n")
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host {MAIN_HOSTS[1]}\n    {option} /nonexistent/first {elsewhere}\n")
    project.config["sync"]["ssh_config"] = str(ssh_config)
    status, _, _ = project.run()
    assert status == 0 and (remote / "x/a.txt").read_text() == "a"
    assert project.known_hosts.read_text() == ""
    # The console script's paramiko-only connections read them too.
    (remote / "x/a.txt").unlink()
    assert cli.main(["--config", str(project.config_path), "sync"], lightweight=True) == 0
    assert (remote / "x/a.txt").read_text() == "a"
    elsewhere.write_text("")
    assert cli.main(["--config", str(project.config_path), "sync"], lightweight=True) == 1


def test_first_contact_hint_works_on_a_fresh_machine(project, server, remote, tmp_path, capsys):
    fresh = tmp_path / "home" / ".ssh" / "known_hosts"  # no ~/.ssh yet
    fresh.parent.parent.mkdir()
    project.config["security"]["known_hosts"] = str(fresh)
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}], trust=False)
    status, out, err = project.run(capsys=capsys)
    assert status == 1
    message = next(line for line in err.splitlines() if "unknown host key" in line)
    assert "host_key_policy = accept-new" in message and "SYNCTASKS_SECURITY_HOST_KEY_POLICY=accept-new" in message
    assert f"there is no {fresh} yet" in message
    command = message.split("record it now: ", 1)[1]
    assert command.startswith("mkdir -p -m 700 ")
    subprocess.run(["sh", "-c", command], check=True, capture_output=True)
    assert (fresh.parent.stat().st_mode & 0o777) == 0o700
    status, _, _ = project.run(capsys=capsys)
    assert status == 0 and (remote / "x/a.txt").read_text() == "a"


def test_accept_new_makes_ssh_folder_private(project, server, remote, tmp_path, monkeypatch):
    fresh = tmp_path / "home" / ".ssh" / "known_hosts"
    fresh.parent.parent.mkdir()
    project.config["security"]["known_hosts"] = str(fresh)
    monkeypatch.setenv("SYNCTASKS_SECURITY_HOST_KEY_POLICY", "accept-new")  # the one-run way
    old = os.umask(0o022)
    try:
        project.file("site/a.txt", "a")
        project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}], trust=False)
        status, _, _ = project.run()
    finally:
        os.umask(old)
    assert status == 0
    assert (fresh.parent.stat().st_mode & 0o777) == 0o700
    assert fresh.read_text() == f"[{MAIN_HOSTS[0]}]:{server.port} {server.host_key_line}\n"


def test_revoked_key_is_refused(project, server, remote, capsys):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}])
    with open(project.known_hosts, "a") as handle:
        handle.write(f"@revoked * {server.host_key_line}\n")
    status, out, err = project.run(capsys=capsys)
    assert status == 1 and "REVOKED" in err
    assert not (remote / "x").exists()


# --------------------------------------------------------------------------
# No credentials: an auth error at once, never retried (issue 12, item 9)
# --------------------------------------------------------------------------
def test_no_credentials_is_an_auth_error_not_retried(project, server, remote, tmp_path, monkeypatch, capsys):
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # no ~/.ssh/id_* to fall back on
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    project.config["sync"]["retries"] = "3"
    project.file("site/a.txt", "a")
    entry = project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}])
    del entry["key_filename"]
    started = time.monotonic()
    status, out, err = project.run(capsys=capsys)
    assert status == 1
    assert time.monotonic() - started < 3  # three retries with backoff would take longer
    assert f"no credentials to log in as '{server.user}'" in err
    log = (project.root / "logs/info.log").read_text()
    assert "no credentials" in log and "retry" not in log


def test_no_credentials_via_api_raises_auth_error(server, tmp_path, monkeypatch):
    from synctasks.connection import apply_host_key_policy, open_connection
    from synctasks.errors import AuthError

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    c = apply_host_key_policy(Connection(MAIN_HOSTS[0], user=server.user, port=server.port), "strict",
                              server.write_known_hosts(tmp_path / "known_hosts"))
    with pytest.raises(AuthError, match="no credentials"):
        open_connection(c, MAIN_HOSTS[0], retries=3, backoff=5)


def test_accept_new_appends_after_a_last_line_without_newline(server, tmp_path):
    from synctasks.connection import verify_host_key

    known = tmp_path / "known_hosts"
    known.write_text("# kept, no newline at the end")
    with fabric_connection(server) as c:
        c.run("true", hide=True, in_stream=False)
        verify_host_key(c, "accept-new", known)
    assert known.read_text().splitlines() == ["# kept, no newline at the end",
                                              f"[{MAIN_HOSTS[0]}]:{server.port} {server.host_key_line}"]


def test_open_connection_through_a_jump_host_checks_the_jump_host_too(server, tmp_path):
    """A task's own ProxyJump Connection, opened by Fabric (trusting both keys):
    the jump host's key is checked as well."""
    from fabric import Config

    from synctasks.connection import verify_host_key
    from testing.testproxy import TcpProxy

    with TcpProxy((MAIN_HOSTS[0], server.port), listen=(MAIN_HOSTS[0], 0)) as jump_door:
        ssh_config = tmp_path / "ssh_config"
        ssh_config.write_text("\n".join([
            "Host web-alias", f"    HostName {MAIN_HOSTS[1]}", f"    Port {server.port}", f"    User {server.user}",
            f"    IdentityFile {server.client_key}", "    ProxyJump jumphost",
            "Host jumphost", f"    HostName {MAIN_HOSTS[0]}", f"    Port {jump_door.port}", f"    User {server.user}",
            f"    IdentityFile {server.client_key}"]) + "\n")
        known = tmp_path / "known_hosts"
        known.write_text(f"[{MAIN_HOSTS[1]}]:{server.port} {server.host_key_line}\n")  # the target only
        c = Connection("web-alias", config=Config(runtime_ssh_path=str(ssh_config)))
        with c:
            c.run("true", hide=True, in_stream=False)
            with pytest.raises(HostKeyError, match=rf"web-alias via jumphost: unknown host key .*:{jump_door.port}"):
                verify_host_key(c, "strict", known)
            with open(known, "a") as handle:
                handle.write(f"[{MAIN_HOSTS[0]}]:{jump_door.port} {server.host_key_line}\n")
            verify_host_key(c, "strict", known)
