"""Ctrl-C and SIGTERM stop a run (issue 12, item 1): queued hosts never
start, the running one stops mid-stream without a partial file, the summary
names finished / stopped / never-started hosts, the report is written, and
the exit status is 130 (SIGINT) or 143 (SIGTERM). Real processes, a real
sshd, a slow TCP proxy so the signal lands mid-transfer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MAIN_HOSTS

from testing.testproxy import TcpProxy

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(params=["one big file", "many files"])
def three_hosts(request, project, server, remote):
    """Host 1 small (finishes), host 2 a big file (or many: the engine stops
    between files by itself) through a slow proxy (is running when the
    signal comes), host 3 queued (one connection at a time)."""
    project.file("site/a.txt", "a")
    if request.param == "one big file":
        project.file("data/big.bin", os.urandom(64 << 20))
    else:
        for i in range(64):
            project.file(f"data/part{i:02d}.bin", os.urandom(1 << 20))
    project.config["sync"]["connections"] = "1"
    with TcpProxy((MAIN_HOSTS[1], server.port), delay=0.05, listen=(MAIN_HOSTS[1], 0)) as slow:
        project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/one"}])
        project.add_host(server, MAIN_HOSTS[1], [{"src": "data", "dest": f"{remote}/two"}], port=slow.port)
        project.add_host(server, MAIN_HOSTS[2], [{"src": "site", "dest": f"{remote}/three"}])
        project.write()
        yield slow


def _interrupt(argv, slow, signum, cwd=None) -> tuple[subprocess.CompletedProcess, float]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=cwd)
    try:
        _wait_for(lambda: slow.bytes_forwarded > (2 << 20) or process.poll() is not None, 60, "the big file to flow")
        assert process.poll() is None, process.communicate()
        sent = time.monotonic()
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, out, err), took


def _check_stopped_run(done, took, report_path: Path, remote: Path, signame: str, status: int) -> None:
    assert done.returncode == status, (done.stdout, done.stderr)
    # "Stops sending within about a second": the big file would need far longer.
    assert took < 6, took
    report = json.loads(report_path.read_text())
    states = {h["host"]: h["status"] for h in report["hosts"]}
    assert states == {MAIN_HOSTS[0]: "changed", MAIN_HOSTS[1]: "stopped", MAIN_HOSTS[2]: "not started"}
    assert report["interrupted"] == signame and report["exit_code"] == status and report["ok"] is False
    # Nothing committed at the stopped host's destination (no partial file,
    # no part of the tree); the queued host got nothing.
    assert not (remote / "two").exists() or [p.name for p in (remote / "two").iterdir()
                                             if not p.name.startswith(".synctasks-tmp-")] == []
    assert not (remote / "three").exists()
    assert (remote / "one" / "a.txt").read_text() == "a"
    last = done.stdout.strip().splitlines()[-1]
    assert f"INTERRUPTED ({signame})" in last
    assert f"finished: {MAIN_HOSTS[0]}" in last and f"stopped: {MAIN_HOSTS[1]}" in last
    assert f"not started: {MAIN_HOSTS[2]}" in last


def test_sigint_stops_console_script_mid_stream(project, remote, three_hosts):
    report = project.root / "report.json"
    argv = [str(BIN / "synctasks"), "sync", "--config", str(project.config_path), "--json", str(report)]
    done, took = _interrupt(argv, three_hosts, signal.SIGINT)
    _check_stopped_run(done, took, report, remote, "SIGINT", 130)


def test_sigterm_stops_fab_sync_mid_stream(project, remote, three_hosts):
    report = project.root / "report.json"
    argv = [str(BIN / "fab"), "sync", "--config", str(project.config_path), "--json", str(report)]
    done, took = _interrupt(argv, three_hosts, signal.SIGTERM, cwd=ROOT)
    _check_stopped_run(done, took, report, remote, "SIGTERM", 143)


def test_run_after_a_stop_converges(project, server, remote):
    """What a stopped run staged is cleaned by the next one, and it completes."""
    project.file("data/big.bin", os.urandom(64 << 20))
    with TcpProxy((MAIN_HOSTS[0], server.port), delay=0.05, listen=(MAIN_HOSTS[0], 0)) as slow:
        entry = project.add_host(server, MAIN_HOSTS[0], [{"src": "data", "dest": f"{remote}/data"}], port=slow.port)
        project.write()
        argv = [str(BIN / "synctasks"), "sync", "--config", str(project.config_path)]
        done, _ = _interrupt(argv, slow, signal.SIGINT)
    assert done.returncode == 130
    assert not (remote / "data" / "big.bin").exists()
    entry["port"] = server.port  # the next run goes straight to the server
    with open(project.known_hosts, "a") as handle:
        handle.write(f"[{MAIN_HOSTS[0]}]:{server.port} {server.host_key_line}\n")
    status, _, _ = project.run()
    assert status == 0
    assert (remote / "data/big.bin").read_bytes() == (project.root / "data/big.bin").read_bytes()
    assert [p for p in remote.rglob("*") if p.name.startswith(".synctasks-tmp-")] == []
