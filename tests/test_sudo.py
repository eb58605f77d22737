"""Privileged and owned destinations: sudo, owner, group, mode — with a
non-root login user and root-owned destinations on the real sshd."""

from __future__ import annotations

import grp
import os
import pwd

import pytest
from conftest import MAIN_HOSTS

from synctasks.constants import STAGING_PREFIX

@pytest.fixture
def root_dest(server_root):
    """A folder only root can write to."""
    path = server_root / "root-only" / os.urandom(4).hex()
    path.mkdir(parents=True)
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o755)
    return path


def test_sudo_writes_where_the_login_user_cannot(project, server, sudo_rights, root_dest, remote):
    project.file("conf/app.conf", "port = 80\n", mode=0o644)
    project.file("site/index.html", "hi")
    target = root_dest / "app.conf"
    target.write_text("old\n")
    project.add_host(server, MAIN_HOSTS[0], [
        {"src": "conf/app.conf", "dest": str(target), "sudo": True, "owner": "root", "group": "daemon",
         "mode": "0640"},
        {"src": "site", "dest": f"{root_dest}/www", "sudo": True},
        {"src": "site", "dest": f"{remote}/plain"},
    ], auth="password")
    status, _, _ = project.run()
    assert status == 0
    info = target.stat()
    assert target.read_text() == "port = 80\n"
    assert (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name) == ("root", "daemon")
    assert info.st_mode & 0o7777 == 0o640
    assert (root_dest / "www/index.html").read_text() == "hi"
    assert (root_dest / "www/index.html").stat().st_uid == 0  # written by root, through sudo
    assert (remote / "plain/index.html").stat().st_uid == pwd.getpwnam(server.user).pw_uid
    assert [p for p in root_dest.rglob("*") if p.name.startswith(STAGING_PREFIX)] == []
    # Second run: nothing to do, ownership and mode already right.
    status, _, _ = project.run()
    assert status == 0 and target.stat().st_ino == info.st_ino


def test_ownership_change_alone_under_sudo_is_a_resend(project, server, sudo_rights, root_dest, capsys):
    """As root, nothing is chowned (or chmodded, touched) in place, where a
    link could be swapped in under us: the file is sent again, its owner set
    in the staging folder, and renamed over."""
    project.file("conf/app.conf", "x\n")
    mapping = {"src": "conf/app.conf", "dest": f"{root_dest}/app.conf", "sudo": True}
    project.add_host(server, MAIN_HOSTS[0], [mapping], auth="password")
    assert project.run()[0] == 0
    inode = (root_dest / "app.conf").stat().st_ino
    mapping["group"] = "daemon"
    project.map(MAIN_HOSTS[0], [mapping])
    status, out, _ = project.run("--verbose", capsys=capsys)
    assert status == 0 and ">f....og..." in out
    assert grp.getgrgid((root_dest / "app.conf").stat().st_gid).gr_name == "daemon"
    assert (root_dest / "app.conf").stat().st_ino != inode


def test_key_login_with_separate_sudo_secret(project, server, sudo_rights, root_dest, monkeypatch):
    project.file("conf/app.conf", "x\n")
    entry = project.add_host(server, MAIN_HOSTS[0], [{"src": "conf/app.conf", "dest": f"{root_dest}/",
                                                      "sudo": True}])
    entry["sudo_passkey_env"] = "SYNCTASKS_T_SUDO"
    monkeypatch.setenv("SYNCTASKS_T_SUDO", server.password)
    status, _, _ = project.run()
    assert status == 0 and (root_dest / "app.conf").read_text() == "x\n"
    log = (project.root / "logs/info.log").read_text()
    assert server.password not in log


def test_wrong_sudo_password_fails_fast_and_clearly(project, server, sudo_rights, root_dest, capsys,
                                                     monkeypatch):
    project.file("conf/app.conf", "x\n")
    entry = project.add_host(server, MAIN_HOSTS[0], [{"src": "conf/app.conf", "dest": f"{root_dest}/",
                                                      "sudo": True}])
    entry["sudo_passkey_env"] = "SYNCTASKS_T_SUDO"
    monkeypatch.setenv("SYNCTASKS_T_SUDO", "not-the-password")
    status, out, err = project.run(capsys=capsys)
    assert status == 1 and "sudo refused" in out
    assert not (root_dest / "app.conf").exists()
    assert "not-the-password" not in out + err


def test_without_sudo_a_root_owned_dest_is_a_clear_failure(project, server, root_dest, capsys):
    project.file("conf/app.conf", "x\n")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "conf/app.conf", "dest": f"{root_dest}/app.conf"}])
    status, out, _ = project.run(capsys=capsys)
    assert status == 1 and f'{root_dest} is not writable by {server.user}: set "sudo": true' in out
    # The plan says so too, before anything is sent.
    status, out, _ = project.run("--dry-run", capsys=capsys)
    assert status == 1 and f'{root_dest} is not writable by {server.user}: set "sudo": true' in out
