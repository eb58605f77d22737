"""Watch mode beside lsyncd: the table of issue 13, measured in one run.

    .venv/bin/python bench/watch_bench.py            # the full run (50 edits, 2,000 files, 2 min idle, 10 s outage)
    .venv/bin/python bench/watch_bench.py --quick    # a smoke run (fewer edits, 20 s idle, 5 s outage)

Both tools run against the same throwaway sshd the tests use (3 loopback
hosts, 127.0.0.2-4), data on tmpfs:

- ``synctasks watch`` (the console script, as a user runs it);
- Debian's ``lsyncd`` (installed with apt-get if missing),
  ``default.rsyncssh`` with ``delay = 1`` (its default, 15 s, is measured
  for latency with a few edits in the full run; it simply adds 15 s).

Cases (as the issue words them):

1. one saved 4 KiB file, 3 hosts: time from write() to the new bytes at every
   dest, median and p95 over N edits;
2. a ``git checkout`` rewriting 2,000 files: rounds, and time from the last
   write to all 3 hosts in sync, against a one-shot ``synctasks sync`` of
   the same change;
3. idle with 3 hosts: the watcher's CPU time and RSS (start, end);
4. a host's sshd stopped (here: the TCP path to it cut and closed) for 10 s
   during edits, then back: whether it converges with no lost change, how
   long after it is back, and how the other hosts' latency looked meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testing.testproxy import TcpProxy  # noqa: E402
from testing.testserver import TestServer, loopback_addresses  # noqa: E402

BIN = Path(sys.executable).parent
HOSTS = loopback_addresses(3)
TICK = os.sysconf("SC_CLK_TCK")


def ensure_lsyncd() -> str:
    found = shutil.which("lsyncd")
    if found:
        return found
    print("installing Debian's lsyncd (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "lsyncd"], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    return shutil.which("lsyncd") or "/usr/bin/lsyncd"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Dests:
    """The 3 dests of one tool, and waits for them to hold what we expect."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def wait(self, expected: dict[str, bytes], timeout: float, hosts: list[int] | None = None,
             poll: float = 0.001) -> float | None:
        """Wait until every dest (or ``hosts``) holds ``expected``; the
        perf_counter time it did, None on timeout."""
        # Per host, the files not yet seen right, checked in order up to the
        # first one still missing (cheap: the poller must not slow the tool
        # down by reading thousands of files every few milliseconds).
        pending = {h: list(expected) for h in (hosts if hosts is not None else range(len(self.paths)))}
        deadline = time.perf_counter() + timeout
        while pending:
            for h in list(pending):
                rels = pending[h]
                while rels:
                    try:
                        if (self.paths[h] / rels[-1]).read_bytes() != expected[rels[-1]]:
                            break
                    except OSError:
                        break
                    rels.pop()
                if not rels:
                    del pending[h]
            if not pending:
                break
            if time.perf_counter() > deadline:
                return None
            time.sleep(poll)
        return time.perf_counter()


class Tool:
    name = ""
    process: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT if isinstance(self, Synctasks) else signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def rounds_since(self, mark: int) -> int:
        raise NotImplementedError

    def mark(self) -> int:
        raise NotImplementedError


