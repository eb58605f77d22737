"""Watch mode against real SSH servers: edits, creations, deletions, renames
and bursts reach every host; excluded paths never leave; a host that drops
catches up; SIGTERM mid-round leaves no partial file. Every wait is for a
condition, with a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from conftest import MAIN_HOSTS

from synctasks.constants import STAGING_PREFIX
from synctasks.inputs import Mapping, load_inventory
from synctasks.runner import options_from
from synctasks.watch import ADDED, DELETED, MODIFIED, RoundTrees, WatchSession, plan_round
from testing.testproxy import TcpProxy

BIN = Path(sys.executable).parent


def wait_for(condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def contents(root: Path) -> dict[str, bytes | None]:
    """rel path -> bytes (None for folders), staging folders left out; what
    vanishes while being read (a round commits meanwhile) is left out too."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(STAGING_PREFIX)]
        base = Path(folder)
        for name in dirs + files:
            path = base / name
            rel = str(path.relative_to(root))
            try:
                if path.is_symlink():
                    found[rel] = os.readlink(path).encode()
                elif path.is_dir():
                    found[rel] = None
                else:
                    found[rel] = path.read_bytes()
            except OSError:
                continue
    return found


class Watching:
    """A watch session run in-process (in a thread) on a project."""

    def __init__(self, project, delete: bool = False, exclude: tuple[str, ...] = ()):
        project.write()
        inventory = load_inventory(project.config_path)
        hosts = [h for h in inventory.hosts if h.name in inventory.mappings]
        options = options_from(inventory.settings, delete=delete)
        options = replace(options, exclude=tuple(options.exclude) + tuple(exclude))
        self.records = []
        self.lock = threading.Lock()
        self.session = WatchSession(inventory, hosts, options, on_round=self._on_round)
        self.hosts = [h.name for h in hosts]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.summary = None

    def _run(self):
        self.summary = self.session.run()

    def _on_round(self, record, stats):
        with self.lock:
            self.records.append(record)

    def rounds(self, host=None, kind="round"):
        with self.lock:
            return [r for r in self.records if (host is None or r.host == host) and r.kind == kind]

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: all(self.rounds(h, "initial") for h in self.hosts), what="the initial syncs")
        return self

    def __exit__(self, *exc):
        self.session.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


def three_hosts(project, server, remote, **extra) -> list[Path]:
    dests = []
    for n, address in enumerate(MAIN_HOSTS):
        dest = remote / f"h{n}" / "site"
        dests.append(dest)
        project.add_host(server, address, [{"src": "site", "dest": str(dest), **extra}])
    return dests


def in_sync(local: Path, dests: list[Path]):
    want = contents(local)
    return all(contents(d) == want for d in dests)


# --------------------------------------------------------------------------
# Planning a round (no server)
# --------------------------------------------------------------------------
def test_plan_round_sends_changed_files_alone_and_scopes_the_rest(tmp_path):
    src = tmp_path / "site"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/one.txt").write_text("1")
    (src / "top.txt").write_text("t")
    (src / "new").mkdir()
    (src / "new/x").write_text("x")
    (src / "skip.tmp").write_text("no")
    mapping = Mapping(src=src, dest="/srv/site", is_dir=True, exclude=("*.tmp",))

    plan = plan_round(mapping, {"a/b/one.txt": MODIFIED, "top.txt": MODIFIED, "skip.tmp": MODIFIED}, delete=True)
    assert sorted((m.dest, m.is_dir) for m in plan.mappings) == [("/srv/site/a/b/one.txt", False),
                                                                  ("/srv/site/top.txt", False)]
    assert plan.trusted == {str(src / "a/b/one.txt"), str(src / "top.txt")} and plan.ignored == 1

    # A deletion lists the nearest folder that holds it; a new folder goes whole.
    plan = plan_round(mapping, {"a/b/gone.txt": DELETED, "a/b/one.txt": MODIFIED}, delete=True)
    (sub,) = plan.mappings
    assert sub.dest == "/srv/site/a/b" and sub.is_dir
    scope = plan.scopes[sub]
    assert scope.trees == {"gone.txt"} and scope.exact == {"one.txt"}
    plan = plan_round(mapping, {"new": ADDED, "new/x": ADDED}, delete=False)
    (sub,) = plan.mappings
    assert sub.dest == "/srv/site/new" and plan.scopes[sub].trees == {""}
    # Without --delete a vanished path changes nothing remotely.
    assert plan_round(mapping, {"a/b/gone.txt": DELETED}, delete=False).mappings == []


