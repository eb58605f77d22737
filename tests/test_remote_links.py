"""A symlink on the host where src has a file or folder (issue 11): the
remote_links setting decides, and a link is never dropped without saying so."""

from __future__ import annotations

import json

import pytest
from conftest import MAIN_HOSTS, give


@pytest.fixture
def linked(project, server, remote):
    """dest/uploads is a link to shared storage; etc/resolv.conf a link to a file."""
    shared = remote / "shared"
    shared.mkdir()
    (shared / "photo.jpg").write_text("kept")
    dest = remote / "www"
    dest.mkdir()
    (dest / "uploads").symlink_to(shared)
    (remote / "run.conf").write_text("nameserver 10.0.0.1\n")
    (remote / "resolv.conf").symlink_to(remote / "run.conf")
    give(server, shared, dest, remote / "run.conf", remote / "resolv.conf")
    project.file("site/index.html", "hi")
    project.file("site/uploads/new.jpg", "new")
    project.file("conf/resolv.conf", "nameserver 127.0.0.53\n")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": str(dest)},
                                              {"src": "conf/resolv.conf", "dest": str(remote / "resolv.conf")}])
    return dest, shared, remote


def run(project, capsys, *args):
    path = project.root / "report.json"
    status, out, err = project.run("--json", str(path), *args, capsys=capsys)
    files = {f["path"]: f for h in json.loads(path.read_text())["hosts"] for m in h["mappings"] for f in m["files"]}
    return status, files, out + err


def test_refused_by_default_and_named(project, capsys, linked):
    dest, shared, remote = linked
    status, files, text = run(project, capsys)
    assert status == 1
    assert files[f"{dest}/uploads/"]["action"] == "fail" and str(shared) in files[f"{dest}/uploads/"]["reason"]
    assert "remote_links = replace" in files[f"{dest}/uploads/"]["reason"]
    assert files[f"{remote}/resolv.conf"]["action"] == "fail"
    assert (dest / "uploads").is_symlink() and (remote / "resolv.conf").is_symlink()
    assert sorted(p.name for p in shared.iterdir()) == ["photo.jpg"]  # nothing written through the link
    assert (dest / "index.html").read_text() == "hi"  # the rest of the mapping went on


def test_skip_keeps_the_links(project, capsys, linked):
    dest, shared, remote = linked
    project.config["sync"]["remote_links"] = "skip"
    status, files, _ = run(project, capsys)
    assert status == 0
    assert files[f"{dest}/uploads/"]["action"] == "skip" and files[f"{remote}/resolv.conf"]["action"] == "skip"
    assert (dest / "uploads").is_symlink() and (remote / "run.conf").read_text() == "nameserver 10.0.0.1\n"
    assert sorted(p.name for p in shared.iterdir()) == ["photo.jpg"]


def test_replace_says_so(project, capsys, linked):
    dest, shared, remote = linked
    project.config["sync"]["remote_links"] = "replace"
    status, files, text = run(project, capsys)
    assert status == 0
    assert "replacing the host's symlink" in text
    assert not (dest / "uploads").is_symlink() and (dest / "uploads/new.jpg").read_text() == "new"
    assert not (remote / "resolv.conf").is_symlink()
    assert (remote / "resolv.conf").read_text() == "nameserver 127.0.0.53\n"
    assert (remote / "run.conf").read_text() == "nameserver 10.0.0.1\n"  # the link's target untouched
    assert sorted(p.name for p in shared.iterdir()) == ["photo.jpg"]
