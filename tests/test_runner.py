"""The runner's stop logic alone (no hosts needed: jobs are plain functions):
queued jobs never start once cancelled, a job that does not stop by itself
has its connection closed after the grace, a second signal stops waiting."""

from __future__ import annotations

import threading
import time

from synctasks import runner
from synctasks.results import DONE, NOT_STARTED, STOPPED, HostResult


class FakeConnection:
    def __init__(self):
        self.closed = threading.Event()

    def close(self):
        self.closed.set()


def test_cancel_drops_queued_jobs_and_closes_running_connections():
    live = runner._Live()
    cancel = threading.Event()
    started = threading.Event()
    ran = []
    connection = FakeConnection()

    def stubborn() -> HostResult:
        live.add("a", connection)
        started.set()
        connection.closed.wait(30)  # "the engine" only stops when its connection goes
        live.remove("a")
        return HostResult(host="a", state=STOPPED)

    def queued(name):
        def job() -> HostResult:
            ran.append(name)
            return HostResult(host=name)
        return job

    threading.Thread(target=lambda: started.wait(10) and cancel.set(), daemon=True).start()
    begun = time.monotonic()
    results = runner.run_hosts([("a", "a", stubborn), ("b", "b", queued("b")), ("c", "c", queued("c"))], 1,
                               cancel, live=live)
    assert time.monotonic() - begun < runner.STOP_GRACE + 3
    assert connection.closed.is_set() and ran == []
    assert [r.state for r in results.values()] == [STOPPED, NOT_STARTED, NOT_STARTED]
    assert list(results) == ["a", "b", "c"]


def test_second_signal_stops_waiting():
    cancel, hurry = threading.Event(), threading.Event()
    started, release = threading.Event(), threading.Event()

    def deaf() -> HostResult:  # ignores the stop, has no connection to close
        started.set()
        release.wait(30)
        return HostResult(host="a")

    def signals():
        started.wait(10)
        cancel.set()
        hurry.set()

    threading.Thread(target=signals, daemon=True).start()
    seen = []
    try:
        begun = time.monotonic()
        results = runner.run_hosts([("a", "a", deaf), ("b", "b", lambda: HostResult(host="b"))], 1, cancel, hurry,
                                   on_result=seen.append)
        assert time.monotonic() - begun < 5
    finally:
        release.set()
    assert results["a"].state == STOPPED and results["b"].state == NOT_STARTED
    assert sorted(r.host for r in seen) == ["a", "b"]


def test_no_cancel_runs_everything_in_order():
    results = runner.run_hosts([(n, n, lambda n=n: HostResult(host=n)) for n in "abcdef"], 3)
    assert list(results) == list("abcdef") and all(r.state == DONE and r.ok for r in results.values())


def test_cancelled_group_starts_no_member(tmp_path):
    from fabric import Connection, ThreadingGroup

    from synctasks import sync_host

    (tmp_path / "a.txt").write_text("a")
    group = ThreadingGroup.from_connections([Connection("127.0.0.2", port=1), Connection("127.0.0.3", port=1)])
    cancel = threading.Event()
    cancel.set()
    results = sync_host(group, [{"src": str(tmp_path / "a.txt"), "dest": "/srv/a.txt"}], cancel=cancel, warn=True)
    assert [r.state for r in results.values()] == [NOT_STARTED, NOT_STARTED]
    assert not any(c.is_connected for c in group) and list(results) == list(group)