def test_scoped_walk_keeps_the_mappings_exclude_patterns(tmp_path):
    src = tmp_path / "site"
    (src / "a/build").mkdir(parents=True)
    (src / "a/build/out.o").write_text("o")
    (src / "a/keep.txt").write_text("k")
    (src / "a/other.txt").write_text("other")
    mapping = Mapping(src=src, dest="/srv/site", is_dir=True, exclude=("/a/build/",))
    plan = plan_round(mapping, {"a/build": ADDED, "a/keep.txt": ADDED | DELETED, "a/gone": DELETED},
                      delete=True)
    (sub,) = plan.mappings
    trees = RoundTrees()
    trees.scopes.update(plan.scopes)
    walked = {e.rel for e in trees.get(sub)}
    # The anchored pattern still matches below the sub-root; other.txt is out of scope.
    assert walked == {"", "keep.txt"}
    exclude = trees.excluder(sub)
    assert not exclude("gone", False) and exclude("other.txt", False) and exclude("build", True)


# --------------------------------------------------------------------------
# Real servers
# --------------------------------------------------------------------------
def test_edits_creations_deletions_and_renames_reach_every_host(project, server, remote):
    project.file("site/index.html", "v1")
    project.file("site/css/main.css", "body{}")
    project.file("site/old/page.html", "old")
    project.file("site/rename-me.txt", "r")
    dests = three_hosts(project, server, remote)
    site = project.root / "site"
    with Watching(project, delete=True) as w:
        assert in_sync(site, dests)
        (site / "index.html").write_text("v2")
        (site / "new.txt").write_text("new")
        (site / "docs/deep").mkdir(parents=True)
        (site / "docs/deep/a.md").write_text("a")
        (site / "css/main.css").unlink()
        os.rename(site / "rename-me.txt", site / "renamed.txt")
        os.rename(site / "old", site / "moved")
        os.symlink("index.html", site / "link.html")
        # An editor's save: write a temporary file, rename it over the original.
        (site / ".main.css.swx").write_text("scratch")
        (site / ".main.css.swx").unlink()
        (site / "docs/deep/a.md.tmp").write_text("a, saved")
        os.replace(site / "docs/deep/a.md.tmp", site / "docs/deep/a.md")
        wait_for(lambda: in_sync(site, dests), what="every host in sync")
        # A same-size rewrite within the same second: size and mtime look
        # unchanged, the event is trusted.
        target = site / "index.html"
        stamp = target.stat().st_mtime_ns
        target.write_text("v3")
        os.utime(target, ns=(stamp, stamp))
        wait_for(lambda: all((d / "index.html").read_text() == "v3" for d in dests), what="the same-size edit")
        assert all(r.ok for r in w.records), [r.to_dict() for r in w.records if not r.ok]
    assert not any(STAGING_PREFIX in str(p) for d in dests for p in d.rglob("*"))


def test_rounds_over_sftp(project, server, remote):
    project.config["sync"]["protocol"] = "sftp"
    project.file("site/index.html", "v1")
    project.file("site/old/page.html", "old")
    dests = three_hosts(project, server, remote)
    site = project.root / "site"
    with Watching(project, delete=True) as w:
        (site / "index.html").write_text("v2")
        (site / "docs/deep").mkdir(parents=True)
        (site / "docs/deep/a.md").write_text("a")
        os.rename(site / "old", site / "moved")
        wait_for(lambda: in_sync(site, dests), what="every host in sync")
        assert all(r.ok for r in w.records), [r.to_dict() for r in w.records if not r.ok]


def test_a_burst_arrives_in_a_few_rounds(project, server, remote):
    project.file("site/seed.txt", "s")
    dests = three_hosts(project, server, remote)
    site = project.root / "site"
    with Watching(project) as w:
        for n in range(500):
            (site / f"burst/d{n % 10}").mkdir(parents=True, exist_ok=True)
            (site / f"burst/d{n % 10}/f{n}.txt").write_text(f"file {n}\n" * 20)
        wait_for(lambda: in_sync(site, dests), timeout=30, what="the burst on every host")
        for host in w.hosts:
            rounds = w.rounds(host)
            assert 1 <= len(rounds) <= 5, [r.to_dict() for r in rounds]
            assert sum(r.result.sent for r in rounds) >= 500  # a file whose events straddle two batches goes twice


def test_an_excluded_path_is_never_sent(project, server, remote):
    project.file("site/a.txt", "a")
    dests = three_hosts(project, server, remote, exclude=["/secret/"])
    site = project.root / "site"
    with Watching(project, delete=True, exclude=("*.swp",)) as w:
        project.file("site/.a.txt.swp", "swap")
        project.file("site/secret/key.pem", "KEY")
        project.file("site/secret/deeper/more.pem", "KEY")
        project.file("site/sub/x.swp", "swap")
        project.file("site/sub/visible.txt", "v")  # after the others: once it is there, they had their chance
        wait_for(lambda: all((d / "sub/visible.txt").exists() for d in dests), what="visible.txt")
        for d in dests:
            assert sorted(contents(d)) == ["a.txt", "sub", "sub/visible.txt"]
        sent = [f.path for r in w.records if r.result for m in r.result.mappings for f in m.files
                if f.action == "send"]
        assert not [p for p in sent if "secret" in p or p.endswith(".swp")]