class Synctasks(Tool):
    name = "synctasks"

    def __init__(self, work: Path, server: TestServer, known_hosts: Path, src: Path, dests: list[Path],
                 ports: dict[str, int] | None = None):
        self.work = work
        self.project = work / "project-synctasks"
        (self.project / "hosts").mkdir(parents=True, exist_ok=True)
        entries = []
        for address, dest in zip(HOSTS, dests):
            entry = server.connection_entry(address)
            entry["port"] = (ports or {}).get(address, server.port)
            entries.append(entry)
            (self.project / "hosts" / f"{address}.json").write_text(json.dumps([{"src": str(src), "dest": str(dest)}]))
        info = self.project / "connection_info.json"
        info.write_text(json.dumps(entries))
        info.chmod(0o600)
        self.config = self.project / "config.ini"
        self.config.write_text(f"[sync]\nretries = 0\n[logging]\nlevel = INFO\n"
                               f"[security]\nknown_hosts = {known_hosts}\n")
        self.report = self.project / "rounds.jsonl"

    def records(self) -> list[dict]:
        try:
            return [json.loads(line) for line in self.report.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def start(self, timeout: float = 120) -> None:
        self.report.unlink(missing_ok=True)
        argv = [str(BIN / "synctasks"), "watch", "--quiet", "--config", str(self.config), "--json", str(self.report)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.project)
        deadline = time.monotonic() + timeout
        while len({r["host"] for r in self.records() if r["kind"] == "initial" and r["ok"]}) < len(HOSTS):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"synctasks watch did not start: {self.process.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)

    def mark(self) -> int:
        return len(self.records())

    def rounds_since(self, mark: int) -> int:
        """Most rounds any host ran since ``mark``."""
        counts: dict[str, int] = {}
        for record in self.records()[mark:]:
            counts[record["host"]] = counts.get(record["host"], 0) + 1
        return max(counts.values(), default=0)

    def one_shot(self) -> float:
        argv = [str(BIN / "synctasks"), "sync", "--quiet", "--config", str(self.config)]
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, cwd=self.project)
        if done.returncode:
            raise SystemExit(f"synctasks sync failed: {done.stderr.decode()[-2000:]}")
        return time.perf_counter() - started


