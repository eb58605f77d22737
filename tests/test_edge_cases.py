"""Edge cases found in review: each of these once lost or misplaced data."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from conftest import MAIN_HOSTS, give

from synctasks import local
from synctasks import plan as planning
from synctasks.constants import STAGING_PREFIX
from synctasks.inputs import Mapping
from synctasks.listing import Listing, RemoteEntry


def test_crafted_leftover_name_cannot_reach_the_home_folder(project, server, remote):
    home = pwd.getpwnam(server.user).pw_dir
    victim = os.path.join(home, "victim-file")
    with open(victim, "w") as handle:
        handle.write("keep")
    os.chown(victim, *(lambda e: (e.pw_uid, e.pw_gid))(pwd.getpwnam(server.user)))
    trap = remote / f"{STAGING_PREFIX}x\nvictim-file"  # a "leftover" whose name holds a newline
    trap.mkdir()
    give(server, trap)
    project.file("conf/app.conf", "x")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "conf/app.conf", "dest": f"{remote}/app.conf"}])
    try:
        status, _, _ = project.run()
        assert status == 0
        assert open(victim).read() == "keep"
    finally:
        os.unlink(victim)


def test_delete_never_follows_a_new_symlink_out_of_dest(project, server, remote):
    release = remote / "releases" / "v2"
    release.mkdir(parents=True)
    (release / "index.html").write_text("release v2")
    project.file("site/current/index.html", "old layout")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    give(server, remote)
    assert project.run()[0] == 0
    # Now "current" becomes a link to the release, as deploy tools do.
    for child in (project.root / "site/current").iterdir():
        child.unlink()
    (project.root / "site/current").rmdir()
    os.symlink(str(release), project.root / "site/current")
    status, _, _ = project.run("--delete")
    assert status == 0
    assert os.readlink(remote / "www/current") == str(release)
    assert (release / "index.html").read_text() == "release v2"


def test_unreadable_local_folder_protects_its_remote_copy(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    (src / "open.txt").write_text("o")
    real_open = os.open

    def open_folder(path, flags, *args, **kwargs):  # as for a folder we may not read (we are root here)
        if str(path).endswith("locked") and flags & os.O_DIRECTORY:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(local.os, "open", open_folder)
    # GNU find, which reads the folder (we are root), stands down for the
    # Python walk on any folder it cannot read (test_local_find)
    monkeypatch.setattr(local, "find_tree", lambda root: None)
    mode = src.stat().st_mode & 0o7777
    listing = Listing(entries={"/d": {
        "/d": RemoteEntry("d", mode, 0, 0),
        "/d/locked": RemoteEntry("d", 0o755, 0, 0),
        "/d/locked/precious": RemoteEntry("f", 0o644, 1, 1),
        "/d/stale.txt": RemoteEntry("f", 0o644, 1, 1),
    }})
    warnings = []
    result = planning.plan_mapping(Mapping(src=src, dest="/d", is_dir=True), listing,
                                   local.LocalTrees(warn=warnings.append),
                                   compare="size-mtime", delete=True, warn=warnings.append)
    assert result.deletes == ["/d/stale.txt"]
    assert any("nothing below it is deleted" in w for w in warnings)


def _connection(server, tmp_path):
    """A Fabric Connection to the first test host, its key checked."""
    from fabric import Connection

    from synctasks.connection import apply_host_key_policy

    known = server.write_known_hosts(tmp_path / "known_hosts")
    return apply_host_key_policy(Connection(MAIN_HOSTS[0], user=server.user, port=server.port,
                                            connect_kwargs={"key_filename": [str(server.client_key)]}),
                                 "strict", known)


class _OnPlanned:
    """Progress that runs ``then`` once the host's plan is made (before any file is sent)."""

    def __init__(self, then):
        self.then = then

    def planned(self, host, files, total):
        self.then()

    def __call__(self, *args):
        pass


def test_file_written_during_the_send_is_not_committed(project, server, remote, tmp_path):
    from synctasks import sync_host

    growing = project.file("data/log.txt", "first line\n")

    def append():
        with open(growing, "a") as handle:
            handle.write("written while syncing\n")

    with _connection(server, tmp_path) as c:
        result = sync_host(c, [{"src": str(growing), "dest": f"{remote}/log.txt"}], progress=_OnPlanned(append),
                           warn=True)
        assert result.failed == 1 and "changed while it was sent" in result.first_error
        assert not (remote / "log.txt").exists()
        again = sync_host(c, [{"src": str(growing), "dest": f"{remote}/log.txt"}])
    assert again.ok and (remote / "log.txt").read_text() == growing.read_text()


def test_file_swapped_for_a_fifo_before_the_send_fails_alone_without_waiting(project, server, remote, tmp_path):
    """A small file swapped for a FIFO between the walk and its turn: read
    without waiting (no writer, or one that writes nothing), named, never
    committed; the files beside it land."""
    from synctasks import sync_host

    swapped = project.file("data/a.txt", "to be swapped\n")
    project.file("data/b.txt", "stays\n")

    def swap():
        os.remove(swapped)
        os.mkfifo(swapped)

    with _connection(server, tmp_path) as c:
        result = sync_host(c, [{"src": str(swapped.parent), "dest": f"{remote}/data"}], progress=_OnPlanned(swap),
                           warn=True)
    assert result.failed == 1 and "a.txt is no longer a regular file" in result.first_error
    assert not (remote / "data/a.txt").exists() and (remote / "data/b.txt").read_text() == "stays\n"

