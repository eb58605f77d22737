"""Listings as R records (issue 10): a GNU host lists each entry as one
record that the client compares whole with the record it expects, and only
differing entries are parsed and planned. Planning from records must decide
exactly what planning from parsed entries decides; on a real host an
unchanged tree must match record for record."""

from __future__ import annotations

import json
import os

import pytest
from conftest import MAIN_HOSTS

from synctasks.inputs import Mapping
from synctasks.listing import Listing, RemoteEntry, parse_listing, parse_record, record
from synctasks.local import LocalTrees, sha256_file
from synctasks.plan import plan_mapping

DEST = "/d/site"
T = 1_700_000_000


def test_record_round_trip_and_listing_parse():
    rows = [record("f", 0o4755, 12, T, "a b/c -x".encode()), record("d", 0o2775, 0, 0, b"dir \xe9"),
            record("f", 0o644, 0, -100, b"old")]
    link = record("l", 0o777, 0, 0, b"ln") + b"\0target with space"
    data = b"\0".join([b"M" + DEST.encode(), record("d", 0o755, 0, 0, b""), *rows, link, b"Ztok", b""])
    listing = parse_listing(data)
    assert listing.records[DEST] == {record("d", 0o755, 0, 0, b""), *rows, link}
    assert parse_record(rows[0]) == ("a b/c -x", RemoteEntry("f", 0o4755, 12, T))
    assert parse_record(rows[1]) == ("dir \udce9", RemoteEntry("d", 0o2775, 0, 0))
    assert parse_record(rows[2])[1].mtime == -100
    assert parse_record(link) == ("ln", RemoteEntry("l", 0o777, 0, 0, "target with space"))


def _tree(tmp_path):
    src = tmp_path / "src"
    for rel, body in [("same.txt", "1234"), ("bigger.txt", "12345"), ("touched.txt", "abcd"),
                      ("chmodded.txt", "abcd"), ("sub/deep.txt", "x"), ("retyped", "was a folder"),
                      ("new.txt", "n"), ("watched.txt", "w"), ("odd\nname", "nl")]:
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        os.utime(path, (T, T))
    (src / "sub2").mkdir()
    os.symlink("same.txt", src / "link-same")
    os.symlink("same.txt", src / "link-changed")
    for path in [src, src / "sub", src / "sub2"]:
        path.chmod(0o755)
    return src


def _remote(src) -> dict[str, RemoteEntry]:
    """What the host has: some entries equal, some different, some extra."""
    def f(size, mtime=T, mode=0o644):
        return RemoteEntry("f", mode, size, mtime)
    rel = {"": RemoteEntry("d", 0o755, 0, 0), "same.txt": f(4), "bigger.txt": f(4), "touched.txt": f(4, T + 9),
           "chmodded.txt": f(4, mode=0o600), "sub": RemoteEntry("d", 0o2755, 0, 0), "sub/deep.txt": f(1),
           "retyped": RemoteEntry("d", 0o755, 0, 0), "retyped/inner": f(1), "watched.txt": f(1),
           "odd\nname": f(2), "sub2": RemoteEntry("d", 0o700, 0, 0),
           "link-same": RemoteEntry("l", 0o777, 0, 0, "same.txt"),
           "link-changed": RemoteEntry("l", 0o777, 0, 0, "elsewhere"),
           "extra": RemoteEntry("d", 0o755, 0, 0), "extra/file": f(3)}
    return {(f"{DEST}/{k}" if k else DEST): v for k, v in rel.items()}


def _as_records(remote: dict[str, RemoteEntry]) -> set[bytes]:
    rows = set()
    for path, e in remote.items():
        rel = path[len(DEST) + 1:].encode("utf-8", "surrogateescape")
        row = record(e.kind, e.mode, e.size, e.mtime if e.kind == "f" else 0, rel)
        rows.add(row + b"\0" + e.link.encode() if e.kind == "l" else row)
    return rows


def _decisions(plan):
    return ([f.to_dict() for f in plan.result.files], plan.sends and [(s.path, s.mode) for s in plan.sends],
            plan.links and [s.path for s in plan.links], plan.chmods, plan.touches, plan.removes,
            plan.deletes, [d.path for d in plan.new_dirs], plan.result.skipped, plan.result.sent)


