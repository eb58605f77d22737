"""Runs go without the cyclic garbage collector (as Mercurial's ``nogc``).

A sync allocates records by the hundred thousand and keeps nearly all of
them until it ends, so every automatic collection scans them for nothing,
under the GIL, while the other threads wait. Measured (bench/PROFILE.md, fourth
round): a no-op of 100,000 files 1.4-1.7 s instead of 1.8-2.2 s, at the
same peak RSS. Reference counting still frees everything that is not in a
cycle, and the collector is on again afterwards if it was on before.
"""

from __future__ import annotations

import contextlib
import gc


class paused_gc(contextlib.ContextDecorator):
    """``with paused_gc():`` or ``@paused_gc()``: no automatic collection inside.
    Nested and concurrent uses are safe: only the outermost one that found the
    collector on turns it back on."""

    def __enter__(self) -> "paused_gc":
        self.was = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc) -> None:
        if self.was:
            gc.enable()
