"""The channel's data path against the real sshd: under AES-GCM synctasks
builds and encrypts the data packets itself (channel.GcmWriter); sshd must
read back every byte, across a key renegotiation in mid-stream, and other
ciphers must still go through paramiko's own Channel.send."""

from __future__ import annotations

import hashlib
import os

import paramiko
import pytest

from synctasks.channel import GcmWriter, Stream

GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def connect(server, address: str, ciphers: tuple[str, ...]) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # throwaway server on loopback
    offered = paramiko.Transport._preferred_ciphers
    client.connect(address, server.port, username=server.user, key_filename=str(server.client_key),
                   look_for_keys=False, allow_agent=False, timeout=5,
                   disabled_algorithms={"ciphers": [c for c in offered if c not in ciphers]})
    return client


def remote_sha256(client: paramiko.SSHClient, data: bytes, rekey_every: int | None = None,
                  writer: type[GcmWriter] | None = None) -> tuple[str, Stream]:
    """The host's sha256sum of ``data``, sent through a Stream (its writer
    replaced by ``writer``'s, if given)."""
    transport = client.get_transport()
    if rekey_every:
        transport.packetizer.REKEY_BYTES = rekey_every  # this connection only
    chan = transport.open_session()
    chan.exec_command("sha256sum")
    stream = Stream(chan, "test")
    if writer is not None:
        stream.writer = writer(chan, transport)
    view = memoryview(data)
    for at in range(0, len(data), 1 << 20):  # as the SCP stream sends big files
        assert stream.send(view[at:at + (1 << 20)])
    chan.shutdown_write()
    out = b""
    while True:
        piece = chan.recv(1 << 16)
        if not piece:
            break
        out += piece
    assert chan.recv_exit_status() == 0, stream.stderr_text()
    return out.split()[0].decode(), stream


@pytest.mark.parametrize("cipher", GCM)
def test_gcm_packets_reach_sshd_intact_across_rekeys(server, cipher):
    data = os.urandom(24 << 20) + b"tail" * 1001  # not a whole number of packets
    client = connect(server, server.addresses[0], (cipher,))
    try:
        transport = client.get_transport()
        assert transport.local_cipher == cipher
        packetizer = transport.packetizer
        new_keys = []
        switch = packetizer.set_outbound_cipher

        def counted(*args, **kwargs):
            new_keys.append(packetizer._Packetizer__sent_bytes)
            return switch(*args, **kwargs)

        packetizer.set_outbound_cipher = counted
        digest, stream = remote_sha256(client, data, rekey_every=4 << 20)
        assert isinstance(stream.writer, GcmWriter) and stream.writer._covered()
        assert digest == hashlib.sha256(data).hexdigest()
        # The keys were renegotiated in mid-stream, each time about 4 MiB
        # had gone out under them, and the connection still works.
        assert len(new_keys) >= 5, new_keys
        assert all((4 << 20) <= sent < (5 << 20) for sent in new_keys), new_keys
        assert transport.is_active()
        assert remote_sha256(client, b"after")[0] == hashlib.sha256(b"after").hexdigest()
    finally:
        client.close()


def test_other_ciphers_use_paramikos_channel_send(server):
    data = os.urandom(3 << 20)
    client = connect(server, server.addresses[0], ("aes128-ctr",))
    try:
        digest, stream = remote_sha256(client, data)
        assert client.get_transport().local_cipher == "aes128-ctr"
        assert stream.writer is not None and not stream.writer._covered()
        assert digest == hashlib.sha256(data).hexdigest()
    finally:
        client.close()


def test_a_cipher_change_before_the_write_falls_back_to_paramikos_packets(server):
    """If the keys changed to another cipher between taking the window and
    writing, the packets already counted against the window go out as
    paramiko's own messages (forced here: the writer sees GCM, then not)."""

    class Flipping(GcmWriter):
        checks = 0

        def _covered(self) -> bool:
            Flipping.checks += 1
            return Flipping.checks % 2 == 1  # send(): yes; _write(): no

    data = os.urandom(2 << 20) + b"odd"
    client = connect(server, server.addresses[0], GCM[:1])
    try:
        digest, _ = remote_sha256(client, data, writer=Flipping)
        assert Flipping.checks >= 16  # 2 MiB in batches of at most 256 KiB, twice each
        assert digest == hashlib.sha256(data).hexdigest()
    finally:
        client.close()
