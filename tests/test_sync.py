"""End to end: `sync` against the real OpenSSH server on 127.0.0.2-4."""

from __future__ import annotations

import os
import time

from conftest import MAIN_HOSTS, UNREACHABLE_HOST, leftover_name, tree_state, without_inodes

from synctasks.constants import STAGING_PREFIX

#: Names that break naive remote shell commands or SCP headers.
ODD_NAMES = ["with space.txt", "ünïcødé-файл.txt", "it's \"quoted\".txt", "$HOME and $(id).txt", "-leading-dash",
             "semi;colon|pipe&amp.txt", "back`tick`.txt"]


def make_tree(project) -> os.PathLike:
    src = project.root / "site"
    project.file("site/index.html", "<h1>hi</h1>\n")
    project.file("site/empty", b"")
    project.file("site/bin/run.sh", "#!/bin/sh\necho run\n", mode=0o755)
    project.file("site/secret/key.pem", "PRIVATE\n", mode=0o600)
    project.file("site/a/b/c/d/deep.bin", os.urandom(70000))
    project.file("site/big.bin", os.urandom(3 * 1024 * 1024 + 17))
    for name in ODD_NAMES:
        project.file(f"site/odd/{name}", f"content of {name}\n")
    project.file("site/dir with space/file", "x")
    # An old mtime (with microseconds) must survive the trip.
    old = 1_500_000_000_123_456_000
    os.utime(src / "index.html", ns=(old, old))
    return src


def test_three_hosts_get_identical_trees(project, server, remote):
    src = make_tree(project)
    for address in MAIN_HOSTS:
        project.add_host(server, address, [{"src": "site", "dest": f"{remote}/{address}/www"}])
    status, out, err = project.run(capsys=None)
    assert status == 0
    expected = without_inodes(tree_state(src))
    for address in MAIN_HOSTS:
        assert without_inodes(tree_state(remote / address / "www")) == expected
    leftovers = [p for p in remote.rglob("*") if p.name.startswith(STAGING_PREFIX)]
    assert leftovers == []


def test_report_counts_and_changed_flag(project, server, remote, capsys):
    make_tree(project)
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    status, out, _ = project.run("--json", str(project.root / "r.json"), capsys=capsys)
    assert status == 0
    import json

    report = json.loads((project.root / "r.json").read_text())
    host = report["hosts"][0]
    files = [p for p in (project.root / "site").rglob("*") if p.is_file()]
    assert host["sent"] == len(files)
    assert host["bytes"] == sum(p.stat().st_size for p in files)
    assert host["changed"] is True and host["ok"] is True
    assert "127.0.0.2" in out and "ok" in out


def test_trailing_slash_means_into_folder(project, server, remote):
    project.file("conf/app.conf", "port=1\n")
    project.file("site/index.html", "hi")
    project.add_host(server, MAIN_HOSTS[0], [
        {"src": "conf/app.conf", "dest": f"{remote}/etc/app/"},
        {"src": "site", "dest": f"{remote}/srv/"},
        {"src": "site", "dest": f"{remote}/exact/name"},
        {"src": "conf/app.conf", "dest": f"{remote}/etc/renamed.conf"},
    ])
    status, _, _ = project.run()
    assert status == 0
    assert (remote / "etc/app/app.conf").read_text() == "port=1\n"
    assert (remote / "srv/site/index.html").read_text() == "hi"
    assert (remote / "exact/name/index.html").read_text() == "hi"
    assert (remote / "etc/renamed.conf").read_text() == "port=1\n"
    assert not (remote / "exact/name/site").exists()


