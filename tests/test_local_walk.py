"""The local walk by GNU find (local.find_tree): the same entries, in the
same order, as the Python walk; records byte for byte what a host's GNU find
lists for a copy; planning a no-op without making an entry per file; and the
Python walk wherever find cannot speak for the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from synctasks import local
from synctasks.backends.shell import HASHER, SCRIPT
from synctasks.inputs import Mapping
from synctasks.listing import parse_listing
from synctasks.local import Excluder, LocalTrees, find_tree, walk
from synctasks.plan import plan_mapping


def awkward_tree(root: Path) -> None:
    """Names that sort in traps, odd bytes, modes and times."""
    for rel in ("a", "a b", "a-b", "ab", "a/b", "a/b/c", "z", "empty", "\u00fcn\u00efc\u00f6d\u00e9"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    files = {"a/f": b"1", "a/b/c/deep.txt": b"22", "a b/sp ace": b"", "ab/x": b"x" * 5000, "top.txt": b"t",
             "it's $x; y": b"q", "\u00fcn\u00efc\u00f6d\u00e9/\u00e9": b"u", "new\nline": b"n"}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    with open(os.fsencode(root) + b"/latin1-\xe9", "wb") as handle:
        handle.write(b"bytes")
    (root / "top.txt").chmod(0o4755)
    (root / "z").chmod(0o2750)
    os.utime(root / "a/f", ns=(1_000_000_123, -315_619_199_500_000_000))  # before 1970, half a second
    os.utime(root / "ab/x", ns=(1_700_000_000_123_456_789, 1_700_000_001_987_654_321))
    (root / "a/link").symlink_to("f")
    (root / "dangling").symlink_to("nowhere/at all")


def sans_atime(entries: list[local.LocalEntry]) -> list[tuple]:
    """(reading a folder may move its atime)"""
    return [(e.rel, e.kind, e.root, e.size, e.mtime_ns, e.mode, e.link) for e in entries]


def mapping(src: Path, dest: str = "/d") -> Mapping:
    return Mapping(src=src, dest=dest, is_dir=True)


def test_gnu_find_walks_the_tree_as_the_python_walk_does(tmp_path):
    awkward_tree(tmp_path / "src")
    walk(mapping(tmp_path / "src"), Excluder(()), "copy", print)  # the folders' atimes, as read once (relatime)
    found = find_tree(str(tmp_path / "src"))
    assert found is not None
    by_python = walk(mapping(tmp_path / "src"), Excluder(()), "copy", print)
    assert found.entries() == by_python
    assert [e.rel for e in by_python[:4]] == ["", "a", "a b", "a-b"]  # the walk's order, root first
    assert found.files == sum(1 for e in by_python if e.kind == "f") == 9


def test_records_are_what_the_host_lists_for_a_copy(tmp_path):
    """Unchanged entries are found by comparing records whole: they must be
    the remote script's (GNU find on the host) byte for byte."""
    awkward_tree(tmp_path / "src")
    subprocess.run(["cp", "-a", f"{tmp_path}/src", f"{tmp_path}/copy"], check=True)
    done = subprocess.run(["/bin/sh", "-c", SCRIPT, "sh", "list"], capture_output=True, timeout=60,
                          input=f"tok123\nd:{tmp_path}/copy\n\n".encode())
    remote = parse_listing(done.stdout).records[f"{tmp_path}/copy"]
    found = find_tree(str(tmp_path / "src"))
    links = {r for r in found.records if r.startswith(b"Rl")}
    assert len(links) == 2  # a host lists a link with its target: always compared field by field
    assert set(found.records) - links == {r for r in remote if not r.startswith(b"Rl")} - {b"Rd%o 0 0 " % (
        os.stat(tmp_path / "copy").st_mode & 0o7777)}


