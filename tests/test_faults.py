"""Faults: cut, killed, stalled and full; nothing partial at a destination,
every failure reported, the next run converges. Real sshd, with a TCP proxy
on loopback to cut or stall the connection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import MAIN_HOSTS, give, tree_state

from synctasks import runner
from synctasks.backends import shell
from synctasks.connection import EarlyConnections
from synctasks.constants import STAGING_PREFIX
from synctasks.errors import InputError
from synctasks.inputs import load_inventory
from testing.testproxy import TcpProxy
from testing.testserver import TestServer, loopback_addresses

BIN = Path(sys.executable).parent


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(STAGING_PREFIX)]


@pytest.fixture
def proxy(server):
    with TcpProxy((MAIN_HOSTS[0], server.port), listen=(MAIN_HOSTS[0], 0)) as tcp:
        yield tcp


def big_file(project, mib: int = 24) -> Path:
    return project.file("data/big.bin", os.urandom(mib << 20))


def test_cut_mid_file_keeps_old_content_then_converges(project, server, remote, proxy, capsys):
    big_file(project)
    project.file("site/a.txt", "a")
    target = remote / "big.bin"
    target.write_bytes(b"OLD CONTENT")
    give(server, target)
    project.add_host(server, MAIN_HOSTS[0], [{"src": "data/big.bin", "dest": str(target)}], port=proxy.port)
    project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": f"{remote}/other"}])
    proxy.cut_after = 6 << 20
    status, out, _ = project.run(capsys=capsys)
    assert status == 1 and proxy.cuts == 1
    assert target.read_bytes() == b"OLD CONTENT"
    assert f"{MAIN_HOSTS[0]}: FAILED" in out and "connection" in out
    assert (remote / "other/a.txt").read_text() == "a"  # the other host finished
    status, out, _ = project.run(capsys=capsys)
    assert status == 0
    assert target.read_bytes() == (project.root / "data/big.bin").read_bytes()
    assert leftovers(remote) == []


def test_transient_cut_is_retried(project, server, remote, proxy, capsys):
    big_file(project, 8)
    project.config["sync"]["retries"] = "2"
    project.add_host(server, MAIN_HOSTS[0], [{"src": "data", "dest": f"{remote}/data"}], port=proxy.port)
    proxy.cut_after = 2 << 20
    status, out, err = project.run(capsys=capsys)
    assert status == 0 and proxy.cuts == 1
    assert "retry 1 of 2" in err
    assert (remote / "data/big.bin").read_bytes() == (project.root / "data/big.bin").read_bytes()
    assert leftovers(remote) == []


def test_auth_failure_is_not_retried(project, server, remote, capsys):
    project.file("site/a", "a")
    project.config["sync"]["retries"] = "3"
    entry = project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}], auth="password")
    entry["passkey"] = "wrong"
    started = time.monotonic()
    status, out, err = project.run(capsys=capsys)
    assert status == 1 and "login refused" in out and "retry" not in err
    assert time.monotonic() - started < 5


def test_early_connections_are_taken_once_and_the_rest_closed(project, server, remote):
    """Connections opened ahead of the run (their handshakes overlap the
    imports): a host's run takes its own once; close() closes what no run
    took, a connection still opening included (its thread closes it)."""
    project.file("site/a", "a")
    for address in MAIN_HOSTS[:3]:
        project.add_host(server, address, [{"src": "site", "dest": f"{remote}/x"}])
    project.write()
    inventory = load_inventory(project.config_path)
    early = EarlyConnections(inventory.hosts, inventory.settings, lightweight=True)
    slots = {name: early._runs[name] for name in MAIN_HOSTS[1:3]}
    c, error = early.take(MAIN_HOSTS[0])
    assert error is None and c.is_connected
    assert early.take(MAIN_HOSTS[0]) is None
    slots[MAIN_HOSTS[1]][0].join()  # done before close(): close() closes it
    early.close()
    for thread, slot in slots.values():
        thread.join(10)
        assert slot["done"] and slot["c"] is not None and not slot["c"].is_connected
    assert early.take(MAIN_HOSTS[2]) is None
    c.close()


def test_early_connections_are_closed_when_the_run_refuses_its_inputs(project, server, remote):
    """sync_inventory owns the early connections it is given: a selection it
    refuses (an unknown --only) still closes them."""
    project.file("site/a", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/x"}])
    project.write()
    inventory = load_inventory(project.config_path)
    early = EarlyConnections(inventory.hosts, inventory.settings, lightweight=True)
    thread, slot = early._runs[MAIN_HOSTS[0]]
    thread.join(10)
    with pytest.raises(InputError, match="no-such-host"):
        runner.sync_inventory(inventory=inventory, only="no-such-host", early=early, lightweight=True)
    assert slot["c"] is not None and not slot["c"].is_connected


def test_refused_connection_is_retried_with_backoff(project, server, remote, capsys):
    project.file("site/a", "a")
    project.config["sync"]["retries"] = "2"
    entry = project.add_host(server, "127.0.0.9", [{"src": "site", "dest": f"{remote}/x"}], trust=False)
    entry["port"] = server.port
    started = time.monotonic()
    status, out, err = project.run(capsys=capsys)
    assert status == 1
    assert "retry 1 of 2" in err and "retry 2 of 2" in err
    assert time.monotonic() - started >= 1.4  # 0.5 s then 1 s


def test_stalled_connection_times_out(project, server, remote, proxy, capsys):
    big_file(project, 16)
    project.config["sync"]["io_timeout"] = "2"
    project.add_host(server, MAIN_HOSTS[0], [{"src": "data", "dest": f"{remote}/data"}], port=proxy.port)
    proxy.stall_after = 1 << 20
    started = time.monotonic()
    status, out, _ = project.run(capsys=capsys)
    assert status == 1 and "stalled" in out
    assert time.monotonic() - started < 15
    assert not (remote / "data" / "big.bin").exists()


def test_sigkilled_run_leaves_nothing_after_the_next(project, server, remote, tmp_path):
    big_file(project, 64)
    with TcpProxy((MAIN_HOSTS[0], server.port), delay=0.02, listen=(MAIN_HOSTS[0], 0)) as slow:
        project.add_host(server, MAIN_HOSTS[0], [{"src": "data", "dest": f"{remote}/data"}], port=slow.port)
        project.write()
        argv = [str(BIN / "synctasks"), "sync", "--config", str(project.config_path)]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while slow.bytes_forwarded < (4 << 20) and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.5)
        assert leftovers(remote), "the killed run should have left its staging folder"
        assert not (remote / "data").exists()
        status, _, _ = project.run()
    assert status == 0
    assert (remote / "data/big.bin").read_bytes() == (project.root / "data/big.bin").read_bytes()
    assert leftovers(remote) == []


@pytest.fixture
def tiny_disk(server, remote):
    mount = remote / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test: {done.stderr.decode()}")
    give(server, mount)
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_disk_full_fails_files_by_name_without_partials(project, server, tiny_disk, capsys):
    for i in range(5):
        project.file(f"site/f{i}.bin", os.urandom(200_000))
    project.file("site/small.txt", "small")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{tiny_disk}/site"}])
    status, out, _ = project.run("--verbose", capsys=capsys)
    assert status == 1
    assert "No space left on device" in out
    failed = [line for line in out.splitlines() if "No space left" in line and f"{tiny_disk}/site/f" in line]
    assert failed, out
    # Whatever is at a destination is complete; nothing temporary is left.
    for path in (tiny_disk / "site").rglob("*"):
        assert path.read_bytes() == (project.root / "site" / path.name).read_bytes()
    assert leftovers(tiny_disk) == []


def test_unwritable_dest_fails_that_mapping_only(project, server, remote, capsys):
    project.file("site/a", "a")
    locked = remote / "locked"
    locked.mkdir()  # root's: the login user cannot write in it
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{locked}/site"},
                                             {"src": "site", "dest": f"{remote}/open"}])
    status, out, _ = project.run(capsys=capsys)
    assert status == 1
    assert f"{locked} is not writable by {server.user}" in out
    assert (remote / "open/a").read_text() == "a"
    assert list(locked.iterdir()) == []


def test_server_killed_then_restarted_converges(project, server_root, client_key, remote, capsys):
    srv = TestServer(server_root / "killable", addresses=["127.0.0.10"], client_key=client_key).start()
    try:
        give(srv, remote)
        big_file(project, 64)
        with TcpProxy(("127.0.0.10", srv.port), delay=0.02, listen=("127.0.0.10", 0)) as slow:
            project.add_host(srv, "127.0.0.10", [{"src": "data", "dest": f"{remote}/data"}], port=slow.port)
            result: dict = {}
            worker = threading.Thread(target=lambda: result.update(status=project.run()[0]))
            worker.start()
            deadline = time.monotonic() + 30
            while slow.bytes_forwarded < (4 << 20) and time.monotonic() < deadline:
                time.sleep(0.02)
            srv.kill()
            worker.join(60)
            assert result["status"] == 1
            srv.start()
            status, _, _ = project.run()
        assert status == 0
        assert (remote / "data/big.bin").read_bytes() == (project.root / "data/big.bin").read_bytes()
        assert leftovers(remote) == []
    finally:
        srv.stop()


def test_sixteen_hosts_a_thousand_files_each(project, server_root, client_key, remote):
    addresses = loopback_addresses(16, first=20)
    with TestServer(server_root / "load", addresses=addresses, client_key=client_key) as srv:
        give(srv, remote)
        for i in range(1000):
            project.file(f"site/d{i % 10}/f{i:04d}", f"{i}\n" * (i % 7))
        project.config["sync"]["connections"] = "8"
        for address in addresses:
            project.add_host(srv, address, [{"src": "site", "dest": f"{remote}/{address}"}])
        status, _, _ = project.run()
    assert status == 0
    expected = {k: v[:4] for k, v in tree_state(project.root / "site").items()}
    for address in addresses:
        assert {k: v[:4] for k, v in tree_state(remote / address).items()} == expected
    info = (project.root / "logs/info.log").read_text()
    for address in addresses:
        assert f"[{address}] synctasks: done: 1000 sent" in info


@pytest.mark.parametrize("big", [False, True], ids=["streams-sent-at-once", "streams-wait"])
def test_folder_that_takes_no_staging_fails_its_mapping_only(project, server, remote, capsys, big):
    """A folder below dest where the staging folder cannot be made (root's):
    that mapping fails, named, with nothing of it moved; the other mapping
    lands; the next run, once the folder is writable, converges and leaves
    nothing temporary behind. Small transfers are sent before the staging
    folders' answers are read (the script refuses them, and they go again);
    big ones wait for them (shell.PIPELINE_MAX)."""
    project.file("site/a.txt", "a1")
    project.file("site/sub/b.txt", "b1")
    project.file("other/c.txt", "c1")
    mappings = [{"src": "site", "dest": f"{remote}/site"}, {"src": "other", "dest": f"{remote}/other"}]
    project.add_host(server, MAIN_HOSTS[0], mappings)
    assert project.run()[0] == 0
    for name, text in (("site/a.txt", "a22"), ("site/sub/b.txt", "b22"), ("other/c.txt", "c22")):
        project.file(name, text)
    if big:
        project.file("other/big.bin", os.urandom(shell.PIPELINE_MAX + 1))
    sub = remote / "site/sub"
    owner = sub.stat().st_uid
    os.chown(sub, 0, 0)
    status, out, _ = project.run(capsys=capsys)
    assert status == 1
    assert (remote / "other/c.txt").read_text() == "c22"
    if big:
        assert (remote / "other/big.bin").read_bytes() == (project.root / "other/big.bin").read_bytes()
    assert (remote / "site/a.txt").read_text() == "a1"
    assert (sub / "b.txt").read_text() == "b1"
    assert f"cannot write into {sub}: Permission denied" in out, out
    os.chown(sub, owner, owner)
    assert project.run()[0] == 0
    assert (remote / "site/a.txt").read_text() == "a22"
    assert (sub / "b.txt").read_text() == "b22"
    assert leftovers(remote) == []