def test_read_only_new_folder_and_old_mtime(project, server, remote):
    project.file("site/ro/inside.txt", "x")
    os.chmod(project.root / "site/ro", 0o555)
    old = project.file("site/1969.txt", "from the past")
    os.utime(old, (-100, -100))
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    try:
        status, _, _ = project.run()
        assert status == 0
        assert (remote / "www/ro/inside.txt").read_text() == "x"
        assert (remote / "www/ro").stat().st_mode & 0o7777 == 0o555
        assert (remote / "www/1969.txt").read_text() == "from the past"
    finally:
        os.chmod(project.root / "site/ro", 0o755)
        if (remote / "www/ro").exists():
            os.chmod(remote / "www/ro", 0o755)


@pytest.mark.parametrize("second", ["/srv/app/conf/app.ini", "/srv/app/"])
def test_nested_dests_are_refused(project, server, second, capsys):
    project.file("site/a", "a")
    project.file("conf/app.ini", "i")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": "/srv/app"},
                                             {"src": "conf/app.ini" if "ini" in second else "site",
                                              "dest": second}])
    status, _, err = project.run(capsys=capsys)
    assert status == 2 and "is inside the dest of entry 1" in err


def test_fifos_and_sockets_in_src_are_skipped_with_a_warning(project, server, remote, capsys):
    import socket

    project.file("site/a.txt", "a")
    os.mkfifo(project.root / "site/pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(project.root / "site/sock"))
    try:
        project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
        status, _, err = project.run(capsys=capsys)
    finally:
        sock.close()
    assert status == 0
    assert sorted(p.name for p in (remote / "www").iterdir()) == ["a.txt"]
    assert err.count("socket, FIFO or device") == 2


def test_path_that_fits_only_relative_to_staging_arrives(project, server, remote, capsys, tmp_path_factory):
    """A path that fits at the destination but not inside the staging folder
    by its absolute name (the kernel's 4096-byte limit) arrives whole: the
    sink writes relative to the staging folder it runs in, never by a path
    from / (which also means nothing can redirect it above that folder)."""
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # a short local root
    try:
        dest = remote / "www"
        staged = f"{remote}/{STAGING_PREFIX}1234567-0123456789abcdef/www/"
        rel_length = 4100 - len(staged)
        parts, left = [], rel_length - 2  # room for "/f"
        while left > 0:
            take = min(200, left)
            parts.append("d" * take)
            left -= take + 1
        deep = "/".join(parts)
        assert len(f"{dest}/{deep}/f") < 4096 < len(f"{staged}{deep}/f")
        (short / "site" / deep).mkdir(parents=True)
        (short / "site" / deep / "f").write_text("deep")
        (short / "site" / "top.txt").write_text("top")
        project.file("other/ok.txt", "ok")
        (remote / "elsewhere").mkdir()
        give(server, remote / "elsewhere")  # another existing folder: its own staging folder and sink
        project.add_host(server, MAIN_HOSTS[0], [{"src": str(short / "site"), "dest": str(dest)},
                                                 {"src": "other", "dest": f"{remote}/elsewhere/other"}])
        status, out, err = project.run(capsys=capsys)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert status == 0, err
    assert (remote / "elsewhere/other/ok.txt").read_text() == "ok"
    assert os.path.exists(f"{dest}/{deep}/f")
    assert [p for p in remote.rglob("*") if p.name.startswith(STAGING_PREFIX)] == []


def test_excluded_file_keeps_its_extraneous_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    mode = src.stat().st_mode & 0o7777
    listing = Listing(entries={"/d": {
        "/d": RemoteEntry("d", mode, 0, 0),
        "/d/old": RemoteEntry("d", 0o755, 0, 0),
        "/d/old/keep.log": RemoteEntry("f", 0o644, 1, 1),
        "/d/old/junk.txt": RemoteEntry("f", 0o644, 1, 1),
        "/d/gone": RemoteEntry("d", 0o755, 0, 0),
        "/d/gone/x": RemoteEntry("f", 0o644, 1, 1),
    }})
    result = planning.plan_mapping(Mapping(src=src, dest="/d", is_dir=True, exclude=("*.log",)), listing,
                                   local.LocalTrees(), compare="size-mtime", delete=True, warn=print)
    assert sorted(result.deletes) == ["/d/gone", "/d/old/junk.txt"]


def test_folder_made_read_only_still_gets_deletes_and_cleanup(project, server, remote):
    project.file("site/sub/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    assert project.run()[0] == 0
    (remote / "www/sub/extra.txt").write_text("extra")
    give(server, remote / "www/sub/extra.txt")
    project.file("site/sub/b.txt", "b")
    os.chmod(project.root / "site/sub", 0o555)
    try:
        status, _, _ = project.run("--delete")
        assert status == 0
        assert sorted(p.name for p in (remote / "www/sub").iterdir()) == ["a.txt", "b.txt"]
        assert (remote / "www/sub").stat().st_mode & 0o777 == 0o555
    finally:
        os.chmod(project.root / "site/sub", 0o755)
        os.chmod(remote / "www/sub", 0o755)


def test_a_failed_chown_fails_only_its_mapping(project, server, remote, capsys):
    project.file("a/x.txt", "x")
    project.file("b/y.txt", "y")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "a", "dest": f"{remote}/a", "owner": "no-such-user"},
                                             {"src": "b", "dest": f"{remote}/b"}])
    status, out, _ = project.run("--json", str(project.root / "r.json"), capsys=capsys)
    assert status == 1
    import json

    mappings = json.loads((project.root / "r.json").read_text())["hosts"][0]["mappings"]
    assert mappings[0]["failed"] >= 1 and "chown" in out
    assert mappings[1]["failed"] == 0 and (remote / "b/y.txt").read_text() == "y"