class Lsyncd(Tool):
    name = "lsyncd"

    def __init__(self, work: Path, server: TestServer, known_hosts: Path, src: Path, dests: list[Path],
                 ports: dict[str, int] | None = None, delay: int = 1):
        self.binary = ensure_lsyncd()
        self.dir = work / f"lsyncd-{delay}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "lsyncd.log"
        syncs = []
        for address, dest in zip(HOSTS, dests):
            port = (ports or {}).get(address, server.port)
            syncs.append(f"""sync {{
  default.rsyncssh, source = "{src}", host = "{server.user}@{address}", targetdir = "{dest}",
  delay = {delay},
  rsync = {{ archive = true, compress = false }},
  ssh = {{ port = {port}, identityFile = "{server.client_key}",
          options = {{ UserKnownHostsFile = "{known_hosts}", StrictHostKeyChecking = "yes", BatchMode = "yes" }} }},
}}""")
        self.config = self.dir / "lsyncd.conf.lua"
        self.config.write_text(f'settings {{ nodaemon = true, insist = true, logfile = "{self.log}", '
                               f'statusFile = "{self.dir}/status", statusInterval = 3600 }}\n' + "\n".join(syncs) + "\n")

    def start(self, src: Path, dests: Dests, timeout: float = 120) -> None:
        self.log.unlink(missing_ok=True)
        self.process = subprocess.Popen([self.binary, str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        expected = {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.is_file()}
        if dests.wait(expected, timeout, poll=0.05) is None:
            raise SystemExit(f"lsyncd did not sync at start: {self.process.stderr.read().decode()[-2000:]}")
        # Its start-up rsyncs are done once the log says so for every host.
        deadline = time.monotonic() + timeout
        while self.log_text().count("finished") < len(HOSTS):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        return len(self.log_text().splitlines())

    def rounds_since(self, mark: int) -> int:
        """rsync calls per host since ``mark`` (the most of any host)."""
        lines = self.log_text().splitlines()[mark:]
        calls = [l for l in lines if "Calling rsync" in l]
        return max(1, round(len(calls) / len(HOSTS))) if calls else 0


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------
def case_latency(tool: Tool, src: Path, dests: Dests, edits: int) -> dict:
    target = src / "edit.txt"
    latencies = []
    mark = tool.mark()
    for _ in range(edits):
        data = os.urandom(4096)
        started = time.perf_counter()
        with open(target, "wb") as handle:
            handle.write(data)
        done = dests.wait({"edit.txt": data}, 60)
        if done is None:
            raise SystemExit(f"{tool.name}: an edit did not arrive within 60 s")
        latencies.append(done - started)
        time.sleep(0.05)
    found = {"median": statistics.median(latencies), "p95": pct(latencies, 0.95), "max": max(latencies)}
    if isinstance(tool, Synctasks):  # how much of it the rounds themselves took
        rounds = [r["ms"] / 1000 for r in tool.records()[mark:] if r["kind"] == "round"]
        found["round_median"] = statistics.median(rounds) if rounds else None
    return found


def checkout(src: Path, files: int, salt: str) -> dict[str, bytes]:
    """Rewrite every file of the tree the way git checkout does (unlink,
    write a new version); the new contents by rel path."""
    expected = {}
    for n in range(files):
        rel = f"repo/dir{n % 40:02d}/file{n:05d}.txt"
        data = (f"{salt} {n}\n" * (20 + n % 50)).encode()
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        path.write_bytes(data)
        expected[rel] = data
    return expected


def case_checkout(tool: Tool, src: Path, dests: Dests, files: int) -> dict:
    mark = tool.mark()
    expected = checkout(src, files, f"{tool.name}-{time.time()}")
    last_write = time.perf_counter()
    last_write_wall = time.time()
    done = dests.wait(expected, 300, poll=0.01)
    if done is None:
        raise SystemExit(f"{tool.name}: the checkout did not arrive within 300 s")
    time.sleep(0.5)  # let the last records land in the log
    if isinstance(tool, Synctasks):
        for record in tool.records()[mark:]:
            from datetime import datetime
            start = datetime.fromisoformat(record["time"]).timestamp() - record["ms"] / 1000 - last_write_wall
            print(f"    round: {record['host']} started {start:+.2f}s after the last write: {record['events']} "
                  f"events, {record['sent']} sent in {record['ms']:.0f} ms", flush=True)
    return {"seconds": done - last_write, "rounds": tool.rounds_since(mark)}


def case_idle(tool: Tool, seconds: float) -> dict:
    pid = tool.process.pid
    time.sleep(1.0)  # settle after the start
    cpu0, rss0 = cpu_seconds(pid), rss_kib(pid)
    peak = rss0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(5.0, max(0.0, end - time.monotonic())))
        peak = max(peak, rss_kib(pid))
    return {"cpu": cpu_seconds(pid) - cpu0, "rss_start": rss0, "rss_end": rss_kib(pid), "rss_peak": peak}


def case_outage(tool_factory, src: Path, dests: Dests, server: TestServer, known_hosts: Path, outage: float) -> dict:
    """Host 0 is reached through a proxy; the proxy goes away for ``outage``
    seconds while edits go on."""
    with TcpProxy((HOSTS[0], server.port), listen=(HOSTS[0], 0)) as proxy:
        port = proxy.port
        with open(known_hosts, "a") as handle:  # the host's key, as seen on the proxy's port
            handle.write(f"[{HOSTS[0]}]:{port} {server.host_key_line}\n")
        tool = tool_factory({HOSTS[0]: port})
        tool_start(tool, src, dests)
        expected: dict[str, bytes] = {}
        others: list[float] = []
        n = 0

        def edit() -> None:
            nonlocal n
            n += 1
            rel = f"outage/e{n:04d}.txt"
            data = os.urandom(512)
            (src / "outage").mkdir(exist_ok=True)
            (src / rel).write_bytes(data)
            expected[rel] = data
            started = time.perf_counter()
            done = dests.wait({rel: data}, 30, hosts=[1, 2], poll=0.002)
            others.append((done or time.perf_counter() + 30) - started)

        for _ in range(3):
            edit()
        proxy.stop()
    down_until = time.monotonic() + outage
    while time.monotonic() < down_until:
        edit()
        time.sleep(0.2)
    with TcpProxy((HOSTS[0], server.port), listen=(HOSTS[0], port)):
        back = time.perf_counter()
        edit()
        done = dests.wait(expected, 120, poll=0.01)
        result = {"converged": done is not None, "catch_up": (done - back) if done else None,
                  "edits": len(expected), "others_median": statistics.median(others), "others_max": max(others),
                  "alive": tool.process.poll() is None}
        tool.stop()
    return result


def tool_start(tool: Tool, src: Path, dests: Dests) -> None:
    if isinstance(tool, Lsyncd):
        tool.start(src, dests)
    else:
        tool.start()


def fresh(work: Path, server: TestServer, name: str) -> tuple[Path, Dests]:
    src = work / "src" / name
    src.mkdir(parents=True)
    (src / "edit.txt").write_bytes(b"start")
    dests = Dests([server.make_writable_dir(work / "remote" / name / h) / "site" for h in HOSTS])
    return src, dests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 edits, 20 s idle, 5 s outage")
    parser.add_argument("--edits", type=int)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--idle", type=float)
    parser.add_argument("--outage", type=float)
    parser.add_argument("--cases", default="latency,checkout,idle,outage")
    parser.add_argument("--tools", default="synctasks,lsyncd")
    args = parser.parse_args()
    edits = args.edits or (10 if args.quick else 50)
    idle = args.idle or (20.0 if args.quick else 120.0)
    outage = args.outage or (5.0 if args.quick else 10.0)
    cases = set(args.cases.split(","))
    ensure_lsyncd()
    shm = Path("/dev/shm")
    work = Path(os.environ.get("SYNCTASKS_BENCH_DIR", shm if shm.is_dir() else "/tmp")) / f"watch-bench-{os.getpid()}"
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    results: dict[str, dict] = {"synctasks": {}, "lsyncd": {}}
    try:
        with TestServer(work / "server", addresses=HOSTS) as server:
            known_hosts = server.write_known_hosts(work / "known_hosts")
            print(f"watch benchmark: sshd on {HOSTS[0]}-{HOSTS[-1].split('.')[-1]} port {server.port}, "
                  f"{edits} edits, {args.files} files, {idle:.0f} s idle, {outage:.0f} s outage"
                  f"{' (quick)' if args.quick else ''}", flush=True)

            def make(kind: str, src: Path, dests: Dests, ports=None, delay: int = 1) -> Tool:
                if kind == "synctasks":
                    return Synctasks(work / f"{kind}-{src.name}", server, known_hosts, src, dests.paths, ports)
                return Lsyncd(work / f"{kind}-{src.name}", server, known_hosts, src, dests.paths, ports, delay)

            for kind in [t for t in ("synctasks", "lsyncd") if t in args.tools.split(",")]:
                r = results[kind]
                if cases & {"latency", "checkout", "idle"}:
                    src, dests = fresh(work, server, f"{kind}-main")
                    if "checkout" in cases:
                        checkout(src, args.files, "initial")
                    tool = make(kind, src, dests)
                    tool_start(tool, src, dests)
                    try:
                        if "idle" in cases:
                            r["idle"] = case_idle(tool, idle)
                            print(f"  {kind} idle {idle:.0f}s: {r['idle']}", flush=True)
                        if "latency" in cases:
                            r["latency"] = case_latency(tool, src, dests, edits)
                            print(f"  {kind} latency: {r['latency']}", flush=True)
                        if "checkout" in cases:
                            r["checkout"] = case_checkout(tool, src, dests, args.files)
                            print(f"  {kind} checkout: {r['checkout']}", flush=True)
                    finally:
                        tool.stop()
                    if kind == "synctasks" and "checkout" in cases:
                        checkout(src, args.files, "one-shot")
                        r["one_shot"] = tool.one_shot()
                        print(f"  synctasks one-shot sync of the same change: {r['one_shot']:.3f}s", flush=True)
                if "outage" in cases:
                    src, dests = fresh(work, server, f"{kind}-outage")
                    r["outage"] = case_outage(lambda ports, s=src, d=dests, k=kind: make(k, s, d, ports),
                                              src, dests, server, known_hosts, outage)
                    print(f"  {kind} outage: {r['outage']}", flush=True)
            if "latency" in cases and not args.quick:
                src, dests = fresh(work, server, "lsyncd-default")
                tool = make("lsyncd", src, dests, delay=15)
                tool_start(tool, src, dests)
                try:
                    results["lsyncd-default"] = {"latency": case_latency(tool, src, dests, 3)}
                    print(f"  lsyncd (delay = 15, its default) latency: {results['lsyncd-default']['latency']}",
                          flush=True)
                finally:
                    tool.stop()
            print()
            print_table(results, edits, args.files, idle, outage)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(results: dict, edits: int, files: int, idle: float, outage: float) -> None:
    s, l = results["synctasks"], results["lsyncd"]
    if not s:
        return
    rows = [("case", "synctasks watch", "lsyncd (rsyncssh, delay=1)", "target", "")]
    if "latency" in s:
        a, b = s["latency"], l.get("latency", {})
        ok = a["median"] <= 0.3 and a["p95"] <= 0.6 and a["median"] < b.get("median", 1e9) and a["p95"] < b.get("p95", 1e9)
        default = results.get("lsyncd-default", {}).get("latency")
        note = f"; lsyncd at its default delay (15 s): median {default['median']:.2f}s" if default else ""
        rows.append((f"one 4 KiB save, 3 hosts, {edits} edits: median / p95",
                     f"{a['median']:.3f}s / {a['p95']:.3f}s", f"{b['median']:.3f}s / {b['p95']:.3f}s" if b else "-",
                     "<= 0.3 s / 0.6 s and below lsyncd" + note, "ok" if ok else "MISSED"))
    if "checkout" in s:
        a, b = s["checkout"], l.get("checkout", {})
        ratio = a["seconds"] / s["one_shot"]
        ok = a["rounds"] <= 5 and ratio <= 1.5
        rows.append((f"checkout rewriting {files} files: rounds, last write -> 3 hosts in sync",
                     f"{a['rounds']} rounds, {a['seconds']:.2f}s ({ratio:.2f} x one-shot sync {s['one_shot']:.2f}s)",
                     f"{b['rounds']} rsync calls/host, {b['seconds']:.2f}s" if b else "-",
                     "<= 5 rounds, <= 1.5 x one-shot", "ok" if ok else "MISSED"))
    if "idle" in s:
        a, b = s["idle"], l.get("idle", {})
        grown = a["rss_end"] - a["rss_start"]
        # Scaled to 2 minutes when the idle was shorter.
        budget = 0.2 * idle / 120
        ok = a["cpu"] <= budget and grown <= 512
        rows.append((f"{idle:.0f} s idle, 3 hosts: CPU, RSS start -> end",
                     f"{a['cpu']:.3f}s CPU, {a['rss_start'] // 1024} -> {a['rss_end'] // 1024} MiB",
                     f"{b['cpu']:.3f}s CPU, {b['rss_start'] // 1024} -> {b['rss_end'] // 1024} MiB" if b else "-",
                     f"<= {budget:.3f} s CPU, RSS flat", "ok" if ok else "MISSED"))
    if "outage" in s:
        a, b = s["outage"], l.get("outage", {})

        def describe(o: dict) -> str:
            if not o:
                return "-"
            state = f"converged {o['catch_up']:.2f}s after it was back" if o["converged"] else "DID NOT CONVERGE"
            return (f"{state}, {o['edits']} edits, others' latency median {o['others_median']:.2f}s max "
                    f"{o['others_max']:.2f}s{'' if o['alive'] else ', the tool EXITED'}")

        ok = a["converged"] and a["others_max"] < 1.0
        rows.append((f"host down {outage:.0f} s during edits", describe(a), describe(b),
                     "converges, no lost change, others never paused", "ok" if ok else "MISSED"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")


if __name__ == "__main__":
    sys.exit(main())