def test_a_host_that_drops_catches_up_and_the_others_never_wait(project, server, remote):
    project.file("site/a.txt", "a")
    site = project.root / "site"
    with TcpProxy((MAIN_HOSTS[0], server.port), listen=(MAIN_HOSTS[0], 0)) as proxy:
        port = proxy.port
        dests = []
        for n, address in enumerate(MAIN_HOSTS):
            dest = remote / f"h{n}" / "site"
            dests.append(dest)
            project.add_host(server, address, [{"src": "site", "dest": str(dest)}],
                             port=port if n == 0 else None)
        with Watching(project, delete=True) as w:
            proxy.stop()  # the host is gone: cut, and nothing listens
            (site / "a.txt").write_text("changed while away")
            (site / "b.txt").write_text("new while away")
            wait_for(lambda: in_sync(site, dests[1:]), what="the hosts still up")
            assert not in_sync(site, dests[:1])
            wait_for(lambda: w.session.workers[0].stats.state in ("down", "connecting"), what="host 0 down")
            (site / "c.txt").write_text("also while away")
            wait_for(lambda: in_sync(site, dests[1:]), what="the hosts still up, again")
            with TcpProxy((MAIN_HOSTS[0], server.port), listen=(MAIN_HOSTS[0], port)):
                wait_for(lambda: in_sync(site, dests), timeout=20, what="host 0 caught up")
                wait_for(lambda: w.rounds(MAIN_HOSTS[0], "resync"), what="the resync's record")
                assert w.session.workers[0].stats.reconnects == 1
                (site / "d.txt").write_text("after")
                wait_for(lambda: in_sync(site, dests), what="rounds again on host 0")


def test_sigterm_mid_round_leaves_no_partial_file(project, server, remote):
    data = project.file("data/big.bin", b"A" * (8 << 20))
    target = remote / "big.bin"
    with TcpProxy((MAIN_HOSTS[0], server.port), delay=0.01, listen=(MAIN_HOSTS[0], 0)) as slow:
        project.add_host(server, MAIN_HOSTS[0], [{"src": "data/big.bin", "dest": str(target)}], port=slow.port)
        project.write()
        report = project.root / "rounds.jsonl"
        argv = [sys.executable, "-m", "synctasks", "watch", "--config", str(project.config_path), "--json",
                str(report)]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: report.exists() and '"initial"' in report.read_text(), timeout=60,
                     what="the initial sync")
            assert target.read_bytes() == data.read_bytes()
            # The link stalls 2 MiB into the round: it cannot finish on its own.
            before = slow.bytes_forwarded
            slow.stall_after = before + (2 << 20)
            data.write_bytes(os.urandom(8 << 20))
            wait_for(lambda: slow.bytes_forwarded >= before + (2 << 20), timeout=20, what="the round under way")
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=20)
            assert time.monotonic() - signalled < 8
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 143, (out, err)
    assert "watch stopped (SIGTERM)" in out and "HOST" in out
    assert "abandoning the round in flight" in err
    assert target.read_bytes() == b"A" * (8 << 20)  # the old file whole, never a part of the new one
    rounds = [json.loads(line) for line in report.read_text().splitlines()]
    assert rounds[0]["kind"] == "initial" and rounds[0]["sent"] == 1 and rounds[0]["bytes"] == 8 << 20


def test_the_inotify_watch_limit_gets_a_clear_message(project, server, remote, capsys, monkeypatch):
    import watchfiles._rust_notify as backend

    class Limited:
        def __init__(self, *args):
            raise OSError('OS file watch limit reached. about ["/big/tree"]')

    monkeypatch.setattr(backend, "RustNotify", Limited)
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/site"}])
    status, out, err = project.run("watch", capsys=capsys)
    assert status == 2
    assert "sysctl fs.inotify.max_user_watches=" in err
    assert not (remote / "site").exists()  # nothing was sent


def test_fab_watch_runs_and_stops_on_sigint(project, server, remote):
    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/site"}])
    project.write()
    report = project.root / "rounds.jsonl"
    repo = Path(__file__).resolve().parent.parent  # where fabfile.py is
    argv = [str(BIN / "fab"), "-r", str(repo), "watch", "--config", str(project.config_path), "--json",
            str(report)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: report.exists() and '"initial"' in report.read_text(), timeout=30, what="the first sync")
        (project.root / "site/b.txt").write_text("b")
        wait_for(lambda: (remote / "site/b.txt").exists(), what="a round")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, (out, err)
    assert "watch stopped (SIGINT)" in out
    kinds = [json.loads(line)["kind"] for line in report.read_text().splitlines()]
    assert kinds[0] == "initial" and "round" in kinds
