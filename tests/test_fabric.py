"""Fabric-native use (issue 12): sync_host raises like c.run unless
warn=True, takes Fabric Groups, and `fab -H` runs every host once with the
user and port typed there. Real sshd, real fab processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MAIN_HOSTS, UNREACHABLE_HOST
from fabric import Connection, SerialGroup, ThreadingGroup

from synctasks import GroupResult, GroupSyncFailed, HostKeyError, SyncFailed, SyncTasksError, sync_host
from synctasks.connection import apply_host_key_policy
from testing.testproxy import TcpProxy

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.pop("SYNCTASKS_CONFIG", None)
    return env


def fab(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "fab"), *args], cwd=cwd, capture_output=True, text=True, env=_env(),
                          timeout=120)


def member(server, known, address=MAIN_HOSTS[0]) -> Connection:
    c = Connection(address, user=server.user, port=server.port,
                   connect_kwargs={"key_filename": [str(server.client_key)]})
    return apply_host_key_policy(c, "strict", known)


# --------------------------------------------------------------------------
# item 2: raise like c.run
# --------------------------------------------------------------------------
def test_failed_file_raises_sync_failed_naming_host_and_path(project, server, remote, tmp_path):
    project.file("site/a", "a")
    locked = remote / "locked"
    locked.mkdir()  # root's: the login user cannot write in it
    known = server.write_known_hosts(tmp_path / "known_hosts")
    mappings = [{"src": str(project.root / "site"), "dest": f"{locked}/site"},
                {"src": str(project.root / "site"), "dest": f"{remote}/open"}]
    with member(server, known) as c:
        with pytest.raises(SyncFailed) as caught:
            sync_host(c, mappings)
        result = sync_host(c, mappings, warn=True)
    error = caught.value
    assert isinstance(error, SyncTasksError) and not isinstance(error, GroupSyncFailed)
    assert error.result.failed and not error.result.ok
    assert error.reasons and all(r.startswith(f"{MAIN_HOSTS[0]}: {locked}/site") for r in error.reasons)
    assert "not writable" in str(error) and f"{MAIN_HOSTS[0]}: {locked}/site" in str(error)
    # warn=True: the same failure comes back as a result; the good mapping went through.
    assert not result.ok and result.failed and (remote / "open/a").read_text() == "a"


# --------------------------------------------------------------------------
# item 3: Groups
# --------------------------------------------------------------------------
def test_threading_group_result_keyed_by_connection(project, server, remote, tmp_path):
    project.file("conf/app.conf", "x=1\n")
    known = server.write_known_hosts(tmp_path / "known_hosts")
    group = ThreadingGroup.from_connections([member(server, known)])
    mappings = [{"src": str(project.root / "conf/app.conf"), "dest": f"{remote}/app.conf"}]
    try:
        results = sync_host(group, mappings)
        again = sync_host(group, mappings)
    finally:
        group.close()
    assert isinstance(results, GroupResult) and list(results) == list(group)
    assert results[group[0]].changed and not again[group[0]].changed
    assert (remote / "app.conf").read_text() == "x=1\n"


def test_group_failure_raises_with_the_successes(project, server, remote, tmp_path):
    project.file("conf/app.conf", "x=1\n")
    known = server.write_known_hosts(tmp_path / "known_hosts")
    good = member(server, known, MAIN_HOSTS[0])
    unknown_key = member(server, tmp_path / "empty_known_hosts", MAIN_HOSTS[1])
    group = SerialGroup.from_connections([good, unknown_key])
    mappings = [{"src": str(project.root / "conf/app.conf"), "dest": f"{remote}/app.conf"}]
    try:
        with pytest.raises(GroupSyncFailed) as caught:
            sync_host(group, mappings)
        returned = sync_host(group, mappings, warn=True)
    finally:
        group.close()
    result = caught.value.result
    assert isinstance(caught.value, SyncFailed)
    assert list(result.succeeded) == [good] and list(result.failed) == [unknown_key]
    assert result[good].changed and "unknown host key" in result[unknown_key].error
    assert result[unknown_key].error_type == HostKeyError.__name__
    assert f"{MAIN_HOSTS[1]}: unknown host key" in str(caught.value)
    assert not returned[good].changed and not returned[unknown_key].ok


# --------------------------------------------------------------------------
# item 5: fab -H
# --------------------------------------------------------------------------
def test_fab_hosts_all_run_in_one_report(project, server, remote):
    project.file("site/a.txt", "a")
    dead = project.add_host(server, UNREACHABLE_HOST, [{"src": "site", "dest": f"{remote}/dead"}], trust=False)
    dead["port"] = server.port
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/live"}])
    project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": f"{remote}/not-asked"}])
    project.write()
    report = project.root / "r.json"
    done = fab("-H", f"{UNREACHABLE_HOST},{MAIN_HOSTS[0]}", "sync", "--config", str(project.config_path),
               "--json", str(report))
    assert done.returncode == 1, done.stderr
    # The failing first host did not stop the run; the unnamed host was left alone.
    assert (remote / "live/a.txt").read_text() == "a" and not (remote / "not-asked").exists()
    hosts = {h["host"]: h["status"] for h in json.loads(report.read_text())["hosts"]}
    assert hosts == {UNREACHABLE_HOST: "FAILED", MAIN_HOSTS[0]: "changed"}
    assert done.stdout.count("HOST ") == 1  # one summary


def test_fab_hosts_user_and_port_are_honored(project, server, remote):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    project.write()
    with TcpProxy((MAIN_HOSTS[0], server.port), listen=(MAIN_HOSTS[0], 0)) as proxy:
        with open(project.known_hosts, "a") as handle:
            handle.write(f"[{MAIN_HOSTS[0]}]:{proxy.port} {server.host_key_line}\n")
        done = fab("-H", f"{server.user}@{MAIN_HOSTS[0]}:{proxy.port}", "sync", "--config",
                   str(project.config_path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert proxy.bytes_forwarded > 0  # the port typed in -H was used
        wrong = fab("-H", f"nobody@{MAIN_HOSTS[0]}", "sync", "--config", str(project.config_path))
    assert (remote / "www/a.txt").read_text() == "a"
    assert wrong.returncode == 1 and "login refused for user 'nobody'" in wrong.stdout


def test_fab_hosts_unknown_host_speaks_of_h(project, server, remote):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    project.write()
    done = fab("-H", "web9.example", "sync", "--config", str(project.config_path))
    assert done.returncode == 2
    assert "-H web9.example: no such host in connection_info.json" in done.stderr
    assert "--only" not in done.stderr
    checked = fab("-H", f"web9.example,{MAIN_HOSTS[0]}", "check", "--config", str(project.config_path))
    assert checked.returncode == 2 and "-H web9.example: no such host" in checked.stderr
    checked = fab("-H", MAIN_HOSTS[0], "check", "--config", str(project.config_path))
    assert checked.returncode == 0 and f"{MAIN_HOSTS[0]}: ok" in checked.stdout


def test_host_strings_parse_like_fabric():
    from synctasks.cli import split_host_string
    from synctasks.errors import InputError

    assert split_host_string("web1") == (None, "web1", None)
    assert split_host_string("deploy@web1:2222") == ("deploy", "web1", 2222)
    assert split_host_string("me@[fe80::1]:22") == ("me", "fe80::1", 22)
    assert split_host_string("fe80::1") == (None, "fe80::1", None)
    with pytest.raises(InputError, match="port 'x' is not a number"):
        split_host_string("web1:x")
    from synctasks.tasks import cli_hosts

    assert cli_hosts(["-H", "a,b@c:2", "sync", "-v"]) == ["a", "b@c:2"]
    assert cli_hosts(["--hosts=a", "sync"]) == ["a"] and cli_hosts(["-Ha,b", "plan"]) == ["a", "b"]
    assert cli_hosts(["sync", "--only", "a"]) is None


def test_user_fabfile_uses_config_next_to_it_and_verbose_flags(project, server, remote):
    """A user's own fabfile importing our tasks: the default config.ini is the
    one next to that fabfile, wherever fab is started below it; -v / -vv."""
    project.file("site/a.txt", "a")
    project.file("site/b.txt", "b")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    project.write()
    (project.root / "fabfile.py").write_text("from synctasks.tasks import plan, sync  # noqa: F401\n")
    below = project.root / "deep" / "er"
    below.mkdir(parents=True)
    assert project.run()[0] == 0
    (project.root / "site/a.txt").write_text("changed")
    changed = fab("sync", "-v", cwd=below)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert f"{MAIN_HOSTS[0]}: >f.s" in changed.stdout and f"{remote}/www/a.txt" in changed.stdout
    assert f"{remote}/www/b.txt" not in changed.stdout
    (project.root / "site/a.txt").write_text("changed again")
    both = fab("sync", "-vv", cwd=below)
    assert f"{remote}/www/a.txt" in both.stdout and f"{remote}/www/b.txt" in both.stdout
    quiet = fab("plan", "--quiet", cwd=below)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip().splitlines() == ["dry run: all 1 host(s) in sync, nothing would change"]


def test_inventory_group_then_run_where_changed(project, server, remote):
    """The README's inventory example: a Group from the inventory, synced, then
    a command only on the members that changed."""
    from synctasks import load_inventory

    project.file("site/index.html", "v1")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/unused"}])
    project.write()
    inventory = load_inventory(project.config_path)
    web = inventory.group(only=MAIN_HOSTS[0])
    mappings = [{"src": str(project.root / "site"), "dest": f"{remote}/app/site"}]
    try:
        for round in (1, 2):
            results = sync_host(web, mappings, settings=inventory.settings)
            for cxn, result in results.items():
                if result.changed:
                    cxn.run(f"echo {round} >> {remote}/app/restarts", hide=True, in_stream=False)
    finally:
        web.close()
    assert list(results) == list(web)
    assert (remote / "app/restarts").read_text() == "1\n"  # the unchanged second round restarted nothing


def test_fab_version_task():
    from synctasks import __version__

    done = fab("version")
    assert done.returncode == 0 and done.stdout.strip() == f"synctasks {__version__}"
