"""For profiling only: run a synctasks entry with Stream.read_until's limit
checked against the answer's own length (where the needle is found), not
against everything buffered after it.

    python bench/shim_read_until.py .venv/bin/synctasks sync --config ...

Why: with the engine of commit f4ef379, an operation marker's status line is
read with ``read_until(b"\\n", limit=256)``, and read_until raises as soon as
the buffer holds more than 256 bytes, even when the newline is its first
byte: when the script's answers to many operations arrive in one packet
(2,000 folders, one changed file each), the run fails with "the remote side
sent more than 256 bytes where an answer was due". bench/hotspots.py
--shim uses this to profile the rest of the run; bench/run.py never does.
"""

import runpy
import sys

from synctasks import channel
from synctasks.errors import RemoteError


def read_until(self, needle: bytes, limit: int = channel.MAX_ANSWER) -> bytes:
    start = 0
    while True:
        found = self.buf.find(needle, start)
        if found >= 0:
            if found > limit:
                break
            end = found + len(needle)
            data = bytes(self.buf[:end])
            del self.buf[:end]
            return data
        if len(self.buf) > limit + len(needle):
            break
        start = max(0, len(self.buf) - len(needle) + 1)
        if not self.pump(block=True):
            transport = self.chan.get_transport()
            if transport is None or not transport.is_active():
                raise RemoteError("the connection was lost (closed or reset on the way)", host=self.label,
                                  transient=True)
            raise RemoteError(self.failure("the remote command stopped"), host=self.label)
    raise RemoteError(f"the remote side sent more than {limit} bytes where an answer was due", host=self.label)


channel.Stream.read_until = read_until
program = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(program, run_name="__main__")