def test_a_noop_is_planned_without_an_entry_per_file(tmp_path):
    src = tmp_path / "src"
    awkward_tree(src)
    subprocess.run(["cp", "-a", str(src), f"{tmp_path}/copy"], check=True)
    (tmp_path / "copy/a/stale").write_text("s")  # extraneous, in a folder that needs nothing
    done = subprocess.run(["/bin/sh", "-c", SCRIPT, "sh", "list"], capture_output=True, timeout=60,
                          input=f"tok123\nd:{tmp_path}/copy\n\n".encode())
    listing = parse_listing(done.stdout)
    trees = LocalTrees()
    trees.prefetch([mapping(src, f"{tmp_path}/copy")])  # as a run starts the walk, in a thread
    plan = plan_mapping(mapping(src, f"{tmp_path}/copy"), listing, trees, compare="size-mtime", delete=True,
                        warn=print, list_unchanged=False)
    slot = trees._slot(mapping(src, f"{tmp_path}/copy"))
    assert slot.found is not None and slot.entries is None  # planned from records alone
    assert len(slot.found._made) == 3  # the two links and the name with a newline
    assert plan.sends == [] and plan.links == []
    assert plan.result.unchanged == 10  # 9 files (one of them unsendable) and 2 links
    assert [f.path for f in plan.result.files if f.action == "fail"] == [f"{tmp_path}/copy/new\nline"]
    assert plan.deletes == [f"{tmp_path}/copy/a/stale"]
    # one file changed: only it is sent; the others are still records
    (src / "ab/x").write_bytes(b"y" * 5000)
    os.utime(src / "ab/x", ns=(1_700_000_000_123_456_789, 1_700_000_009_000_000_000))
    trees = LocalTrees()
    plan = plan_mapping(mapping(src, f"{tmp_path}/copy"), listing, trees, compare="size-mtime", delete=False,
                        warn=print, list_unchanged=False)
    assert [s.path for s in plan.sends] == [f"{tmp_path}/copy/ab/x"]
    assert plan.sends[0].local.mtime_ns == 1_700_000_009_000_000_000
    assert plan.result.unchanged == 9


def test_the_python_walk_takes_over_where_find_cannot(tmp_path, monkeypatch):
    """A FIFO (find lists it; the walk warns and skips it), a find that
    fails (an unreadable folder), no GNU find: the Python walk's entries."""
    src = tmp_path / "src"
    awkward_tree(src)
    os.mkfifo(src / "a/fifo")
    expected = walk(mapping(src), Excluder(()), "copy", lambda _: None)
    assert find_tree(str(src)) is None
    warnings: list[str] = []
    assert sans_atime(LocalTrees(warn=warnings.append).get(mapping(src))) == sans_atime(expected)
    assert any("fifo: not a regular file" in w for w in warnings)
    os.unlink(src / "a/fifo")
    expected = walk(mapping(src), Excluder(()), "copy", print)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "find").write_text("#!/bin/sh\necho 'find: unknown predicate -printf' >&2\nexit 1\n")
    (bin_dir / "find").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert find_tree(str(src)) is None
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert find_tree(str(src)) is None
    trees = LocalTrees()
    assert sans_atime(trees.get(mapping(src))) == sans_atime(expected) and trees._slot(mapping(src)).found is None


@pytest.mark.parametrize("setting", ["exclude", "follow", "checksum"])
def test_settings_find_cannot_honour_keep_the_python_walk(tmp_path, monkeypatch, setting):
    src = tmp_path / "src"
    awkward_tree(src)
    calls = []
    monkeypatch.setattr(local, "find_tree", lambda root: calls.append(root))
    trees = LocalTrees(global_exclude=("*.txt",) if setting == "exclude" else (),
                       symlinks="follow" if setting == "follow" else "copy", checksum=setting == "checksum",
                       warn=lambda _: None)
    entries = trees.get(mapping(src))
    assert calls == [] and entries[0].rel == ""
    assert shutil.which("find")


def test_a_host_that_needs_every_entry_walks_while_find_still_runs(tmp_path, monkeypatch):
    """A first sync's planning needs every entry: it does not wait for find's
    records to turn them all into entries, it walks the tree itself and stops
    find."""
    import time

    src = tmp_path / "src"
    awkward_tree(src)
    expected = walk(mapping(src), Excluder(()), "copy", print)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "find").write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 30\n")  # a find that takes long
    (bin_dir / "find").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    trees = LocalTrees()
    trees.prefetch([mapping(src)])
    while not (tmp_path / "pid").exists():
        time.sleep(0.01)
    started = time.monotonic()
    assert sans_atime(trees.get(mapping(src))) == sans_atime(expected)
    assert trees.found(mapping(src)) is None
    assert time.monotonic() - started < 10
    pid = int((tmp_path / "pid").read_text())
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def _listed_with_sums(tmp_path: Path, copy: Path):
    done = subprocess.run(["/bin/sh", "-c", SCRIPT, "sh", "checksum"], capture_output=True, timeout=60,
                          input=b"tok123\n" + HASHER + b"\n" + f"d:{copy}\n\n".encode())
    return parse_listing(done.stdout)


