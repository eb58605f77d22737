"""Progress of a run, for people and for CI logs.

- On a terminal: per-host bars (files and bytes) and an overall bar with rate
  and time left, drawn by rich; log lines print above the bars.
- Elsewhere (CI, pipes): no bars and no escape codes, plain timestamped lines,
  at most one per host every few seconds, plus one when a host finishes.
- ``--quiet``: nothing.

The transfer calls :meth:`planned` once per host (what it is about to send)
and :meth:`update` as files go out; the runner calls :meth:`finished`.
"""

from __future__ import annotations

import sys
import threading
import time

from .results import HostResult


def human_bytes(count: float) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


class Progress:
    """No output at all (--quiet, library use)."""

    #: Whether the per-host result lines would fight with this display.
    draws = False

    def start(self, hosts: list[str]) -> None:
        pass

    def planned(self, host: str, files: int, total_bytes: int) -> None:
        pass

    def update(self, host: str, files_done: int, bytes_done: int) -> None:
        pass

    def finished(self, result: HostResult) -> None:
        pass

    def close(self) -> None:
        pass

    def __call__(self, host: str, files_done: int, bytes_done: int) -> None:
        self.update(host, files_done, bytes_done)


class PlainProgress(Progress):
    """Timestamped lines for logs that are not a terminal."""

    def __init__(self, out=None, every: float = 5.0):
        self.out = out or sys.stdout
        self.every = every
        self.totals: dict[str, tuple[int, int]] = {}
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self.lock:
            print(f"{time.strftime('%H:%M:%S')} {text}", file=self.out, flush=True)

    def planned(self, host: str, files: int, total_bytes: int) -> None:
        self.totals[host] = (files, total_bytes)
        self.last[host] = time.monotonic()
        if files:
            self._line(f"{host}: sending {files} file(s), {human_bytes(total_bytes)}")

    def update(self, host: str, files_done: int, bytes_done: int) -> None:
        now = time.monotonic()
        if now - self.last.get(host, 0.0) < self.every:
            return
        self.last[host] = now
        files, total = self.totals.get(host, (0, 0))
        self._line(f"{host}: {files_done}/{files} files, {human_bytes(bytes_done)}/{human_bytes(total)}")


class RichProgress(Progress):
    """Bars on a terminal (rich), one per host and one overall."""

    draws = True

    def __init__(self):
        from rich.progress import (BarColumn, DownloadColumn, Progress as Bars, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.bars = Bars(TextColumn("{task.description}", justify="left"), BarColumn(),
                         TextColumn("{task.fields[files]}", justify="right"), DownloadColumn(),
                         TransferSpeedColumn(), TimeRemainingColumn(), transient=False, redirect_stderr=True,
                         redirect_stdout=True)
        self.files: dict[str, int] = {}
        self.tasks: dict[str, int] = {}
        self.done_bytes: dict[str, int] = {}
        self.total_task = None
        self.lock = threading.Lock()

    def start(self, hosts: list[str]) -> None:
        self.bars.start()
        self.total_task = self.bars.add_task("[bold]all hosts", total=None, files="")
        for host in hosts:
            self.tasks[host] = self.bars.add_task(host, total=None, start=False, files="")

    def planned(self, host: str, files: int, total_bytes: int) -> None:
        with self.lock:
            task = self.tasks.get(host)
            if task is None:
                return
            # Bars measure bytes; the files column counts files.
            self.files[host] = files
            self.bars.update(task, total=max(total_bytes, 1), completed=0, files=f"0/{files} files")
            self.bars.start_task(task)
            total = self.bars.tasks[self.total_task].total or 0
            self.bars.update(self.total_task, total=total + max(total_bytes, 1))

    def update(self, host: str, files_done: int, bytes_done: int) -> None:
        with self.lock:
            task = self.tasks.get(host)
            if task is None:
                return
            step = bytes_done - self.done_bytes.get(host, 0)
            self.done_bytes[host] = bytes_done
            self.bars.update(task, completed=bytes_done, files=f"{files_done}/{self.files.get(host, 0)} files")
            self.bars.advance(self.total_task, step)

    def finished(self, result: HostResult) -> None:
        with self.lock:
            task = self.tasks.get(result.host)
            if task is None:
                return
            if result.ok:
                total = self.bars.tasks[task].total or 1
                self.bars.update(task, total=total, completed=total, description=f"{result.host} [green]ok",
                                 files=f"{result.sent} sent, {result.skipped} skipped")
            else:
                self.bars.update(task, total=1, completed=0, description=f"{result.host} [red]FAILED",
                                 files=f"{result.failed} failed" if result.error is None else "not synced")
            self.bars.start_task(task)

    def close(self) -> None:
        self.bars.stop()


def for_console(quiet: bool, out=None) -> Progress:
    """Bars on a terminal, plain lines elsewhere, nothing when quiet."""
    out = out or sys.stdout
    if quiet:
        return Progress()
    if hasattr(out, "isatty") and out.isatty():
        return RichProgress()
    return PlainProgress(out)
