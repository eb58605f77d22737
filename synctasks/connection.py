"""Connections built from connection_info.json, with host keys checked.

Fabric tasks and the Python API get Fabric ``Connection`` objects. The
console script gets :class:`SshConnection`, the same thing on paramiko alone
(same ssh_config keys, same host-key policy), because importing Fabric and
Invoke costs a tenth of a second at every start; it falls back to Fabric for
hosts whose ssh_config entry needs a ProxyJump or ProxyCommand.

Fabric 3 gives every Connection paramiko's ``AutoAddPolicy`` and never loads
known_hosts, so it trusts any server. :func:`apply_host_key_policy` replaces
that with ``[security] host_key_policy``:

- ``strict`` (default): keys must already be in known_hosts;
- ``accept-new``: unknown keys are recorded in known_hosts, changed keys refused;
- ``off``: any key is accepted, with a warning.

A changed key is refused under both strict and accept-new, naming the
known_hosts line to fix.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys

from .errors import AuthError, ConnectError, HostKeyError
from .inputs import HostEntry, Settings
from .logger import add_secret, get_logger

_known_hosts_lock = threading.Lock()

#: Faster ciphers first: AES-GCM needs no separate MAC pass. Paramiko keeps
#: its own order for whatever is missing here.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def known_hosts_line(path: Path, lookup: str) -> int | None:
    """The 1-based line of ``path`` holding a key for ``lookup`` (plain or hashed)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for number, line in enumerate(lines, 1):
        try:
            entry = HostKeyEntry.from_line(line, number)
        except Exception:  # malformed lines are paramiko's to skip, and ours
            continue
        if entry is None:
            continue
        for name in entry.hostnames:
            if name == lookup or (name.startswith("|1|") and HostKeys.hash_host(lookup, name) == name):
                return number
    return None


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """What to do with a host key that known_hosts does not have."""

    def __init__(self, policy: str, known_hosts: Path, label: str):
        self.policy = policy
        self.known_hosts = known_hosts
        self.label = label

    def missing_host_key(self, client, hostname, key):
        log = get_logger(self.label)
        if self.policy == "off":
            log.warning("host key NOT checked (host_key_policy = off): %s is %s", hostname, fingerprint(key))
            return
        if self.policy == "accept-new":
            with _known_hosts_lock:
                self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
                with open(self.known_hosts, "a", encoding="utf-8") as handle:
                    handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            client.get_host_keys().add(hostname, key.get_name(), key)
            log.warning("new host key for %s recorded in %s: %s", hostname, self.known_hosts, fingerprint(key))
            return
        raise HostKeyError(
            f"unknown host key {fingerprint(key)} for {hostname}: it is not in {self.known_hosts}; "
            f"check it, then add it (ssh-keyscan {_keyscan_args(hostname)} >> {self.known_hosts}) "
            "or set [security] host_key_policy = accept-new",
            host=self.label,
        )


def _keyscan_args(hostname: str) -> str:
    if hostname.startswith("["):
        host, _, port = hostname[1:].partition("]:")
        return f"-p {port} {host}"
    return hostname


def apply_host_key_policy(c, policy: str = "strict", known_hosts: Path | None = None, label: str | None = None):
    """Replace Fabric's AutoAddPolicy with ``policy`` against ``known_hosts``."""
    label = label or c.original_host
    known_hosts = known_hosts or Path("~/.ssh/known_hosts").expanduser()
    c.client.set_missing_host_key_policy(HostKeyPolicy(policy, known_hosts, label))
    if policy != "off" and known_hosts.is_file():
        # "system" host keys: read, never rewritten by paramiko.
        c.client.load_system_host_keys(str(known_hosts))
    return c


