"""Incremental sync, dry run, --delete, exclusions and the JSON report, against
every server implementation: OpenSSH, SCP-only OpenSSH and Dropbear."""

from __future__ import annotations

import json
import os

import pytest
from conftest import BUSYBOX_HOST, DROPBEAR_HOST, MAIN_HOSTS, SCP_ONLY_HOST, give, tree_state

from synctasks.constants import STAGING_PREFIX


@pytest.fixture(params=["openssh", "scp-only", "dropbear"])
def target(request, server):
    """(server, address) of each implementation."""
    if request.param == "scp-only":
        return request.getfixturevalue("scp_only_server"), SCP_ONLY_HOST
    if request.param == "dropbear":
        return request.getfixturevalue("dropbear_server"), DROPBEAR_HOST
    return server, MAIN_HOSTS[0]


def site(project, files: int = 5):
    for i in range(files):
        project.file(f"site/dir{i % 2}/f{i}.txt", f"file {i}\n" * (i + 1))
    project.file("site/top.txt", "top\n")
    return project.root / "site"


def synced(project, target, remote, dest_name: str = "www"):
    """A first sync of the sample site to ``target``: (src, dest)."""
    srv, address = target
    src = site(project)
    dest = remote / dest_name
    project.add_host(srv, address, [{"src": "site", "dest": str(dest)}])
    assert project.run()[0] == 0
    return src, dest


def report(project, *args, capsys):
    path = project.root / "report.json"
    status, out, err = project.run("--json", str(path), *args, capsys=capsys)
    return status, json.loads(path.read_text()), out


def actions(rep) -> dict[str, str]:
    return {f["path"]: f["action"] for h in rep["hosts"] for m in h["mappings"] for f in m["files"]}


def test_second_run_sends_nothing_and_keeps_inodes(project, target, remote, capsys):
    srv, address = target
    src = site(project)
    dest = remote / "www"
    project.add_host(srv, address, [{"src": "site", "dest": str(dest)}])
    status, rep, _ = report(project, capsys=capsys)
    assert status == 0 and rep["hosts"][0]["sent"] == 6 and rep["changed"] is True, rep["hosts"][0]["error"]
    before = tree_state(dest)
    status, rep, out = report(project, capsys=capsys)
    assert status == 0
    host = rep["hosts"][0]
    assert host["sent"] == 0 and host["skipped"] == 6 and host["changed"] is False and rep["changed"] is False
    assert tree_state(dest) == before  # inode numbers included: nothing was rewritten
    assert tree_state(src).keys() == before.keys()


def test_only_the_touched_file_is_sent(project, target, remote, capsys):
    src, dest = synced(project, target, remote)
    before = tree_state(dest)
    touched = src / "dir0" / "f2.txt"
    stamp = touched.stat().st_mtime_ns + 5_000_000_000
    os.utime(touched, ns=(stamp, stamp))  # same size, new mtime
    status, rep, _ = report(project, capsys=capsys)
    assert status == 0
    sent = [p for p, a in actions(rep).items() if a == "send"]
    assert sent == [str(dest / "dir0/f2.txt")]
    after = tree_state(dest)
    assert after["dir0/f2.txt"][4] != before["dir0/f2.txt"][4]  # replaced (new inode)
    assert after["dir0/f2.txt"][3] == stamp // 1000
    assert {k: v for k, v in after.items() if k != "dir0/f2.txt"} == {
        k: v for k, v in before.items() if k != "dir0/f2.txt"}


def test_same_size_same_mtime_change_needs_checksum(project, target, remote, capsys):
    src, dest = synced(project, target, remote)
    victim = src / "top.txt"
    info = victim.stat()
    victim.write_text("TOP\n")  # same size
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))  # same mtime
    status, rep, _ = report(project, capsys=capsys)
    assert rep["hosts"][0]["sent"] == 0
    assert (dest / "top.txt").read_text() == "top\n"
    status, rep, _ = report(project, "--checksum", capsys=capsys)
    assert status == 0
    assert [p for p, a in actions(rep).items() if a == "send"] == [str(dest / "top.txt")]
    assert (dest / "top.txt").read_text() == "TOP\n"
    flags = [f["flags"] for m in rep["hosts"][0]["mappings"] for f in m["files"] if f["action"] == "send"]
    assert flags == [">fc........"]


def test_dry_run_changes_nothing_and_itemizes(project, target, remote, capsys):
    src, dest = synced(project, target, remote)
    (src / "new.txt").write_text("new")
    (src / "top.txt").write_text("changed size\n")
    (dest / "extra.txt").write_text("extra")
    give(target[0], dest)
    before = tree_state(dest)
    status, out, _ = project.run("--dry-run", "--delete", capsys=capsys)
    assert status == 0
    assert tree_state(dest) == before
    assert f">f+++++++++ {dest}/new.txt" in out
    assert ">f.s" in out and f"{dest}/top.txt" in out
    assert f"*deleting   {dest}/extra.txt" in out
    assert "would change" in out


