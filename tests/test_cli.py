"""What the console prints and writes (issue 12, items 6, 7, 11 and "CI past
one machine"): -v/-vv, plan wording, --quiet, --version, the 80-column
summary, escaped remote text, --shard and report merge."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MAIN_HOSTS, UNREACHABLE_HOST

from synctasks import cli
from synctasks.progress import escape
from synctasks.report import merge_reports
from synctasks.runner import in_shard

BIN = Path(sys.executable).parent


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def synced_site(project, server, remote, files=("a.txt", "b.txt")) -> Path:
    for name in files:
        project.file(f"site/{name}", name)
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    return remote / "www"


# --------------------------------------------------------------------------
# item 6: what changed, by name
# --------------------------------------------------------------------------
def test_verbose_lists_changed_items_and_vv_adds_skipped(project, server, remote, capsys):
    dest = synced_site(project, server, remote)
    status, out, _ = project.run(capsys=capsys)
    assert status == 0 and ">f+++++++++" not in out  # counts only by default
    (project.root / "site/a.txt").write_text("a, longer")
    status, out, _ = project.run("-v", capsys=capsys)
    assert status == 0
    assert re.search(rf"^{re.escape(MAIN_HOSTS[0])}: >f\.s[.t]\.{{6}} {re.escape(str(dest))}/a\.txt$", out, re.M), out
    assert f"{dest}/b.txt" not in out
    (project.root / "site/a.txt").write_text("a, longer still")
    status, out, _ = project.run("-vv", capsys=capsys)
    assert f"{dest}/a.txt" in out and f"{dest}/b.txt" in out


def _read_pty(fd: int, process: subprocess.Popen, seconds: float) -> bytes:
    chunks = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the other end closed
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    return b"".join(chunks)


def test_verbose_on_a_terminal_loses_no_line(project, server, remote):
    names = [f"f{i:03d}.txt" for i in range(60)]
    dest = synced_site(project, server, remote, names)
    project.write()
    main, child = pty.openpty()
    process = subprocess.Popen([str(BIN / "synctasks"), "sync", "-v", "--config", str(project.config_path)],
                               stdin=child, stdout=child, stderr=child, env=dict(_env(), COLUMNS="200"))
    os.close(child)
    try:
        raw = _read_pty(main, process, 60)
        assert process.wait(10) == 0
    finally:
        os.close(main)
        if process.poll() is None:
            process.kill()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode(errors="replace"))
    for name in names:
        assert f">f+++++++++ {dest}/{name}" in text, name
    assert "MB" not in text.replace("MiB", "")  # binary units, as in the table


def test_progress_columns_binary_units_and_quiet_for_nothing_to_send():
    from rich.progress import Progress

    from synctasks.progress import _columns

    size, speed, left = _columns()
    bars = Progress()
    busy = bars.add_task("h", total=5 << 20, bytes_total=5 << 20)
    bars.update(busy, completed=1 << 20)
    idle = bars.add_task("i", total=1, bytes_total=0)
    assert size.render(bars.tasks[busy]).plain == "1.0 MiB/5.0 MiB"
    assert size.render(bars.tasks[idle]).plain == "nothing to send"
    assert speed.render(bars.tasks[idle]).plain == "" and left.render(bars.tasks[idle]).plain == ""


# --------------------------------------------------------------------------
# item 7: plan tells the truth
# --------------------------------------------------------------------------
def test_plan_says_would_never_in_sync_for_pending_changes(project, server, remote, capsys):
    dest = synced_site(project, server, remote)
    status, out, _ = project.run("plan", capsys=capsys)
    assert status == 0 and not dest.exists()
    assert f"{MAIN_HOSTS[0]}: would change (would send 2 file(s), 10 B, would delete 0, 0 unchanged" in out
    assert "in sync" not in out and "ok" not in out.split()
    assert out.strip().splitlines()[-1].startswith("dry run: 1 of 1 host(s) would change (2 file(s) would be sent")
    assert project.run(capsys=capsys)[0] == 0
    status, out, _ = project.run("plan", capsys=capsys)
    assert out.strip().splitlines()[-1] == "dry run: all 1 host(s) in sync, nothing would change"


# --------------------------------------------------------------------------
# item 11: small things
# --------------------------------------------------------------------------
def test_quiet_prints_the_final_status_only(project, server, remote, capsys):
    synced_site(project, server, remote)
    status, out, err = project.run("--quiet", capsys=capsys)
    assert status == 0 and err == ""
    assert out.strip().splitlines() == [out.strip()] and out.startswith("sync done: 1 host(s) in sync (1 changed)")
    status, out, _ = project.run("plan", "-q", capsys=capsys)
    assert status == 0 and out.startswith("dry run: all 1 host(s) in sync")


def test_sync_runs_with_the_collector_off_but_as_each_waiting_host_starts(project, server, remote, capsys,
                                                                          monkeypatch):
    import gc

    from synctasks import runner

    seen, collections, made = [], [], []
    real, real_collect = runner.sync_inventory, gc.collect

    def recording(**kwargs):
        seen.append(gc.isenabled())
        made.append([object()])  # made during the run, as its entries and records are
        return real(**kwargs)

    monkeypatch.setattr(runner, "sync_inventory", recording)
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or real_collect(*a))
    synced_site(project, server, remote)
    assert gc.isenabled()
    status, _, _ = project.run("--quiet", capsys=capsys)
    assert status == 0 and seen == [False] and gc.isenabled() and collections == []  # one host: none
    # What the run made went back as the oldest generation (no pass of the
    # collector over all of it on the way out), and nothing stays frozen.
    assert any(o is made[0] for o in gc.get_objects(generation=2)) and gc.get_freeze_count() == 0
    # Three hosts, all at once: none either.
    for host in MAIN_HOSTS[1:]:
        project.add_host(server, host, [{"src": "site", "dest": f"{remote}/www-{host}"}])
    status, _, _ = project.run("--quiet", capsys=capsys)
    assert status == 0 and seen == [False, False] and collections == []
    # One at a time: a collection as each of the first two finishes and the
    # next one starts (closed connections sit in reference cycles).
    project.config.setdefault("sync", {})["connections"] = 1
    gc.disable()  # a caller that turned it off keeps it off
    try:
        status, _, _ = project.run("--quiet", capsys=capsys)
        assert status == 0 and seen == [False] * 3 and not gc.isenabled() and len(collections) == 2
    finally:
        gc.enable()
    status, _, _ = project.run("--shard", "3/2", capsys=capsys)  # refused inputs: restored too
    assert status == 2 and gc.isenabled()


def test_version(capsys):
    from synctasks import __version__

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"synctasks {__version__}"


def test_summary_fits_80_columns_and_warnings_name_the_host_once(project, server, remote, capsys):
    synced_site(project, server, remote)
    project.config["sync"]["retries"] = "1"
    dead = project.add_host(server, UNREACHABLE_HOST, [{"src": "site", "dest": f"{remote}/x"}], trust=False)
    dead["port"] = server.port
    wrong = project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": f"{remote}/y"}], auth="password")
    wrong["passkey"] = "not the password"
    status, out, err = project.run(capsys=capsys)
    assert status == 1
    table = out[out.index("HOST "):].splitlines()
    assert all(len(line) <= 80 for line in table), table
    assert f"{UNREACHABLE_HOST}: {UNREACHABLE_HOST}:" not in err and f"warning: {UNREACHABLE_HOST}: " in err
    assert "retry 1 of 1" in err
    assert "login refused" in out and "failed.;" not in out


def test_remote_text_is_escaped(project, server, remote, capsys):
    name = "evil\x1b[2Jred\x07.txt"
    project.file(f"site/{name}", "x")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    status, out, err = project.run("-v", capsys=capsys)
    assert status == 0 and (remote / "www" / name).exists()
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert f"{remote}/www/evil\\x1b[2Jred\\x07.txt" in out


def test_escape_shows_control_and_undecodable_bytes():
    assert escape("plain/path ü") == "plain/path ü"
    assert escape("a\nb\x1b[31m\x7f") == "a\\nb\\x1b[31m\\x7f"
    assert escape(b"bad\xff".decode("utf-8", "surrogateescape")) == "bad\\xff"
    assert escape("rtl\u202eexe") == "rtl\\u202eexe"


# --------------------------------------------------------------------------
# CI past one machine
# --------------------------------------------------------------------------
def test_shard_is_a_stable_partition():
    names = [f"web{i}.example" for i in range(200)]
    shards = [[n for n in names if in_shard(n, k, 3)] for k in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(names)  # every host in exactly one shard
    assert all(30 < len(s) < 110 for s in shards)
    # A host's shard depends on its name alone, not on the other hosts.
    assert [in_shard("web7.example", k, 3) for k in (1, 2, 3)].count(True) == 1


def test_shards_then_report_merge(project, server, remote, capsys, tmp_path):
    project.file("site/a.txt", "a")
    for address in MAIN_HOSTS:
        project.add_host(server, address, [{"src": "site", "dest": f"{remote}/{address}"}])
    reports = []
    for k in (1, 2):
        report = tmp_path / f"shard-{k}.json"
        status, out, _ = project.run("--shard", f"{k}/2", "--json", str(report), capsys=capsys)
        assert status == 0
        reports.append(report)
    names = [[h["host"] for h in json.loads(r.read_text())["hosts"]] for r in reports]
    assert sorted(names[0] + names[1]) == sorted(MAIN_HOSTS) and not set(names[0]) & set(names[1])
    assert all((remote / a / "a.txt").exists() for a in MAIN_HOSTS)
    assert cli.main(["report", "merge", *map(str, reports)]) == 0
    out = capsys.readouterr().out
    assert all(a in out for a in MAIN_HOSTS) and out.count("HOST ") == 1
    assert "2 report(s): done: 3 host(s) in sync" in out
    merged = tmp_path / "merged.json"
    assert cli.main(["report", "merge", "-q", "--json", str(merged), *map(str, reports)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert sorted(h["host"] for h in json.loads(merged.read_text())["hosts"]) == sorted(MAIN_HOSTS)
    # The worst status wins: a failed shard makes the merge fail, an interrupted one more so.
    failed = json.loads(reports[1].read_text())
    failed.update(ok=False, exit_code=1)
    failed["hosts"][0].update(ok=False, status="FAILED", error="boom")
    reports[1].write_text(json.dumps(failed))
    assert cli.main(["report", "merge", *map(str, reports)]) == 1
    assert "boom" in capsys.readouterr().out
    failed.update(exit_code=130, interrupted="SIGINT")
    reports[1].write_text(json.dumps(failed))
    assert merge_reports(reports)[1] == 130
    assert cli.main(["report", "merge", str(reports[0]), str(tmp_path / "missing.json")]) == 2
    busy = str(reports[0] if names[0] else reports[1])
    assert cli.main(["report", "merge", busy, busy]) == 2  # overlapping shards
    assert "overlap" in capsys.readouterr().err


def test_bad_shard_is_an_input_error(project, server, remote, capsys):
    synced_site(project, server, remote)
    status, _, err = project.run("--shard", "3/2", capsys=capsys)
    assert status == 2 and "--shard 3/2" in err


def test_printed_text_masks_secrets():
    from synctasks.logger import add_secret

    add_secret("s3cr3t-for-the-escape-test")
    assert escape("sudo: s3cr3t-for-the-escape-test\x1b") == "sudo: ********\\x1b"


def test_summary_of_long_host_names_drops_columns_to_fit():
    from synctasks.report import summary_lines

    hosts = [{"host": f"web{i}.eu-west-1.compute.internal.example.com", "status": "changed", "sent": 3,
              "skipped": 40000, "deleted": 0, "failed": 0, "bytes": 3 << 20, "seconds": 12.5, "ok": True}
             for i in range(3)]
    lines = summary_lines({"hosts": hosts})
    assert all(len(line) <= 80 for line in lines), lines
    assert "SENT" in lines[0] and "BYTES" in lines[0] and "TIME" not in lines[0] and "DELETED" not in lines[0]
    assert "TIME" in summary_lines({"hosts": hosts[:1]}, width=200)[0]
