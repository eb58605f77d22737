"""The Python API and the entry points (fab, the console script, python -m)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MAIN_HOSTS, give
from fabric import Connection

import synctasks
from synctasks import GroupSyncFailed, HostKeyError, SyncFailed, sync_host, sync_inventory
from synctasks.connection import apply_host_key_policy

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def connection(server, known_hosts) -> Connection:
    c = Connection(MAIN_HOSTS[0], user=server.user, port=server.port,
                   connect_kwargs={"key_filename": [str(server.client_key)]})
    return apply_host_key_policy(c, "strict", known_hosts)


def test_sync_host_reports_changed_only_when_something_changed(project, server, remote, tmp_path):
    project.file("conf/app.conf", "a=1\n")
    known = tmp_path / "known_hosts"
    server.write_known_hosts(known)
    mappings = [{"src": str(project.root / "conf/app.conf"), "dest": f"{remote}/etc/"}]
    with connection(server, known) as c:
        first = sync_host(c, mappings)
        second = sync_host(c, mappings)
    assert first.changed and first.ok and first.sent == 1 and first.bytes == 4
    assert not second.changed and second.skipped == 1 and second.sent == 0
    assert (remote / "etc/app.conf").read_text() == "a=1\n"
    assert first.mappings[0].changed and first.mappings[0].files[0].reason == "new"


def test_sync_host_opens_with_strict_policy_by_default(project, server, remote, tmp_path):
    project.file("conf/app.conf", "a=1\n")
    c = connection(server, tmp_path / "empty_known_hosts")
    with pytest.raises(HostKeyError):
        sync_host(c, [{"src": str(project.root / "conf/app.conf"), "dest": f"{remote}/x"}])


def test_sync_inventory_raises_unless_warn_and_carries_successes(project, server, remote):
    project.file("site/a", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/ok"}])
    project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": "/root/denied/x"}])
    project.write()
    group = sync_inventory(project.config_path, warn=True)
    assert set(group.succeeded) == {MAIN_HOSTS[0]} and set(group.failed) == {MAIN_HOSTS[1]}
    assert group.exit_code == 1
    with pytest.raises(GroupSyncFailed) as caught:
        sync_inventory(project.config_path)
    assert isinstance(caught.value, SyncFailed) and isinstance(caught.value, synctasks.SyncTasksError)
    assert caught.value.result[MAIN_HOSTS[0]].ok
    assert f"{MAIN_HOSTS[1]}: /root/denied/x" in str(caught.value)


def test_failed_delete_is_reported(project, server, remote, capsys):
    project.file("site/a", "a")
    dest = remote / "www"
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": str(dest)}])
    assert project.run()[0] == 0
    locked = dest / "locked"
    (locked / "inner").mkdir(parents=True)  # root-owned: the login user cannot empty it
    (locked / "inner" / "x").write_text("x")
    give(server, dest / "a")
    status, out, _ = project.run("--delete", capsys=capsys)
    assert status == 1
    assert "Permission denied" in out
    assert (locked / "inner" / "x").exists()


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def test_fab_sync_and_host_selection(project, server, remote):
    project.file("site/a.txt", "a")
    for address in MAIN_HOSTS[:2]:
        project.add_host(server, address, [{"src": "site", "dest": f"{remote}/{address}"}])
    project.write()
    done = subprocess.run([str(BIN / "fab"), "-H", MAIN_HOSTS[1], "sync", "--config", str(project.config_path)],
                          cwd=ROOT, capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr
    assert (remote / MAIN_HOSTS[1] / "a.txt").exists() and not (remote / MAIN_HOSTS[0]).exists()
    done = subprocess.run([str(BIN / "fab"), "sync", "--config", str(project.config_path), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, env=_env())
    assert done.returncode == 0 and f"{MAIN_HOSTS[0]}: >f+++++++++" in done.stdout
    listing = subprocess.run([str(BIN / "fab"), "--list"], cwd=ROOT, capture_output=True, text=True, env=_env())
    for name in ("sync", "plan", "validate", "check"):
        assert name in listing.stdout


def test_fab_exit_status_2_on_bad_input(project, server):
    project.add_host(server, MAIN_HOSTS[0], [{"src": "missing", "dest": "/srv/x"}])
    project.write()
    done = subprocess.run([str(BIN / "fab"), "sync", "--config", str(project.config_path)], cwd=ROOT,
                          capture_output=True, text=True, env=_env())
    assert done.returncode == 2
    assert "hosts/127.0.0.2.json entry 1: src" in done.stderr and "does not exist" in done.stderr


@pytest.mark.parametrize("argv", [[str(BIN / "synctasks")], [sys.executable, "-m", "synctasks"]])
def test_console_script(project, server, remote, argv):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/cs"}])
    project.write()
    done = subprocess.run(argv + ["sync", "--config", str(project.config_path)], capture_output=True, text=True,
                          env=_env())
    assert done.returncode == 0, done.stderr
    assert (remote / "cs/a.txt").read_text() == "a"
    helped = subprocess.run(argv + ["sync", "--help"], capture_output=True, text=True, env=_env())
    assert "--dry-run" in helped.stdout and "--delete" in helped.stdout


def test_sync_host_refuses_nested_and_duplicate_dests(project, server, remote, tmp_path):
    """The API checks dests as the mapper files are checked (issue 11),
    before connecting or sending anything."""
    from synctasks import InputError

    project.file("site/a.txt", "a")
    known = server.write_known_hosts(tmp_path / "known_hosts")
    c = connection(server, known)
    for mappings, says in (([{"src": "site", "dest": f"{remote}/www"}, {"src": "site", "dest": f"{remote}/www/sub"}],
                            "inside"),
                           ([{"src": "site", "dest": f"{remote}/www"}, {"src": "site", "dest": f"{remote}/www"}],
                            "also the dest")):
        with pytest.raises(InputError) as caught:
            sync_host(c, mappings, base_dir=project.root)
        assert says in str(caught.value) and "mapping 2: dest" in str(caught.value)
    assert not (remote / "www").exists()
