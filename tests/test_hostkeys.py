"""Host keys are checked by [security] host_key_policy, against the real sshd."""

from __future__ import annotations

import subprocess

import pytest
from conftest import MAIN_HOSTS
from fabric import Connection

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