def test_delete_removes_only_extraneous_inside_dest(project, target, remote, capsys):
    _, dest = synced(project, target, remote, "app/www")
    (dest / "stale.txt").write_text("x")
    (dest / "olddir" / "deep").mkdir(parents=True)
    (dest / "olddir" / "deep" / "x").write_text("x")
    sibling = remote / "app" / "www-sibling.txt"
    sibling.write_text("keep me")
    give(target[0], dest, sibling)
    status, rep, _ = report(project, "--delete", capsys=capsys)
    assert status == 0
    deleted = sorted(p for p, a in actions(rep).items() if a == "delete")
    assert deleted == sorted([f"{dest}/stale.txt", f"{dest}/olddir/", f"{dest}/olddir/deep/",
                              f"{dest}/olddir/deep/x"])
    assert not (dest / "stale.txt").exists() and not (dest / "olddir").exists()
    assert sibling.read_text() == "keep me"
    assert (dest / "top.txt").exists()


def test_exclusions_are_neither_sent_nor_deleted(project, target, remote, capsys):
    srv, address = target
    src = site(project)
    project.file("site/cache/big.tmp", "tmp")
    project.file("site/notes.tmp", "tmp")
    project.file("site/.git/HEAD", "ref")
    dest = remote / "www"
    project.config["sync"]["exclude"] = "*.tmp"
    project.add_host(srv, address, [{"src": "site", "dest": str(dest), "exclude": [".git/"]}])
    assert project.run()[0] == 0
    assert not (dest / "notes.tmp").exists() and not (dest / ".git").exists()
    assert not (dest / "cache" / "big.tmp").exists()
    (dest / "remote-only.tmp").write_text("keep")
    (dest / ".git").mkdir()
    (dest / ".git" / "config").write_text("keep")
    give(target[0], dest)
    status, rep, _ = report(project, "--delete", capsys=capsys)
    assert status == 0
    assert (dest / "remote-only.tmp").read_text() == "keep"
    assert (dest / ".git" / "config").read_text() == "keep"
    assert [p for p, a in actions(rep).items() if a == "delete"] == []
    assert src.exists()


def test_json_report_matches_what_happened(project, server, remote, capsys):
    site(project)
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/a"}])
    project.add_host(server, MAIN_HOSTS[1], [{"src": "site/top.txt", "dest": f"{remote}/b/"}])
    status, rep, _ = report(project, capsys=capsys)
    assert status == 0
    assert rep["version"] == 1 and rep["ok"] is True
    by_host = {h["host"]: h for h in rep["hosts"]}
    assert by_host[MAIN_HOSTS[0]]["sent"] == 6 and by_host[MAIN_HOSTS[1]]["sent"] == 1
    mapping = by_host[MAIN_HOSTS[1]]["mappings"][0]
    assert mapping["dest"] == f"{remote}/b/top.txt" and mapping["bytes"] == 4 and mapping["changed"] is True
    for host in rep["hosts"]:
        for m in host["mappings"]:
            for f in m["files"]:
                if f["action"] == "send":
                    assert os.path.getsize(f["path"]) == f["size"]


def test_mode_change_is_a_chmod_not_a_resend(project, server, remote, capsys):
    src = site(project)
    dest = remote / "www"
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": str(dest)}])
    assert project.run()[0] == 0
    inode = (dest / "top.txt").stat().st_ino
    (src / "top.txt").chmod(0o640)
    status, rep, _ = report(project, capsys=capsys)
    assert status == 0
    assert actions(rep)[str(dest / "top.txt")] == "chmod"
    assert (dest / "top.txt").stat().st_mode & 0o777 == 0o640
    assert (dest / "top.txt").stat().st_ino == inode


def test_remote_home_refused_for_delete(project, server, capsys):
    import pwd

    home = pwd.getpwnam(server.user).pw_dir
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": home}])
    before = sorted(os.listdir(home))
    status, out, _ = project.run("--delete", capsys=capsys)
    assert status == 2  # refused input, as for a dest too close to / (issue 12, item 11)
    assert "the remote home folder" in out and "--force" in out
    assert sorted(os.listdir(home)) == before
    # Refused as soon as the home was known: the home was never listed.
    assert "listed" not in (project.root / "logs/info.log").read_text()


def test_plan_validate_and_check_commands(project, server, remote, capsys):
    site(project)
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/p"}])
    project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": f"{remote}/q"}], trust=False)
    status, out, _ = project.run("validate", capsys=capsys)
    assert status == 0 and "inputs valid: 2 host(s), 2 mapping(s)" in out
    status, out, _ = project.run("check", capsys=capsys)
    assert status == 1
    assert f"{MAIN_HOSTS[0]}: ok" in out and f"{MAIN_HOSTS[1]}: FAILED: unknown host key" in out
    status, out, _ = project.run("plan", "--only", MAIN_HOSTS[0], capsys=capsys)
    assert status == 0 and f">f+++++++++ {remote}/p/top.txt" in out
    assert not (remote / "p").exists()


