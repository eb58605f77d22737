"""Benchmarks: synctasks beside rsync and OpenSSH scp, measured in one run.

    bash scripts/bench.sh            # every case, 3 rounds each (A B A B A B)
    bash scripts/bench.sh --rounds 5 --cases small,noop

Starts the same throwaway sshd the tests use (8 loopback addresses), makes
the data sets on tmpfs (/dev/shm), runs synctasks (the whole `synctasks sync`
process, Python start-up included) and the reference tool alternately, and
prints medians and ratios synctasks / reference, plus peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
HOSTS = loopback_addresses(8)


class Bench:
    def __init__(self, work: Path, server: TestServer):
        self.work = work
        self.server = server
        self.project = work / "project"
        (self.project / "hosts").mkdir(parents=True)
        self.known_hosts = work / "known_hosts"
        server.write_known_hosts(self.known_hosts)
        self.remote = server.make_writable_dir(work / "remote")
        self.rows: list[tuple] = []
        self.use_fab = False  #: run `fab sync` instead of the `synctasks` console script

    # -- data ------------------------------------------------------------
    def make_small(self, name: str, files: int, folders: int, size: int) -> Path:
        src = self.work / "data" / name
        for i in range(files):
            folder = src / f"dir{i % folders:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"file{i:05d}.bin").write_bytes(os.urandom(size))
        return src

    def make_big(self, size: int) -> Path:
        src = self.work / "data" / "big.bin"
        src.parent.mkdir(parents=True, exist_ok=True)
        chunk = os.urandom(1 << 20)
        with open(src, "wb") as handle:
            for _ in range(size >> 20):
                handle.write(chunk)
        return src

    # -- tools -----------------------------------------------------------
    def ssh_options(self, port: int) -> list[str]:
        return ["-p", str(port), "-i", str(self.server.client_key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]

    def synctasks(self, mappings: dict[str, list[dict]], address_port: dict[str, int] | None = None,
                  connections: int = 8) -> tuple[float, int]:
        """Run the whole `synctasks sync` process; (seconds, peak RSS KiB)."""
        entries = []
        for address in mappings:
            entry = self.server.connection_entry(address)
            entry["port"] = (address_port or {}).get(address, self.server.port)
            entries.append(entry)
        (self.project / "connection_info.json").write_text(json.dumps(entries))
        for old in (self.project / "hosts").glob("*.json"):
            old.unlink()
        for address, maps in mappings.items():
            (self.project / "hosts" / f"{address}.json").write_text(json.dumps(maps))
        (self.project / "config.ini").write_text(
            f"[sync]\nconnections = {connections}\nretries = 0\n[logging]\nlevel = INFO\n"
            f"[security]\nknown_hosts = {self.known_hosts}\n")
        argv = [str(BIN / "synctasks"), "sync", "--quiet", "--config", str(self.project / "config.ini")]
        if self.use_fab:
            argv = [str(BIN / "fab"), "sync", "--quiet", "--config", str(self.project / "config.ini")]
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"synctasks failed: {process.stderr.read().decode()}")
        return seconds, usage.ru_maxrss

    def rsync(self, src: Path, address: str, dest: Path, port: int | None = None) -> float:
        ssh = " ".join(["ssh", *self.ssh_options(port or self.server.port)])
        argv = ["rsync", "-a", "-e", ssh, f"{src}/", f"{self.server.user}@{address}:{dest}/"]
        return self._timed(argv)

    def scp(self, src: Path, address: str, dest: Path) -> float:
        # scp spells the port -P (its -p preserves times and modes).
        argv = ["scp", "-O", "-p", "-q", "-P", str(self.server.port), "-i", str(self.server.client_key),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", str(src), f"{self.server.user}@{address}:{dest}"]
        return self._timed(argv)

    @staticmethod
    def _timed(argv: list[str]) -> float:
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True)
        if done.returncode:
            raise SystemExit(f"{argv[0]} failed: {done.stderr.decode()}")
        return time.perf_counter() - started

    def clear(self, *paths: Path) -> None:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def record(self, case: str, ours: list[float], theirs: list[float], reference: str,
               target: float | None) -> float:
        """A row of the table; ``target`` None: reported, not judged."""
        a, b = statistics.median(ours), statistics.median(theirs)
        ratio = a / b
        judged = "-" if target is None else ("ok" if ratio <= target else "MISSED")
        self.rows.append((case, f"{a:.3f}s", f"{b:.3f}s", reference, f"{ratio:.2f}",
                          "-" if target is None else f"<= {target}", judged))
        goal = f"target <= {target}" if target else "no target: reported"
        print(f"  {case}: synctasks {a:.3f}s vs {reference} {b:.3f}s -> ratio {ratio:.2f} ({goal})"
              f"   [runs: {' '.join(f'{x:.3f}' for x in ours)} | {' '.join(f'{x:.3f}' for x in theirs)}]",
              flush=True)
        return a


def first_syncs(b: Bench, rounds: int, src: Path, host: str, port: int | None = None) -> tuple[list, list]:
    """Alternate first syncs of ``src`` (synctasks, rsync) to ``host``."""
    ours_dest, ref_dest = b.remote / host / "first-a", b.remote / host / "first-b"
    b.server.make_writable_dir(ours_dest.parent)
    ours, theirs = [], []
    for _ in range(rounds):
        b.clear(ours_dest, ref_dest)
        ours.append(b.synctasks({host: [{"src": str(src), "dest": str(ours_dest)}]},
                                {host: port} if port else None)[0])
        theirs.append(b.rsync(src, host, ref_dest, port=port))
    b.clear(ours_dest, ref_dest)
    return ours, theirs


def case_small(b: Bench, rounds: int, src: Path) -> float:
    ours, theirs = first_syncs(b, rounds, src, HOSTS[0])
    return b.record("2,000 x 4 KiB, first sync, 1 host", ours, theirs, "rsync -a", 1.0)


def case_latency(b: Bench, rounds: int, src: Path) -> None:
    with TcpProxy((HOSTS[1], b.server.port), delay=0.010, listen=(HOSTS[1], 0)) as proxy:
        with open(b.known_hosts, "a") as handle:
            handle.write(f"[{HOSTS[1]}]:{proxy.port} {b.server.host_key_line}\n")
        ours, theirs = first_syncs(b, rounds, src, HOSTS[1], proxy.port)
    b.record("same, 20 ms round trip (proxy)", ours, theirs, "rsync -a", 1.2)


def case_noop(b: Bench, rounds: int, src: Path) -> None:
    ours_dest, ref_dest = b.remote / HOSTS[2] / "noop-a", b.remote / HOSTS[2] / "noop-b"
    b.server.make_writable_dir(ours_dest.parent)
    mapping = {HOSTS[2]: [{"src": str(src), "dest": str(ours_dest)}]}
    b.synctasks(mapping)
    b.rsync(src, HOSTS[2], ref_dest)
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(b.synctasks(mapping)[0])
        theirs.append(b.rsync(src, HOSTS[2], ref_dest))
    b.record("no-op re-sync of the 2,000 files", ours, theirs, "rsync -a no-op", 1.2)
    # The same through `fab sync` (Fabric's and Invoke's start-up included).
    b.use_fab = True
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(b.synctasks(mapping)[0])
        theirs.append(b.rsync(src, HOSTS[2], ref_dest))
    b.use_fab = False
    b.record("same no-op through `fab sync`", ours, theirs, "rsync -a no-op", None)


def case_big(b: Bench, rounds: int, size_mib: int) -> None:
    src = b.make_big(size_mib << 20)
    ours_dest, ref_dest = b.remote / HOSTS[3] / "big-a.bin", b.remote / HOSTS[3] / "big-b.bin"
    b.server.make_writable_dir(ours_dest.parent)
    ours, theirs = [], []
    for _ in range(rounds):
        b.clear(ours_dest, ref_dest)
        ours.append(b.synctasks({HOSTS[3]: [{"src": str(src), "dest": str(ours_dest)}]})[0])
        theirs.append(b.scp(src, HOSTS[3], ref_dest))
    mbps = (size_mib << 20) / statistics.median(ours) / 1e6
    print(f"  ({mbps:.0f} MB/s synctasks)")
    b.record(f"one {size_mib} MiB file, first sync", ours, theirs, "scp -O", 1.1)
    b.clear(src, ours_dest, ref_dest)


def case_eight_hosts(b: Bench, rounds: int, src: Path, one_host: float) -> None:
    dests = {h: b.remote / h / "eight" for h in HOSTS}
    for dest in dests.values():
        b.server.make_writable_dir(dest.parent)
    times = []
    for _ in range(rounds):
        b.clear(*dests.values())
        times.append(b.synctasks({h: [{"src": str(src), "dest": str(d)}] for h, d in dests.items()})[0])
    b.record("2,000 files to 8 hosts at once", times, [8 * one_host], "8 x 1-host time", 0.5)
    b.clear(*dests.values())


def case_rss(b: Bench, files: int) -> None:
    src = b.make_small("rss", files, 200, 256)
    dests = {h: b.remote / h / "rss" for h in HOSTS}
    for dest in dests.values():
        b.server.make_writable_dir(dest.parent)
    seconds, rss_kib = b.synctasks({h: [{"src": str(src), "dest": str(d)}] for h, d in dests.items()})
    rss = rss_kib / 1024
    b.rows.append((f"peak RSS, {files:,} files to 8 hosts", f"{rss:.0f} MiB", "-", "-", "-", "<= 150 MiB",
                   "ok" if rss <= 150 else "MISSED"))
    print(f"  peak RSS {rss:.0f} MiB ({seconds:.2f}s for {8 * files:,} file transfers)", flush=True)
    b.clear(src, *dests.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="small,latency,big,noop,eight,rss")
    parser.add_argument("--big-mib", type=int, default=512)
    parser.add_argument("--rss-files", type=int, default=20000)
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    shm = Path("/dev/shm")
    work = Path(os.environ.get("SYNCTASKS_BENCH_DIR", shm if shm.is_dir() else "/tmp")) / f"synctasks-bench-{os.getpid()}"
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    try:
        with TestServer(work / "server", addresses=HOSTS) as server:
            b = Bench(work, server)
            print(f"benchmark: sshd on {HOSTS[0]}-{HOSTS[-1].split('.')[-1]} port {server.port}, data in {work}, "
                  f"{args.rounds} rounds", flush=True)
            small = b.make_small("small", 2000, 20, 4096)
            one_host = None
            if cases & {"small", "eight"}:
                one_host = case_small(b, args.rounds, small)
            if "latency" in cases:
                case_latency(b, args.rounds, small)
            if "big" in cases:
                case_big(b, args.rounds, args.big_mib)
            if "noop" in cases:
                case_noop(b, args.rounds, small)
            if "eight" in cases:
                case_eight_hosts(b, args.rounds, small, one_host)
            if "rss" in cases:
                case_rss(b, args.rss_files)
            print()
            header = ("case", "synctasks", "reference", "tool", "ratio", "target", "")
            rows = [header] + b.rows
            widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
            for row in rows:
                print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
            return 0 if all(r[-1] in ("ok", "-") for r in b.rows) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