class QuickAckSocket:
    """A TCP socket that acknowledges what it received at once.

    The server's sshd leaves Nagle's algorithm on: a small answer (an SCP
    or script status line, a channel confirmation) waits until its previous
    small packet is acknowledged, and Linux delays that acknowledgement up to
    40 ms when we have nothing to send. Re-arming TCP_QUICKACK after each read
    sends the acknowledgement now.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._quickack = getattr(socket, "TCP_QUICKACK", None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        if self._quickack is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, self._quickack, 1)
            except OSError:
                self._quickack = None
        return data

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _fast_transport(sock, *args, **kwargs) -> paramiko.Transport:
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        # Before the key exchange, not after: every handshake message is small.
        sock = QuickAckSocket(sock)
    transport = paramiko.Transport(sock, *args, **kwargs)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in offered) + tuple(
        c for c in offered if c not in PREFERRED_CIPHERS
    )
    return transport


#: ssh_config files, as Fabric reads them.
SSH_CONFIGS = (Path("/etc/ssh/ssh_config"), Path("~/.ssh/config").expanduser())


def load_ssh_config(paths=SSH_CONFIGS) -> paramiko.SSHConfig:
    config = paramiko.SSHConfig()
    for path in paths:
        try:
            with open(path) as handle:
                config.parse(handle)
        except OSError:
            continue
    return config


class SshConnection:
    """What synctasks uses of a Fabric Connection, on paramiko alone."""

    def __init__(self, host: str, user: str | None = None, port: int | None = None,
                 connect_timeout: int | None = None, connect_kwargs: dict | None = None,
                 ssh_config: paramiko.SSHConfig | None = None):
        found = (ssh_config or load_ssh_config()).lookup(host)
        #: ssh_config data for the host (as Fabric's ``Connection.ssh_config``).
        self.ssh_config = found
        self.original_host = host
        self.host = found.get("hostname", host)
        self.user = user or found.get("user") or getpass.getuser()
        self.port = port or int(found.get("port", 22))
        self.connect_timeout = connect_timeout
        self.connect_kwargs = dict(connect_kwargs or {})
        if "identityfile" in found and "key_filename" not in self.connect_kwargs:
            self.connect_kwargs["key_filename"] = [os.path.expanduser(p) for p in found["identityfile"]]
        self.client = paramiko.SSHClient()
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self.transport: paramiko.Transport | None = None

    @property
    def needs_fabric(self) -> bool:
        return "proxyjump" in self.ssh_config or "proxycommand" in self.ssh_config

    @property
    def is_connected(self) -> bool:
        return self.transport.active if self.transport else False

    def open(self) -> None:
        if self.is_connected:
            return
        self.client.connect(hostname=self.host, port=self.port, username=self.user, timeout=self.connect_timeout,
                            **self.connect_kwargs)
        self.transport = self.client.get_transport()

    def close(self) -> None:
        self.client.close()
        self.transport = None

    def __enter__(self) -> "SshConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SshConnection {self.user}@{self.host}:{self.port}>"


def build_connection(host: HostEntry, settings: Settings, lightweight: bool = False):
    """A (not yet opened) connection for one connection_info entry: a Fabric
    Connection, or with ``lightweight`` an :class:`SshConnection` (unless
    the host needs Fabric's gateway support)."""
    connect_kwargs: dict = {
        "transport_factory": _fast_transport,
        "banner_timeout": settings.connect_timeout,
        "auth_timeout": settings.connect_timeout,
    }
    add_secret(host.sudo_password)
    if host.password:
        add_secret(host.password)
        connect_kwargs["password"] = host.password
        if not host.key_filename:
            # A password entry means password auth: don't wander through
            # every key in ~/.ssh first (and trip MaxAuthTries).
            connect_kwargs["look_for_keys"] = False
            connect_kwargs["allow_agent"] = False
    if host.key_filename:
        connect_kwargs["key_filename"] = [host.key_filename]
    c = None
    if lightweight:
        ssh_config = load_ssh_config([settings.ssh_config] if settings.ssh_config else SSH_CONFIGS)
        c = SshConnection(host.name, user=host.user, port=host.port, connect_timeout=int(settings.connect_timeout),
                          connect_kwargs=connect_kwargs, ssh_config=ssh_config)
        if c.needs_fabric:
            c = None
    if c is None:
        from fabric import Config, Connection

        config = Config(runtime_ssh_path=str(settings.ssh_config)) if settings.ssh_config else Config()
        c = Connection(host.name, user=host.user, port=host.port, connect_timeout=int(settings.connect_timeout),
                       connect_kwargs=connect_kwargs, config=config)
        # Jump hosts (ProxyJump) are Connections too, made by Fabric with
        # its trust-anything policy: give each ours.
        gateway = c.gateway
        while isinstance(gateway, Connection):
            apply_host_key_policy(gateway, settings.host_key_policy, settings.known_hosts,
                                  f"{host.name} via {gateway.original_host}")
            gateway.connect_kwargs.setdefault("transport_factory", _fast_transport)
            gateway = gateway.gateway
    return apply_host_key_policy(c, settings.host_key_policy, settings.known_hosts, host.name)


def open_connection(c, label: str, retries: int = 0, backoff: float = 0.5):
    """Open ``c``, retrying transient network errors; raise typed errors."""
    log = get_logger(label)
    attempt = 0
    while True:
        try:
            _open_once(c, label)
            return c
        except ConnectError as exc:
            if not exc.transient or attempt >= retries:
                raise
            attempt += 1
            delay = backoff * 2 ** (attempt - 1)
            log.warning("%s; retry %d of %d in %.1fs", exc, attempt, retries, delay)
            time.sleep(delay)


def _open_once(c, label: str) -> None:
    log = get_logger(label)
    started = time.monotonic()
    try:
        c.open()
    except HostKeyError:
        _close_quietly(c)
        raise
    except paramiko.BadHostKeyException as exc:
        _close_quietly(c)
        path = _known_hosts_path(c)
        lookup = c.host if c.port == 22 else f"[{c.host}]:{c.port}"
        line = known_hosts_line(path, lookup) if path else None
        where = f"{path} line {line}" if line else str(path)
        raise HostKeyError(
            f"host key CHANGED for {lookup}: server offers {fingerprint(exc.key)}, {where} has "
            f"{fingerprint(exc.expected_key)}; if the change is expected, remove that line "
            f"(ssh-keygen -R '{lookup}' -f {path})",
            host=label,
        ) from None
    except paramiko.AuthenticationException as exc:
        _close_quietly(c)
        raise AuthError(f"login refused for user {c.user!r}: {str(exc).rstrip('.')}; check the user, passkey or key_filename",
                        host=label) from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        _close_quietly(c)
        reasons = {getattr(e, "strerror", None) or str(e) for e in exc.errors.values()}
        raise ConnectError(f"cannot connect to {c.host}:{c.port}: {', '.join(sorted(reasons))}", host=label) from None
    except (socket.timeout, TimeoutError) as exc:
        _close_quietly(c)
        raise ConnectError(f"timed out connecting to {c.host}:{c.port} ({exc or 'no answer'})", host=label) from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        _close_quietly(c)
        raise ConnectError(f"cannot connect to {c.host}:{c.port}: {exc}", host=label) from None
    sock = c.transport.sock
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        # Also for Connections we did not build: small SCP messages must not
        # wait for Nagle's algorithm.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    log.debug("connected to %s@%s:%s in %.3fs (cipher %s)", c.user, c.host, c.port,
              time.monotonic() - started, c.transport.remote_cipher)


def _known_hosts_path(c) -> Path | None:
    policy = c.client._policy
    return getattr(policy, "known_hosts", None)


def _close_quietly(c) -> None:
    try:
        c.close()
    except Exception:
        pass