@pytest.mark.parametrize("delete", [False, True])
@pytest.mark.parametrize("mode", [None, 0o640])
def test_planning_from_records_decides_as_from_entries(tmp_path, delete, mode):
    src = _tree(tmp_path)
    mapping = Mapping(src=src, dest=DEST, is_dir=True, mode=mode)
    remote = _remote(src)
    trusted = frozenset({str(src / "watched.txt")})
    kwargs = dict(compare="size-mtime", delete=delete, warn=lambda _: None, trusted=trusted)
    by_entries = plan_mapping(mapping, Listing(entries={DEST: remote}), LocalTrees(), **kwargs)
    by_records = plan_mapping(mapping, Listing(records={DEST: _as_records(remote)}), LocalTrees(), **kwargs)
    assert _decisions(by_records) == _decisions(by_entries)
    actions = {f.path: f.action for f in by_records.result.files}
    assert actions[f"{DEST}/watched.txt"] == "send" and actions[f"{DEST}/odd\nname"] == "fail"
    if mode is None:
        assert actions[f"{DEST}/same.txt"] == "skip" and actions[f"{DEST}/chmodded.txt"] == "chmod"
        # unchanged by their records alone: the root, links, the newline name,
        # the trusted file and the differing ones are compared field by field
        assert by_records.differing < len(remote) and by_entries.differing == len(remote)


def test_unchanged_files_are_counted_not_kept(tmp_path):
    src = _tree(tmp_path)
    mapping = Mapping(src=src, dest=DEST, is_dir=True)
    listing = Listing(records={DEST: _as_records(_remote(src))})
    listed = plan_mapping(mapping, listing, LocalTrees(), compare="size-mtime", delete=False, warn=print)
    counted = plan_mapping(mapping, listing, LocalTrees(), compare="size-mtime", delete=False, warn=print,
                           list_unchanged=False)
    assert counted.result.skipped == listed.result.skipped >= 3
    assert not [f for f in counted.result.files if f.reason == "unchanged"]
    assert [f for f in listed.result.files if f.reason == "unchanged"]
    assert _decisions(counted)[1:8] == _decisions(listed)[1:8]


def test_checksum_compares_sums_of_unchanged_records_and_linked_dest_compares_all(tmp_path):
    src = _tree(tmp_path)
    rows = _as_records(_remote(src))
    # the host's hasher lines, as sha256sum -z prints them
    same = f"{sha256_file(str(src / 'same.txt'))}  {DEST}/same.txt".encode()
    sums = {same, f"{'0' * 64}  {DEST}/sub/deep.txt".encode()}
    checked = plan_mapping(Mapping(src=src, dest=DEST, is_dir=True), Listing(records={DEST: rows}, sum_records=sums),
                           LocalTrees(checksum=True), compare="checksum", delete=False, warn=print)
    actions = {f.path: (f.action, f.reason) for f in checked.result.files}
    # same record, same sum: unchanged; same record, other sum (or none): sent
    assert actions[f"{DEST}/same.txt"] == ("skip", "unchanged"), actions
    assert actions[f"{DEST}/sub/deep.txt"] == ("send", "checksum")
    assert checked.differing < len(rows)
    # every sum the host printed is the expected line: none is even parsed
    deep = f"{sha256_file(str(src / 'sub/deep.txt'))}  {DEST}/sub/deep.txt".encode()
    mapping, trees = Mapping(src=src, dest=DEST, is_dir=True), LocalTrees(checksum=True)
    unchanged = {r for r in rows & set(trees.expected(mapping)) if r.endswith((b" same.txt", b" sub/deep.txt"))}
    root = record("d", 0o755, 0, 0, b"")  # always compared
    assert len(unchanged) == 2 and root in rows
    matching = Listing(records={DEST: unchanged | {root}}, sum_records={same, deep})
    again = plan_mapping(mapping, matching, trees, compare="checksum", delete=False, warn=print)
    actions = {f.path: (f.action, f.reason) for f in again.result.files}
    assert actions[f"{DEST}/sub/deep.txt"] == actions[f"{DEST}/same.txt"] == ("skip", "unchanged"), actions
    assert matching._sums is None
    one = tmp_path / "one.txt"
    one.write_text("1234")
    os.utime(one, (T, T))
    linked = Listing(records={"/d/one.txt": {record("f", one.stat().st_mode & 0o7777, 4, T, b"")}},
                     dest_links={"/d/one.txt": "/etc/passwd"})
    plan = plan_mapping(Mapping(src=one, dest="/d/one.txt", is_dir=False), linked, LocalTrees(),
                        compare="size-mtime", delete=False, warn=print)
    assert [f.action for f in plan.result.files] == ["fail"] and "symlink" in plan.result.files[0].reason


