"""One exec channel's byte stream: buffered reads with a stall timeout,
stderr kept aside, zero-copy sends, and the marker lines of the remote script."""

from __future__ import annotations

import os
import socket
import struct
import time

import paramiko
from paramiko.common import MSG_CHANNEL_DATA, cMSG_CHANNEL_DATA

from .errors import RemoteError
from .options import STALL_TIMEOUT

#: Bytes kept at most while looking for one answer: a hostile or broken host
#: must not grow the client's buffers without bound.
MAX_ANSWER = 64 << 20
#: Bytes of channel data sent at most in one socket write (several packets).
BATCH = 256 << 10
#: Bytes of the authentication tag after an AES-GCM packet (RFC 5647).
GCM_TAG = 16


def marker(token: str) -> bytes:
    return f"\n@@{token}@@ ".encode()


class GcmWriter:
    """Channel data packets built and encrypted here, under AES-GCM (the
    cipher synctasks prefers), with paramiko's own locks and counters.

    paramiko copies each 32 KiB packet's data about seven times on its way
    out (a Message buffer, the packet, its padding, the slice to encrypt,
    the length put back in front); memmove was a fifth of the client's CPU
    sending 512 MiB. Here the data is copied once into the packet and once
    by the cipher, straight into the buffer of the socket write (with
    cryptography's ``encrypt_into``), and up to BATCH bytes of packets go in
    one write (bench/PROFILE.md, fourth round).

    Everything else is paramiko's: the channel's send window, the wait while
    keys are renegotiated (the transport's clear_to_send), the packetizer's
    write lock, sequence number, byte counts and rekey trigger. Any packet
    this does not cover (another cipher, compression, packet dumps) goes
    through ``Channel.send``; :meth:`for_channel` gives None on a paramiko
    without these internals.
    """

    #: The packetizer's (name-mangled) attributes this reads and writes.
    NEEDS = ("_Packetizer__aead_out", "_Packetizer__block_engine_out", "_Packetizer__block_size_out",
             "_Packetizer__iv_out", "_Packetizer__write_lock", "_Packetizer__sequence_number_out",
             "_Packetizer__sent_bytes", "_Packetizer__sent_packets", "_Packetizer__need_rekey",
             "_Packetizer__compress_engine_out", "_Packetizer__dump_packets")

    def __init__(self, chan: paramiko.Channel, transport: paramiko.Transport):
        self.chan = chan
        self.transport = transport
        self.pk = transport.packetizer
        #: the packet before and after encryption, kept from one to the next
        self.plain = bytearray()
        self.out = bytearray()

    @classmethod
    def for_channel(cls, chan: paramiko.Channel) -> "GcmWriter | None":
        transport = chan.get_transport()
        pk = getattr(transport, "packetizer", None)
        if pk is None or not all(hasattr(pk, name) for name in cls.NEEDS):
            return None
        if not all(hasattr(transport, name) for name in ("clear_to_send", "clear_to_send_lock",
                                                           "clear_to_send_timeout", "active")):
            return None
        if not all(hasattr(chan, name) for name in ("lock", "_wait_for_send_window", "remote_chanid", "closed")):
            return None
        return cls(chan, transport)

    def _covered(self) -> bool:
        pk = self.pk
        return (pk._Packetizer__aead_out and pk._Packetizer__compress_engine_out is None
                and not pk._Packetizer__dump_packets and hasattr(pk._Packetizer__block_engine_out, "encrypt"))

    def send(self, view: memoryview) -> int:
        """As ``Channel.send``, but up to BATCH bytes (several packets, in
        one socket write) where the send window allows."""
        chan, transport = self.chan, self.transport
        if not self._covered():
            return chan.send(view)
        with chan.lock:
            if chan.closed:
                raise OSError("Socket is closed")
            size = chan._wait_for_send_window(len(view))  # waits for a window; one packet's worth
            if size == 0:
                return 0
            more = min(len(view) - size, chan.out_window_size, BATCH - size)
            if more > 0:
                chan.out_window_size -= more
                size += more
            chanid = chan.remote_chanid
            packet = chan.out_max_packet_size - 64  # as Channel: room for the packet's own fields
        # As Transport._send_user_message: no data while keys are renegotiated.
        start = time.monotonic()
        while True:
            transport.clear_to_send.wait(0.1)
            if not transport.active:
                raise EOFError("the connection closed")
            transport.clear_to_send_lock.acquire()
            if transport.clear_to_send.is_set():
                break
            transport.clear_to_send_lock.release()
            if time.monotonic() > start + transport.clear_to_send_timeout:
                raise paramiko.SSHException("Key-exchange timed out waiting for key negotiation")
        try:
            self._write(chanid, view[:size], packet)
        finally:
            transport.clear_to_send_lock.release()
        return size

    def _write(self, chanid: int, data: memoryview, packet: int) -> None:
        pk = self.pk
        with pk._Packetizer__write_lock:
            if not self._covered():  # keys renegotiated to another cipher meanwhile
                for at in range(0, len(data), packet):
                    message = paramiko.Message()
                    message.add_byte(cMSG_CHANNEL_DATA)
                    message.add_int(chanid)
                    message.add_string(bytes(data[at:at + packet]))
                    pk.send_message(message)
                return
            block = pk._Packetizer__block_size_out
            engine = pk._Packetizer__block_engine_out
            into = getattr(engine, "encrypt_into", None)  # cryptography >= 45: no copy of the result
            need = len(data) + (len(data) // packet + 1) * (4 + 10 + block + 3 + GCM_TAG)
            if len(self.out) < need:
                self.out = bytearray(need)
            out = memoryview(self.out)
            plain = self.plain
            end = 0
            for at in range(0, len(data), packet):
                part = data[at:at + packet]
                size = len(part)
                # RFC 5647: the length is authenticated, not encrypted; padding
                # brings the rest to whole blocks, at least 4 bytes of it.
                padding = 3 + block - ((size + 9 + 4) % block)
                total = 10 + size + padding  # padding length, type, channel, length, data, padding
                if len(plain) < total:
                    plain = self.plain = bytearray(total)
                struct.pack_into(">BBII", plain, 0, padding, MSG_CHANNEL_DATA, chanid, size)
                plain[10:10 + size] = part
                plain[10 + size:total] = os.urandom(padding)
                length = struct.pack(">I", total)
                iv = pk._Packetizer__iv_out
                out[end:end + 4] = length
                if into is not None:
                    into(iv, memoryview(plain)[:total], length, out[end + 4:end + 4 + total + GCM_TAG])
                else:
                    out[end + 4:end + 4 + total + GCM_TAG] = engine.encrypt(iv, memoryview(plain)[:total], length)
                end += 4 + total + GCM_TAG
                pk._Packetizer__iv_out = pk._inc_iv_counter(iv)
                pk._Packetizer__sequence_number_out = (pk._Packetizer__sequence_number_out + 1) & 0xFFFFFFFF
                pk._Packetizer__sent_packets += 1
            pk.write_all(out[:end])
            pk._Packetizer__sent_bytes += end
            if ((pk._Packetizer__sent_packets >= pk.REKEY_PACKETS or pk._Packetizer__sent_bytes >= pk.REKEY_BYTES)
                    and not pk._Packetizer__need_rekey):
                pk._Packetizer__received_bytes_overflow = 0
                pk._Packetizer__received_packets_overflow = 0
                pk._trigger_rekey()


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
        self.writer = GcmWriter.for_channel(chan)

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
        send = self.writer.send if self.writer is not None else self.chan.send
        try:
            while view:
                sent = send(view)
                if sent <= 0:
                    return False
                view = view[sent:]
            return True
        except (OSError, EOFError, paramiko.SSHException):
            return False
