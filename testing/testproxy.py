"""A small TCP proxy on loopback, for the benchmarks and fault-injection tests.

It forwards connections from ``listen`` to ``target`` and can add a one-way
delay in each direction (``delay=0.010`` gives a 20 ms round trip), cut
every open connection (now, or once a number of bytes went through), or
stall them (stop forwarding without closing). Loopback only.
"""

from __future__ import annotations

import asyncio
import threading
import time


class TcpProxy:
    """Forward 127.0.0.x:port -> target, with an optional delay per direction."""

    def __init__(self, target: tuple[str, int], delay: float = 0.0, listen: tuple[str, int] = ("127.0.0.1", 0)):
        for host in (target[0], listen[0]):
            if not host.startswith("127."):
                raise ValueError(f"refusing {host}: the proxy is loopback only")
        self.target = target
        self.delay = delay
        self.listen = listen
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self.bytes_forwarded = 0
        #: Cut every connection once this many bytes went through (once).
        self.cut_after: int | None = None
        #: Stall every connection once this many bytes went through.
        self.stall_after: int | None = None
        self.cuts = 0
        self._flowing: asyncio.Event | None = None

    def start(self) -> "TcpProxy":
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, *self.listen))
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        self._ready.set()
        self._loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _serve(self, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, server_writer))
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer),
                                 return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the proxy is stopping: not an error worth a traceback
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded += len(data)
                if self.cut_after is not None and self.bytes_forwarded >= self.cut_after:
                    self.cut_after = None
                    self._abort_all()
                if self.stall_after is not None and self.bytes_forwarded >= self.stall_after:
                    self.stall_after = None
                    self._flowing.clear()
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(1 << 16)
                queue.put_nowait((time.monotonic() + self.delay, data or None))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            sender.cancel()
            writer.close()

    def _abort_all(self) -> None:
        self.cuts += 1
        for writer in list(self._writers):
            transport = writer.transport
            if transport is not None:
                transport.abort()

    def cut(self) -> None:
        """Reset every connection going through the proxy now."""
        if self._loop:
            self._loop.call_soon_threadsafe(self._abort_all)

    def stall(self) -> None:
        """Stop forwarding (connections stay open, nothing moves)."""
        if self._loop:
            self._loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._flowing.set)

    def stop(self) -> None:
        if self._loop:
            self.resume()
            self.cut()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = None

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
