"""A sink that dies in mid-stream (issue 11): what is left of its stream is
swallowed, never run as operations, and the other streams and the commit go
on a second channel. The fault: an sshd whose PATH puts a crashing `scp`
first for one dest.

(Without the second channel this test fails. Without the swallow it still
passes: every operation line carries the run's token, which file data cannot
hold, so the script stops at the first line of a cut stream ("bad") — the
swallow is the second guard.)"""

from __future__ import annotations

import json
import os

import pytest
from conftest import give

from testing.testserver import TestServer

CRASHING_SCP = """#!/bin/sh
# Reads a little of its stream, then dies, where the cwd says so.
case $PWD in
  *crash-here*) head -c 300 >/dev/null; echo "scp: simulated crash" >&2; exit 1 ;;
esac
exec /usr/bin/scp "$@"
"""


@pytest.fixture(scope="module")
def crashing_server(server_root, client_key, server):
    bin_dir = server_root / "crashing-bin"
    bin_dir.mkdir(exist_ok=True)
    os.chmod(server_root, 0o755)
    os.chmod(bin_dir, 0o755)
    (bin_dir / "scp").write_text(CRASHING_SCP)
    (bin_dir / "scp").chmod(0o755)
    with TestServer(server_root / "crashing", addresses=["127.0.0.46"], client_key=client_key,
                    password=server.password, extra_config=[f"SetEnv PATH={bin_dir}:/usr/bin:/bin"]) as srv:
        yield srv


def test_sink_dying_mid_stream_is_contained(project, crashing_server, remote, capsys):
    srv = crashing_server
    give(srv, remote)
    for i in range(20):
        project.file(f"a/f{i}.txt", f"A {i}\n" * 4000)  # more than a pipe holds: head is cut off
        project.file(f"b/f{i}.txt", f"B {i}\n" * 200)
    crash, fine = remote / "crash-here", remote / "fine"
    for folder in (crash, fine):
        folder.mkdir()
        give(srv, folder)
    (crash / "f0.txt").write_text("old")
    give(srv, crash / "f0.txt")
    project.add_host(srv, "127.0.0.46", [{"src": "a", "dest": str(crash)}, {"src": "b", "dest": str(fine)}])
    report = project.root / "r.json"
    status, out, err = project.run("--json", str(report), capsys=capsys)
    assert status == 1
    host = json.loads(report.read_text())["hosts"][0]
    # The crashed stream's files never committed; the old file is whole.
    assert (crash / "f0.txt").read_text() == "old"
    assert sorted(p.name for p in crash.iterdir()) == ["f0.txt"]
    # The stream after it went on a second channel and committed.
    assert sorted(p.name for p in fine.iterdir()) == sorted(f"f{i}.txt" for i in range(20))
    assert (fine / "f7.txt").read_text() == "B 7\n" * 200
    failed = [f for m in host["mappings"] for f in m["files"] if f["action"] == "fail"]
    assert len(failed) == 20 and all(str(crash) in f["path"] for f in failed)
    # Nothing of the swallowed stream was taken for an operation.
    assert "bad" not in out + err and "unexpected answer" not in out + err
    assert [p for p in remote.rglob("*") if p.name.startswith(".synctasks-tmp-")] == []
