"""Pure planning logic: listing parser, comparison, exclusions, deletions."""

from __future__ import annotations

import os

from synctasks.inputs import Mapping
from synctasks.plan import Excluder, LocalTrees, plan_mapping
from synctasks.remote import Listing, RemoteEntry, parse_listing


def test_parse_listing_handles_odd_names_and_hashes():
    digest = "ab" * 32
    data = (b"H/home/u\0M/srv/a\0Ed 755 4096 1700000000.5 /srv/a\0\0u\0g\0"
            b"Ef 644 3 1700000001.9999 /srv/a/x y\nz\0\0u\0g\0El 777 5 1700000002.0 /srv/a/link\0Zlink\0root\0"
            b"domain users\0"
            b"S/srv/a/.synctasks-tmp-dead\0" + digest.encode() + b"  /srv/a/x y\nz\0Ztoken\0")
    listing = parse_listing(data)
    assert listing.home == "/home/u"
    entries = listing.entries["/srv/a"]
    assert entries["/srv/a/x y\nz"] == RemoteEntry("f", 0o644, 3, 1700000001, "", digest, "u", "g")
    assert entries["/srv/a/link"].owner == "root" and entries["/srv/a/link"].group == "domain users"
    assert entries["/srv/a/link"].link == "Zlink"  # a link target that looks like an end record
    assert listing.stale == ["/srv/a/.synctasks-tmp-dead"]


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