def test_unchanged_tree_matches_record_for_record(project, server, remote, capsys):
    """On a real GNU host, after a sync, every entry but the root (always
    compared) is known unchanged from its record: the format the script
    prints and the one the client expects agree, byte for byte, for awkward
    names, odd modes and a pre-1970 time."""
    files = {"plain.txt": 0o644, "with space.txt": 0o600, "-leading dash": 0o755, "ünïcödé.txt": 0o4755,
             "sub/quote'\"$;.txt": 0o640, "sub/deeper/x": 0o444}
    for rel, mode in files.items():
        project.file(f"site/{rel}", rel, mode=mode)
    (project.root / "site/empty").mkdir()
    (project.root / "site/sub").chmod(0o2750)
    os.symlink("plain.txt", project.root / "site/link")
    weird = os.fsencode(project.root / "site") + b"/latin1-\xe9.txt"
    with open(weird, "wb") as handle:
        handle.write(b"bytes")
    old = project.file("site/old.txt", "sixties")
    os.utime(old, (-100_000.5, -100_000.5))
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    assert project.run(capsys=capsys)[0] == 0
    assert (remote / "www/sub").stat().st_mode & 0o7777 == 0o2750  # converged in one run
    log = project.root / "logs/info.log"
    log.write_text("")
    report = project.root / "report.json"
    status, out, err = project.run("--json", str(report), "-v", capsys=capsys)
    host = json.loads(report.read_text())["hosts"][0]
    assert status == 0 and host["changed"] is False and host["skipped"] == len(files) + 3, (out, err)
    lines = [line for line in log.read_text().splitlines() if "listed entries differ" in line]
    # the root and the link (links are compared by target) only
    assert lines and lines[-1].endswith("planned: 2 listed entries differ from what the host should have"), lines


def test_walk_hashes_every_file_once_with_checksum(tmp_path, monkeypatch):
    """With --checksum the walk hashes the files: planning for each host
    then finds every sum made."""
    import hashlib

    from synctasks import local

    src = _tree(tmp_path)
    (src / "locked.txt").write_text("secret")
    (src / "locked.txt").chmod(0)
    trees = LocalTrees(checksum=True)
    entries = trees.get(Mapping(src=src, dest=DEST, is_dir=True))
    files = [e for e in entries if e.kind == "f"]
    readable = [e for e in files if e.rel != "locked.txt" or os.geteuid() == 0]
    assert len(files) == 10 and len(trees._sums) == len(readable)
    for entry in readable:
        assert trees._sums[(entry.path, entry.size, entry.mtime_ns)] == hashlib.sha256(
            open(entry.path, "rb").read()).hexdigest()
    monkeypatch.setattr(local, "sha256_file", lambda path: pytest.fail(f"hashed again: {path}"))
    assert trees.sha256(readable[0]) == trees._sums[(readable[0].path, readable[0].size, readable[0].mtime_ns)]


def test_summary_report_has_counts_and_only_the_json_report_has_files():
    from synctasks.results import FileResult, GroupResult, HostResult, MappingResult

    mapping = MappingResult("/src", DEST, [FileResult(f"{DEST}/a", "send", "new", 3)], unchanged=5)
    group = GroupResult({"h": HostResult("h", [mapping])})
    summary, full = group.to_dict(files=False), group.to_dict()
    host = summary["hosts"][0]
    assert (host["sent"], host["skipped"], host["changed"]) == (1, 5, True)
    assert "files" not in host["mappings"][0] and summary["hosts"][0]["mappings"][0]["skipped"] == 5
    assert full["hosts"][0]["mappings"][0]["files"] == [{"path": f"{DEST}/a", "action": "send", "reason": "new",
                                                         "size": 3, "flags": ""}]


