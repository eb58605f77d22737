"""Pure planning logic: listing parser, comparison, exclusions, deletions."""

from __future__ import annotations

import os

from synctasks.inputs import Mapping
from synctasks.local import Excluder, LocalTrees
from synctasks.plan import plan_mapping
from synctasks.listing import Listing, RemoteEntry, parse_listing


def test_parse_listing_handles_odd_names_and_hashes():
    digest = "ab" * 32
    data = (b"H/home/u\0M/srv/a\0Ed 755 4096 1700000000.5 1000 1000 /srv/a\0\0u\0g\0"
            b"Ef 644 3 1700000001.9999 1000 1000 /srv/a/x y\nz\0\0u\0g\0"
            b"El 777 5 1700000002.0 0 0 /srv/a/link\0Zlink\0root\0"
            b"domain users\0"
            b"S/srv/a/.synctasks-tmp-dead\0" + digest.encode() + b"  /srv/a/x y\nz\0Ztoken\0")
    listing = parse_listing(data)
    assert listing.home == "/home/u"
    entries = listing.entries["/srv/a"]
    assert entries["/srv/a/x y\nz"] == RemoteEntry("f", 0o644, 3, 1700000001, "", digest, "u", "g", "1000", "1000")
    assert entries["/srv/a/link"].owner == "root" and entries["/srv/a/link"].group == "domain users"
    assert entries["/srv/a/link"].link == "Zlink"  # a link target that looks like an end record
    assert listing.stale == ["/srv/a/.synctasks-tmp-dead"]


def test_parse_listing_of_the_stat_methods():
    """BusyBox/GNU ``stat -c`` (hex mode) and BSD ``stat -f`` (octal) records,
    link targets as K records, pre-1970 times rounded down."""
    data = (b"Lstatc\0M/srv/b\0F41ed/4096/1700000000/root/domain users/0/100//srv/b\0"
            b"F81a4/12/-5/u/g/1000/1000//srv/b/a b\0FA1ff/7/1700000003/u/g/1/2//srv/b/l\0"
            b"K/srv/b/l\0../target\0N/srv/b/x\ny\0A/srv/b/.synctasks-tmp-h-1-0123456789abcdef\0"
            b"M/srv/c\0G100600/5/1700000009/u/g/5/6//srv/c\0Zt\0")
    listing = parse_listing(data)
    assert listing.method == "statc"
    b = listing.entries["/srv/b"]
    assert (b["/srv/b"].kind, b["/srv/b"].mode, b["/srv/b"].group) == ("d", 0o755, "domain users")
    assert (b["/srv/b/a b"].kind, b["/srv/b/a b"].mode, b["/srv/b/a b"].size, b["/srv/b/a b"].mtime) == \
        ("f", 0o644, 12, -5)
    assert (b["/srv/b/l"].kind, b["/srv/b/l"].link, b["/srv/b/l"].uid) == ("l", "../target", "1")
    assert listing.unlisted == ["/srv/b/x\ny"]
    assert listing.active == {"/srv/b": ["/srv/b/.synctasks-tmp-h-1-0123456789abcdef"]}
    c = listing.entries["/srv/c"]["/srv/c"]
    assert (c.kind, c.mode, c.size, c.gid) == ("f", 0o600, 5, "6")


def test_excluder_gitignore_semantics():
    ex = Excluder(["*.tmp", "/build/", "docs/**/draft.md"])
    assert ex("a/b/c.tmp", False) and ex("build", True) and not ex("src/build", False)
    assert ex("docs/x/y/draft.md", False) and not ex("docs/final.md", False)


def _mapping(tmp_path):
    src = tmp_path / "src"
    (src / "keep").mkdir(parents=True)
    (src / "keep" / "f").write_text("1234")
    os.utime(src / "keep" / "f", (1_700_000_000, 1_700_000_000))
    return Mapping(src=src, dest="/d/site", is_dir=True)


def test_plan_skips_equal_and_deletes_only_top_extraneous(tmp_path):
    mapping = _mapping(tmp_path)
    mode = (tmp_path / "src").stat().st_mode & 0o7777
    listing = Listing(entries={"/d/site": {
        "/d/site": RemoteEntry("d", mode, 0, 0),
        "/d/site/keep": RemoteEntry("d", mode, 0, 0),
        "/d/site/keep/f": RemoteEntry("f", 0o644, 4, 1_700_000_000),
        "/d/site/gone": RemoteEntry("d", 0o755, 0, 0),
        "/d/site/gone/x": RemoteEntry("f", 0o644, 1, 1),
    }})
    plan = plan_mapping(mapping, listing, LocalTrees(), compare="size-mtime", delete=True, warn=print)
    actions = {f.path: f.action for f in plan.result.files}
    assert actions["/d/site/keep/f"] == "skip"
    assert actions["/d/site/gone/"] == "delete" and actions["/d/site/gone/x"] == "delete"
    assert plan.deletes == ["/d/site/gone"] and plan.sends == []


def test_plan_refuses_file_where_folder_is_without_delete(tmp_path):
    mapping = _mapping(tmp_path)
    listing = Listing(entries={"/d/site": {"/d/site": RemoteEntry("d", 0o755, 0, 0),
                                           "/d/site/keep": RemoteEntry("d", 0o755, 0, 0),
                                           "/d/site/keep/f": RemoteEntry("d", 0o755, 0, 0)}})
    plan = plan_mapping(mapping, listing, LocalTrees(), compare="size-mtime", delete=False, warn=print)
    failed = [f for f in plan.result.files if f.action == "fail"]
    assert failed and "--delete" in failed[0].reason
