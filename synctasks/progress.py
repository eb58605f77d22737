"""Progress of a run, for people and for CI logs.

- On a terminal: per-host bars (files and bytes) and an overall bar with rate
  and time left, drawn by rich; log lines print above the bars.
- Elsewhere (CI, pipes): no bars and no escape codes, plain timestamped lines,
  at most one per host every few seconds, plus one when a host finishes.
- ``--quiet``: nothing.

The transfer calls :meth:`planned` once per host (what it is about to send)
and :meth:`update` as files go out; the runner calls :meth:`finished`.
Lines for people (itemized changes) go through :meth:`line`, so that on a
terminal they print above the bars instead of being drawn over. Sizes are
binary everywhere (KiB, MiB), as in the summary table; every text that may
come from a remote host is escaped (:func:`escape`) before it is shown.
"""

from __future__ import annotations

import sys
import threading
import time

from .logger import clean
from .results import HostResult


def escape(text: str) -> str:
    """``text`` as one safe line, exactly as the logs show it
    (:func:`synctasks.logger.clean`): a registered secret (a remote error may
    echo one) masked, control characters (terminal escapes, newlines, bidi
    overrides) as Python escapes, undecodable bytes as ``\\xNN``; never sent
    to the terminal raw."""
    return clean(text)


def human_bytes(count: float) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


class Progress:
    """No progress output (--quiet, dry runs, library use); :meth:`line`
    prints plainly."""

    #: Whether the per-host result lines would fight with this display.
    draws = False

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        """Print one line for people (already escaped)."""
        with self.lock:
            print(text, file=self.out, flush=True)

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
        super().__init__(out)
        self.every = every
        self.totals: dict[str, tuple[int, int]] = {}
        self.last: dict[str, float] = {}

    def _line(self, text: str) -> None:
        with self.lock:
            print(f"{time.strftime('%H:%M:%S')} {text}", file=self.out, flush=True)

    def planned(self, host: str, files: int, total_bytes: int) -> None:
        self.totals[host] = (files, total_bytes)
        self.last[host] = time.monotonic()
        if files:
            self._line(f"{escape(host)}: sending {files} file(s), {human_bytes(total_bytes)}")

    def update(self, host: str, files_done: int, bytes_done: int) -> None:
        now = time.monotonic()
        if now - self.last.get(host, 0.0) < self.every:
            return
        self.last[host] = now
        files, total = self.totals.get(host, (0, 0))
        self._line(f"{escape(host)}: {files_done}/{files} files, {human_bytes(bytes_done)}/{human_bytes(total)}")


def _columns():
    """Rich columns in binary units that stay quiet for hosts with nothing
    to send (no "0/? bytes", no "? -:--:--")."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Bytes(ProgressColumn):
        def render(self, task) -> Text:
            total = task.fields.get("bytes_total")
            if total is None:
                return Text("")
            if total == 0:
                return Text("nothing to send", style="progress.download")
            done = min(int(task.completed), total)
            return Text(f"{human_bytes(done)}/{human_bytes(total)}", style="progress.download")

    class Speed(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            if not task.fields.get("bytes_total") or speed is None:
                return Text("")
            return Text(f"{human_bytes(speed)}/s", style="progress.data.speed")

    class TimeLeft(ProgressColumn):
        max_refresh = 0.5

        def render(self, task) -> Text:
            left = task.time_remaining
            if task.finished or not task.fields.get("bytes_total") or left is None:
                return Text("")
            minutes, seconds = divmod(int(left), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"{hours}:{minutes:02d}:{seconds:02d} left", style="progress.remaining")

    return Bytes(), Speed(), TimeLeft()


class RichProgress(Progress):
    """Bars on a terminal (rich), one per host and one overall."""

    draws = True

    def __init__(self):
        super().__init__()
        from rich.markup import escape as markup_escape
        from rich.progress import BarColumn, Progress as Bars, TextColumn

        self.bars = Bars(TextColumn("{task.description}", justify="left"), BarColumn(),
                         TextColumn("{task.fields[files]}", justify="right"), *_columns(), transient=False,
                         redirect_stderr=True, redirect_stdout=True)
        self._name = lambda host: markup_escape(escape(host))
        self.files: dict[str, int] = {}
        self.tasks: dict[str, int] = {}
        self.done_bytes: dict[str, int] = {}
        self.total_task = None
        self.total_bytes = 0

    def line(self, text: str) -> None:
        from rich.text import Text

        with self.lock:
            # Through the bars' console: printed above the bars, never drawn over.
            self.bars.console.print(Text(text), soft_wrap=True)

    def start(self, hosts: list[str]) -> None:
        self.bars.start()
        self.total_task = self.bars.add_task("[bold]all hosts", total=None, files="")
        for host in hosts:
            self.tasks[host] = self.bars.add_task(self._name(host), total=None, start=False, files="")

    def planned(self, host: str, files: int, total_bytes: int) -> None:
        with self.lock:
            task = self.tasks.get(host)
            if task is None:
                return
            # Bars measure bytes; the files column counts files.
            self.files[host] = files
            self.bars.update(task, total=max(total_bytes, 1), completed=0, files=f"0/{files} files",
                             bytes_total=total_bytes)
            self.bars.start_task(task)
            self.total_bytes += total_bytes
            self.bars.update(self.total_task, total=max(self.total_bytes, 1), bytes_total=self.total_bytes)

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
            name = self._name(result.host)
            if result.ok:
                total = self.bars.tasks[task].total or 1
                word = "would change" if result.dry_run and result.changed else "ok"
                self.bars.update(task, total=total, completed=total, description=f"{name} [green]{word}",
                                 files=f"{result.sent} sent, {result.skipped} skipped")
            elif result.state != "done":
                self.bars.update(task, description=f"{name} [yellow]{result.state}", files="")
            else:
                self.bars.update(task, total=1, completed=0, description=f"{name} [red]FAILED",
                                 files=f"{result.failed} failed" if result.error is None else "not synced",
                                 bytes_total=None)
            self.bars.start_task(task)
            if self.bars.tasks[self.total_task].total is None:
                self.bars.update(self.total_task, total=1)
            if all(self.bars.tasks[t].finished or t == self.total_task for t in self.tasks.values()):
                self.bars.update(self.total_task, completed=self.bars.tasks[self.total_task].total)

    def close(self) -> None:
        self.bars.stop()


def for_console(quiet: bool, out=None) -> Progress:
    """Bars on a terminal, plain lines elsewhere, nothing when quiet."""
    out = out or sys.stdout
    if quiet:
        return Progress(out)
    if hasattr(out, "isatty") and out.isatty():
        return RichProgress()
    return PlainProgress(out)
