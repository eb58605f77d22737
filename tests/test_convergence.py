"""Convergence and honesty (issue 11): a second run with nothing changed
sends nothing, committed work stays in the result whatever happens after,
sudo never waits for a password it cannot get, a busy dest is said in one
line, and the run's token is never on a command line. Real sshd."""

from __future__ import annotations

import json
import os
import threading
import time

from conftest import MAIN_HOSTS, give

from synctasks.constants import STAGING_PREFIX
from testing.testproxy import TcpProxy


def run_report(project, *args, capsys=None):
    path = project.root / "report.json"
    status, out, err = project.run("--json", str(path), *args, capsys=capsys)
    return status, json.loads(path.read_text()), out + err


def test_setgid_folder_is_not_chmodded_every_run(project, server, remote, capsys):
    project.file("site/sub/a.txt", "a")
    (project.root / "site/sub").chmod(0o755)
    (project.root / "site").chmod(0o755)
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    assert project.run()[0] == 0
    os.chmod(remote / "www/sub", 0o2755)  # the host's policy: group-inheriting folders
    status, rep, _ = run_report(project, capsys=capsys)
    assert status == 0 and rep["changed"] is False
    assert (remote / "www/sub").stat().st_mode & 0o7777 == 0o2755


def test_pre_1970_mtime_converges(project, server, remote, capsys):
    old = project.file("site/old.txt", "from the sixties")
    os.utime(old, ns=(-100_000 * 10**9, -100_000 * 10**9))
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    status, rep, _ = run_report(project, capsys=capsys)
    assert status == 0 and rep["hosts"][0]["sent"] == 1
    assert (remote / "www/old.txt").stat().st_mtime == -100_000
    status, rep, _ = run_report(project, capsys=capsys)
    assert status == 0 and rep["changed"] is False and rep["hosts"][0]["sent"] == 0


def test_local_file_named_like_staging_is_data(project, server, remote, capsys):
    """Only names of the staging folders' exact shape are leftovers."""
    project.file(f"site/{STAGING_PREFIX}notes.txt", "mine")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    assert project.run()[0] == 0
    assert (remote / "www" / f"{STAGING_PREFIX}notes.txt").read_text() == "mine"
    status, rep, _ = run_report(project, capsys=capsys)
    assert status == 0 and rep["changed"] is False and rep["hosts"][0]["sent"] == 0


def test_numeric_owner_converges(project, server, sudo_rights, server_root, capsys):
    root_dest = server_root / "root-only" / os.urandom(4).hex()
    root_dest.mkdir(parents=True)
    project.file("conf/app.conf", "x\n")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "conf/app.conf", "dest": f"{root_dest}/app.conf",
                                               "sudo": True, "owner": "1"}], auth="password")
    assert project.run()[0] == 0
    assert (root_dest / "app.conf").stat().st_uid == 1
    status, rep, _ = run_report(project, capsys=capsys)
    assert status == 0 and rep["changed"] is False


def test_sudo_mappings_failing_keep_the_committed_plain_ones(project, server, sudo_rights, server_root,
                                                             remote, capsys):
    """A wrong sudo password after the plain mappings committed: the result
    still lists what was replaced and says changed."""
    root_dest = server_root / "root-only" / os.urandom(4).hex()
    root_dest.mkdir(parents=True)
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/plain"},
                                              {"src": "site", "dest": f"{root_dest}/www", "sudo": True}],
                     auth="password")
    os.environ["SYNCTASKS_TEST_WRONG"] = "wrong password"
    project.hosts[0]["sudo_passkey_env"] = "SYNCTASKS_TEST_WRONG"
    try:
        status, rep, text = run_report(project, capsys=capsys)
    finally:
        del os.environ["SYNCTASKS_TEST_WRONG"]
    host = rep["hosts"][0]
    assert status == 1 and host["ok"] is False and "sudo" in (host["error"] or "")
    assert host["changed"] is True and host["sent"] == 1
    assert [m["dest"] for m in host["mappings"]] == [f"{remote}/plain"]
    assert (remote / "plain/a.txt").read_text() == "a"


def test_key_login_sudo_without_password_fails_at_once(project, server, sudo_rights, server_root, capsys):
    root_dest = server_root / "root-only" / os.urandom(4).hex()
    root_dest.mkdir(parents=True)
    project.file("conf/app.conf", "x\n")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "conf/app.conf", "dest": f"{root_dest}/app.conf",
                                               "sudo": True}])  # key login: no password to give sudo
    started = time.monotonic()
    status, out, _ = project.run(capsys=capsys)
    assert status == 1 and time.monotonic() - started < 10
    assert "sudo wants a password and none was given" in out
    assert not (root_dest / "app.conf").exists()


def test_busy_dest_and_secret_token(project, server, remote, capsys):
    """While a run is mid-transfer: its token is on no command line of the
    host, and a second run at the same dest fails in one clear line."""
    project.file("data/big.bin", os.urandom(8 << 20))
    dest = remote / "www"
    dest.mkdir()
    give(server, dest)
    with TcpProxy((MAIN_HOSTS[0], server.port), listen=(MAIN_HOSTS[0], 0)) as proxy:
        project.add_host(server, MAIN_HOSTS[0], [{"src": "data", "dest": str(dest)}], port=proxy.port)
        project.write()
        from synctasks import cli

        first: list[int] = []
        proxy.cut_after = None
        runner = threading.Thread(target=lambda: first.append(
            cli.main(["--config", str(project.config_path), "--quiet"])))
        runner.start()
        deadline = time.monotonic() + 20
        staging = []
        while not staging and time.monotonic() < deadline:
            staging = [p for p in dest.iterdir() if p.name.startswith(STAGING_PREFIX)]
            time.sleep(0.01)
        assert staging, "the first run never started its transfer"
        proxy.stall()
        try:
            secret = staging[0].name.rsplit("-", 1)[1]
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
                    except OSError:
                        continue
                    assert secret.encode() not in cmdline, f"the run's token is on the command line of {pid}"
            # The second run, straight to the server.
            second = type(project)(project.root.parent / "second")
            second.file("data/x.txt", "x")
            second.add_host(server, MAIN_HOSTS[0], [{"src": "data", "dest": str(dest)}])
            status, out, err = second.run(capsys=capsys)
            assert status == 1
            assert "another synctasks run is syncing" in out and "Directory not empty" not in out + err
        finally:
            proxy.resume()
        runner.join(60)
    assert first == [0]
    assert (dest / "big.bin").stat().st_size == 8 << 20
    assert [p for p in dest.iterdir() if p.name.startswith(STAGING_PREFIX)] == []