def test_a_send_is_its_own_record_made_from_shared_parts(tmp_path):
    src = _tree(tmp_path)
    mapping, trees = Mapping(src=src, dest=DEST, is_dir=True, mode=0o600), LocalTrees()
    plan = plan_mapping(mapping, Listing(), trees, compare="size-mtime", delete=False, warn=print)
    sent = {s.path: s for s in plan.sends}
    send = sent[f"{DEST}/sub/deep.txt"]
    assert send in plan.result.files  # the record the report shows is the Send itself
    assert send.to_dict() == {"path": f"{DEST}/sub/deep.txt", "action": "send", "reason": "new", "size": 1,
                              "flags": ">f+++++++++"}
    assert (send.name, send.folder, send.mode) == ("deep.txt", f"{DEST}/sub", 0o600)
    # Per host it stores no path of its own: the walk's entry and its
    # folder's Place, both shared.
    assert any(send.local is entry for entry in trees.get(mapping))
    first, second = sent[f"{DEST}/same.txt"], sent[f"{DEST}/new.txt"]
    assert first.place is second.place and first.place is not send.place
    assert not hasattr(send, "__dict__")


def test_small_files_are_kept_for_other_hosts_only():
    trees = LocalTrees(senders=3)
    room = trees.blob_room
    trees.remember("/src/a", b"abc")
    assert trees.blobs.get("/src/a") == b"abc" and trees.blob_room == room - 3
    trees.blob_room = 2
    trees.remember("/src/b", b"xyz")  # over what is left of the budget: not kept
    assert trees.blobs.get("/src/b") is None and trees.blobs.get("/src/a") == b"abc"
    alone = LocalTrees(senders=1)  # one host: nothing to keep
    alone.remember("/src/a", b"abc")
    assert alone.blobs.get("/src/a") is None and alone.blob_room == room


def test_runs_of_records_are_taken_whole_up_to_a_link_whose_target_looks_like_one():
    """R records are added a run at a time; a link's target (the item after
    its record) is never taken for a record, whatever it looks like."""
    data = b"\0".join([
        b"Ttok", b"Hhome", b"Lgnu", b"M/d", b"W1",
        b"Rd755 0 0 ", b"Rf644 1 1700000000 a", b"Rl777 0 0 link", b"Rf644 9 1 not-a-record",
        b"Rf644 2 1700000000 b", b"S/d/.synctasks-tmp-x", b"Rf644 3 1700000000 c", b"Rl777 0 0 last", b"Rd755 0 0 x",
        b"M/e", b"W1", b"Rf644 4 1700000000 e", b"Ztok", b""])
    listing = parse_listing(data)
    assert listing.records["/d"] == {b"Rd755 0 0 ", b"Rf644 1 1700000000 a", b"Rl777 0 0 link\0Rf644 9 1 not-a-record",
                                     b"Rf644 2 1700000000 b", b"Rf644 3 1700000000 c", b"Rl777 0 0 last\0Rd755 0 0 x"}
    assert listing.records["/e"] == {b"Rf644 4 1700000000 e"}
    assert listing.stale == ["/d/.synctasks-tmp-x"]


def test_runs_of_records_between_many_links_and_other_records_are_found_in_place():
    """Runs are found in the listing's bytes, past every record read one by
    one before them: hundreds of links (targets that look like records, or
    are empty) and staging records between short runs, record for record."""
    import random
    rng = random.Random(7)
    items, want, stale = [b"Ttok", b"Hhome", b"Lgnu", b"M/d", b"W1"], set(), []
    for n in range(600):
        roll = rng.random()
        if roll < 0.4:
            target = rng.choice([b"", b"Rf644 1 1 t%d" % n, b"x"])
            items += [b"Rl777 0 0 l%d" % n, target]
            want.add(b"Rl777 0 0 l%d\0" % n + target)
        elif roll < 0.5:
            items.append(b"S/d/.synctasks-%d" % n)
            stale.append("/d/.synctasks-%d" % n)
        else:
            for k in range(rng.randrange(1, 4)):
                items.append(b"Rf%x" % (n * 4 + k))  # short: a start a few bytes off shows
                want.add(items[-1])
    listing = parse_listing(b"\0".join(items + [b"Ztok", b""]))
    assert listing.records["/d"] == want
    assert listing.stale == stale


def test_sum_lines_after_c_are_taken_whole_for_records_dests():
    a, b = "a" * 64, "b" * 64
    data = b"\0".join([b"Ttok", b"Hhome", b"Lgnu", b"M/d", b"W1", b"Rd755 0 0 ", b"Rf644 1 1700000000 x y",
                       b"C", f"{a}  /d/x y".encode(), f"{b}  /d/Ztok".encode(), b"Ztok", b""])
    listing = parse_listing(data)
    assert listing.sum_records == {f"{a}  /d/x y".encode(), f"{b}  /d/Ztok".encode()}
    assert listing.sum_of("/d/x y") == a and listing.token == "tok"