def test_checksum_same_content_new_mtime_is_a_touch(project, server, remote, capsys):
    src, dest = synced(project, (server, MAIN_HOSTS[0]), remote)
    inode = (dest / "top.txt").stat().st_ino
    stamp = (src / "top.txt").stat().st_mtime_ns + 7_000_000_000
    os.utime(src / "top.txt", ns=(stamp, stamp))
    status, rep, _ = report(project, "--checksum", capsys=capsys)
    assert status == 0
    assert actions(rep)[str(dest / "top.txt")] == "touch"
    assert (dest / "top.txt").stat().st_ino == inode
    assert (dest / "top.txt").stat().st_mtime_ns // 1_000_000_000 == stamp // 1_000_000_000


def test_type_changes_between_file_and_folder(project, server, remote, capsys):
    src, dest = synced(project, (server, MAIN_HOSTS[0]), remote)
    # Remote: a file where src now has a folder, and a folder where src has a file.
    (src / "top.txt").unlink()
    project.file("site/top.txt/inner.txt", "now a folder")
    (dest / "dir0").rename(dest / "dir0-old")
    (dest / "dir0").mkdir()
    give(server, dest)
    for child in (src / "dir0").iterdir():
        child.unlink()
    (src / "dir0").rmdir()
    project.file("site/dir0", "now a file")
    status, out, _ = project.run(capsys=capsys)
    assert status == 1 and "a folder is in the way remotely" in out  # a file cannot replace a folder unasked
    assert (dest / "top.txt/inner.txt").read_text() == "now a folder"  # a folder replaces a file
    status, out, _ = project.run("--delete", capsys=capsys)
    assert status == 0
    assert (dest / "dir0").read_text() == "now a file"


@pytest.mark.parametrize("kind", ["openssh", "scp-only"])
def test_sftp_protocol(project, server, remote, capsys, kind, request):
    srv, address = (server, MAIN_HOSTS[0]) if kind == "openssh" else (request.getfixturevalue("scp_only_server"),
                                                                      SCP_ONLY_HOST)
    src = site(project)
    project.config["sync"]["protocol"] = "sftp"
    project.add_host(srv, address, [{"src": "site", "dest": f"{remote}/sftp"}])
    status, out, _ = project.run(capsys=capsys)
    if kind == "openssh":
        assert status == 0

        def seconds(state):  # SFTP (version 3) carries whole seconds of mtime
            return {k: v[:3] + ((v[3] // 1_000_000) if v[3] else None,) for k, v in state.items()}

        assert seconds(tree_state(remote / "sftp")) == seconds(tree_state(src))
    else:
        assert status == 1 and "the server offers no SFTP" in out and "protocol = scp" in out


@pytest.mark.parametrize("host", ["openssh", "busybox"])
def test_a_file_that_cannot_be_moved_into_place_fails_alone(project, server, remote, capsys, host, request):
    """The commit's move is where a file lands (one perl rename for the lot
    on a host with perl, `mv` per folder on BusyBox). A file that cannot be
    replaced (another user's, in a sticky folder) is the only one failed, by
    name, and keeps its old content; no staging is left behind."""
    srv, address = server, MAIN_HOSTS[0]
    if host == "busybox":
        srv, address = request.getfixturevalue("busybox_server"), BUSYBOX_HOST
        give(srv, remote)
    src, dest = synced(project, (srv, address), remote)
    for name in ("f0.txt", "f2.txt", "f4.txt"):
        (src / "dir0" / name).write_text(f"new {name}\n")
    # dir0 becomes root's, sticky and open to all (as /tmp), locally too, so
    # no chmod is planned: the login user may add and replace its own files
    # there, not root's f2.txt.
    stuck = dest / "dir0" / "f2.txt"
    for path in (dest / "dir0", stuck):
        os.chown(path, 0, 0)
    for folder in (dest / "dir0", src / "dir0"):
        folder.chmod(0o1777)
    status, rep, _ = report(project, capsys=capsys)
    files = {f["path"]: f for h in rep["hosts"] for m in h["mappings"] for f in m["files"]}
    assert status == 1 and rep["hosts"][0]["sent"] == 2 and rep["hosts"][0]["failed"] == 1, rep["hosts"][0]
    failure = files[str(stuck)]
    assert failure["action"] == "fail" and failure["reason"].startswith(f"cannot move into {dest}"), failure
    assert stuck.read_text() == "file 2\n" * 3
    assert (dest / "dir0" / "f0.txt").read_text() == "new f0.txt\n"
    assert (dest / "dir0" / "f4.txt").read_text() == "new f4.txt\n"
    assert not [p for p in dest.rglob("*") if p.name.startswith(STAGING_PREFIX)]
