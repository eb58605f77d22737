"""One exec channel's byte stream: buffered reads with a stall timeout,
stderr kept aside, zero-copy sends, and the marker lines of the remote script."""

from __future__ import annotations

import socket

import paramiko

from .errors import RemoteError
from .options import STALL_TIMEOUT

#: Bytes kept at most while looking for one answer: a hostile or broken host
#: must not grow the client's buffers without bound.
MAX_ANSWER = 64 << 20


def marker(token: str) -> bytes:
    return f"\n@@{token}@@ ".encode()


class Stream:
    """Buffered reading of one exec channel's stdout (stderr kept aside)."""

    def __init__(self, chan: paramiko.Channel, label: str, timeout: float = STALL_TIMEOUT):
        self.chan = chan
        self.label = label
        self.timeout = timeout
        self.buf = bytearray()
        self.err = bytearray()
        self.eof = False
        chan.settimeout(timeout)

    def _take_stderr(self) -> None:
        while self.chan.recv_stderr_ready():
            self.err += self.chan.recv_stderr(1 << 16)

    def pump(self, block: bool) -> bool:
        """Receive what is there (or wait for something); False at EOF."""
        self._take_stderr()
        if self.eof:
            return False
        if not block and not self.chan.recv_ready():
            return True
        try:
            data = self.chan.recv(1 << 16)
        except socket.timeout:
            raise RemoteError(f"no answer for {self.timeout:.0f}s: the connection stalled", host=self.label,
                              transient=True) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise RemoteError(f"the connection broke: {exc}", host=self.label, transient=True) from None
        if not data:
            self.eof = True
            self._take_stderr()
            return False
        self.buf += data
        return True

    def read_until(self, needle: bytes, limit: int = MAX_ANSWER) -> bytes:
        """Everything up to and including ``needle`` (at most ``limit`` bytes
        before it: a broken or hostile host cannot grow our buffer for ever)."""
        start = 0
        while True:
            found = self.buf.find(needle, start)
            if found >= 0:
                end = found + len(needle)
                data = bytes(self.buf[:end])
                del self.buf[:end]
                return data
            if len(self.buf) > limit + len(needle):
                raise RemoteError(f"the remote side sent more than {limit} bytes where an answer was due",
                                  host=self.label)
            start = max(0, len(self.buf) - len(needle) + 1)
            if not self.pump(block=True):
                transport = self.chan.get_transport()
                if transport is None or not transport.is_active():
                    raise RemoteError("the connection was lost (closed or reset on the way)", host=self.label,
                                      transient=True)
                raise RemoteError(self.failure("the remote command stopped"), host=self.label)

    def stderr_text(self) -> str:
        self._take_stderr()
        return self.err.decode("utf-8", "replace").strip()

    def failure(self, what: str) -> str:
        detail = self.stderr_text()
        status = self.chan.recv_exit_status() if self.chan.exit_status_ready() else None
        text = what
        if status is not None:
            text += f" (exit status {status})"
        if detail:
            text += ": " + detail.splitlines()[-1]
        return text

    def send(self, data) -> bool:
        """Send all of ``data``; False if the remote side has gone away.

        Channel.sendall re-slices (copies) the rest of its buffer after every
        32 KiB packet; a memoryview slices for free.
        """
        view = memoryview(data)
        try:
            while view:
                sent = self.chan.send(view)
                if sent <= 0:
                    return False
                view = view[sent:]
            return True
        except (OSError, EOFError, paramiko.SSHException):
            return False
