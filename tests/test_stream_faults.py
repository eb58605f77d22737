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

CRASHING_PERL_SINK = """#!/bin/sh
# The perl sink (its loader evals code from stdin; two arguments follow the
# loader, where ops.pl gets four) dies the same way.
case $#:$PWD:$2 in
  4:*crash-here*:*'eval $c'*) head -c 300 >/dev/null; echo "perl: simulated crash" >&2; exit 1 ;;
esac
exec /usr/bin/perl "$@"
"""


@pytest.fixture(scope="module", params=["scp", "perl"])
def crashing_server(request, server_root, client_key, server):
    """The host's sink crashes for one dest: `scp -t` on a host without perl
    (PATH: every tool but perl), or the perl sink on a host with perl."""
    bin_dir = server_root / f"crashing-{request.param}"
    bin_dir.mkdir(exist_ok=True)
    os.chmod(server_root, 0o755)
    os.chmod(bin_dir, 0o755)
    for name in os.listdir("/usr/bin"):
        if not name.startswith("perl") and name != "scp" and not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(f"/usr/bin/{name}")
    wrapper, real = (CRASHING_SCP, "scp") if request.param == "scp" else (CRASHING_PERL_SINK, "perl")
    if not (bin_dir / real).exists():
        (bin_dir / real).write_text(wrapper)
        (bin_dir / real).chmod(0o755)
    if request.param == "perl" and not (bin_dir / "scp").exists():
        (bin_dir / "scp").symlink_to("/usr/bin/scp")
    address = "127.0.0.46" if request.param == "scp" else "127.0.0.47"
    with TestServer(server_root / f"crashing-{request.param}-srv", addresses=[address], client_key=client_key,
                    password=server.password, extra_config=[f"SetEnv PATH={bin_dir}"]) as srv:
        # Check the fixture is what it claims: perl on the PATH or not.
        import paramiko

        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a throwaway server of this test
        client.connect(address, srv.port, srv.user, key_filename=str(srv.client_key))
        try:
            _, out, _ = client.exec_command("for c in perl scp; do command -v $c; done")
            found = out.read().decode().split()
        finally:
            client.close()
        assert found == ([f"{bin_dir}/scp"] if request.param == "scp" else [f"{bin_dir}/perl", f"{bin_dir}/scp"])
        yield srv, address


def test_sink_dying_mid_stream_is_contained(project, crashing_server, remote, capsys):
    srv, address = crashing_server
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
    project.add_host(srv, address, [{"src": "a", "dest": str(crash)}, {"src": "b", "dest": str(fine)}])
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