@pytest.mark.parametrize("apart", [0, 5000])
def test_checksum_plans_from_records_and_sum_lines_alone(tmp_path, monkeypatch, apart):
    """--checksum: the local hasher's lines (``apart``: from how many files
    on a process of its own hashes them) against the host's; a file whose
    record agrees but whose content does not is found by its sum alone."""
    monkeypatch.setattr(local, "HASH_APART", apart)
    src = tmp_path / "src"
    awkward_tree(src)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(src), str(copy)], check=True)
    (copy / "ab/x").write_bytes(b"z" * 5000)  # same size, same mtime: only the sum differs
    os.utime(copy / "ab/x", ns=(1_700_000_000_123_456_789, 1_700_000_001_987_654_321))
    listing = _listed_with_sums(tmp_path, copy)
    assert listing.sum_records
    trees = LocalTrees(checksum=True)
    trees.prefetch([mapping(src, str(copy))])
    plan = plan_mapping(mapping(src, str(copy)), listing, trees, compare="checksum", delete=False, warn=print,
                        list_unchanged=False)
    slot = trees._slot(mapping(src, str(copy)))
    assert slot.found is not None and slot.entries is None and slot.found.sum_lines.count(b"\0") == 9
    assert [(s.path, s.reason) for s in plan.sends] == [(f"{copy}/ab/x", "checksum")]
    assert plan.result.unchanged == 9  # 9 files (the unsendable one and ab/x aside) and 2 links
    (copy / "ab/x").write_bytes(b"x" * 5000)
    os.utime(copy / "ab/x", ns=(1_700_000_000_123_456_789, 1_700_000_001_987_654_321))
    plan = plan_mapping(mapping(src, str(copy)), _listed_with_sums(tmp_path, copy), trees, compare="checksum",
                        delete=False, warn=print, list_unchanged=False)
    assert plan.sends == [] and plan.result.unchanged == 10


def test_checksum_of_a_file_that_cannot_be_read_leaves_the_tree_to_the_python_walk(tmp_path, monkeypatch):
    src = tmp_path / "src"
    awkward_tree(src)
    found = find_tree(str(src))
    assert local.hash_tree(found) is not None
    (src / "ab/x").rename(src / "ab/gone")  # since find listed it
    assert local.hash_tree(found) is None
    (src / "ab/gone").rename(src / "ab/x")
    monkeypatch.setattr(local, "HASH_APART", 0)
    assert local.hash_tree(found) is not None
    monkeypatch.setattr(local, "HASHER_PATH", str(tmp_path / "hasher.py"))
    (tmp_path / "hasher.py").write_text(
        "import sys\nsys.stdin.buffer.read()\nsys.stderr.write('sha256: x: Permission denied\\n')\n")
    assert local.hash_tree(found) is None
    trees = LocalTrees(checksum=True)
    assert trees.found(mapping(src)) is None
    assert sans_atime(trees.get(mapping(src))) == sans_atime(walk(mapping(src), Excluder(()), "copy", print))
    assert len([s for s in trees._slot(mapping(src)).sums if s]) == 9  # hashed by the walk, as before


def test_a_found_tree_answers_in_any_order_of_questions(tmp_path):
    """place_of and digest, asked first, build the index they need (no lock
    taken twice by one thread)."""
    import threading

    src = tmp_path / "src"
    awkward_tree(src)
    found = find_tree(str(src))
    found.sum_lines = local.hash_tree(found)
    answers = []
    worker = threading.Thread(target=lambda: answers.extend([found.place_of(b"ab/x"), found.digest(str(src / "ab/x"))]),
                              daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    assert found.records[answers[0]].endswith(b" ab/x") and answers[1] == local.sha256_file(str(src / "ab/x"))