def test_file_replaced_atomically_keeps_no_temp(project, server, remote):
    project.file("conf/app.conf", "new contents\n")
    target = remote / "etc" / "app.conf"
    target.parent.mkdir()
    target.write_text("old\n")
    os.chown(target.parent, *_owner(remote))
    # A leftover of a cut run: the next run removes it.
    stale = target.parent / leftover_name()
    stale.mkdir()
    (stale / "app.conf").write_text("partial")
    os.chown(stale, *_owner(remote))
    project.add_host(server, MAIN_HOSTS[0], [{"src": "conf/app.conf", "dest": str(target)}])
    status, _, _ = project.run()
    assert status == 0
    assert target.read_text() == "new contents\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["app.conf"]


def _owner(path):
    info = path.stat()
    return info.st_uid, info.st_gid


def test_unreachable_host_fails_others_sync(project, server, remote, capsys):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/ok"}])
    entry = project.add_host(server, UNREACHABLE_HOST, [{"src": "site", "dest": f"{remote}/never"}], trust=False)
    entry["port"] = server.port
    started = time.monotonic()
    status, out, _ = project.run(capsys=capsys)
    assert status == 1
    assert (remote / "ok/a.txt").read_text() == "a"
    assert not (remote / "never").exists()
    assert f"{UNREACHABLE_HOST}: FAILED" in out and "cannot connect" in out
    assert time.monotonic() - started < 30


def test_logs_written_without_password(project, server, remote):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/pw"}], auth="password")
    project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": "/nonexistent-root-only/x"}])
    status, _, _ = project.run("--verbose")
    assert status == 1  # the second host cannot write there
    info_log = (project.root / "logs/info.log").read_text()
    error_log = (project.root / "logs/error.log").read_text()
    assert "[127.0.0.2]" in info_log and "DEBUG" in info_log and "INFO" in info_log
    assert "[127.0.0.3]" in error_log and "ERROR" in error_log
    assert "DEBUG" not in error_log and "INFO " not in error_log
    assert server.password not in info_log + error_log
    assert (remote / "pw/a.txt").read_text() == "a"


def test_wrong_password_is_auth_error(project, server, remote, capsys):
    project.file("site/a.txt", "a")
    entry = project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}], auth="password")
    entry["passkey"] = "definitely-wrong-password"
    status, out, err = project.run(capsys=capsys)
    assert status == 1
    assert "login refused" in out
    assert "definitely-wrong-password" not in out + err + (project.root / "logs/info.log").read_text()


def test_passkey_env_reads_secret_from_environment(project, server, remote, monkeypatch):
    project.file("site/a.txt", "a")
    entry = project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/env"}], auth="password")
    del entry["passkey"]
    entry["passkey_env"] = "SYNCTASKS_TEST_SECRET"
    monkeypatch.setenv("SYNCTASKS_TEST_SECRET", server.password)
    status, _, _ = project.run()
    assert status == 0
    assert (remote / "env/a.txt").read_text() == "a"


def test_newline_in_local_name_is_refused_not_mangled(project, server, remote, capsys):
    project.file("site/ok.txt", "ok")
    project.file("site/bad\nname", "x")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/nl"}])
    status, out, _ = project.run(capsys=capsys)
    assert status == 1
    assert "newline" in out
    assert sorted(p.name for p in (remote / "nl").iterdir()) == ["ok.txt"]


def test_permission_denied_dest_is_a_clear_failure(project, server, remote, capsys):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": "/root/not-yours/site"}])
    status, out, _ = project.run(capsys=capsys)
    assert status == 1
    assert 'not writable by' in out and 'set "sudo": true' in out
    assert not os.path.exists("/root/not-yours")


def test_shell_metacharacters_in_dest_are_literal(project, server, remote):
    marker = remote / "INJECTED"  # the login user could create it, were anything injected
    project.file("conf/app.conf", "x")
    weird = f"{remote}/$(touch {marker})/a;touch {marker};b/`touch {marker}`"
    project.add_host(server, MAIN_HOSTS[0], [{"src": "conf/app.conf", "dest": weird + "/"}])
    status, _, _ = project.run()
    assert status == 0
    assert not marker.exists()
    assert open(weird + "/app.conf").read() == "x"
