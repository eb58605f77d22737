"""Connections built from connection_info.json, with host keys checked.

Fabric tasks and the Python API get Fabric ``Connection`` objects. The
console script gets :class:`SshConnection`, the same thing on paramiko alone
(same ssh_config keys, same host-key policy), because importing Fabric and
Invoke costs a tenth of a second at every start; it falls back to Fabric for
hosts whose ssh_config entry needs a ProxyJump or ProxyCommand.

Host keys
---------
Fabric 3 gives every Connection paramiko's ``AutoAddPolicy`` and never loads
known_hosts, so it trusts any server. One function decides instead,
:func:`check_server_key`, under ``[security] host_key_policy``:

- ``strict`` (default): keys must already be in known_hosts;
- ``accept-new``: unknown keys are recorded in known_hosts, changed keys refused;
- ``off``: any key is accepted, with a warning.

A changed key is refused under both strict and accept-new, naming the
known_hosts line to fix. The files read are the ones OpenSSH reads: the
configured ``known_hosts`` (the one accept-new writes) plus ssh_config's
``UserKnownHostsFile`` for the host, and the global files
(``GlobalKnownHostsFile``, by default /etc/ssh/ssh_known_hosts and
/etc/ssh/ssh_known_hosts2); a key matching any of them is known.

It runs in two places: :func:`apply_host_key_policy` makes it the connection's
paramiko policy, so a connection we open is checked before any credential is
sent; :func:`verify_host_key` checks a connection that is already open,
whoever opened it (a task's ``c.run`` under Fabric's AutoAddPolicy included),
so the order of ``c.run`` and ``sync_host`` never changes what is trusted.
"""

from __future__ import annotations

import fnmatch
import getpass
import os
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys

from . import constants as K
from .errors import AuthError, ConnectError, HostKeyError, InputError
from .inputs import HostEntry, Inventory, Settings
from .logger import add_secret, get_logger

_known_hosts_lock = threading.Lock()

#: Faster ciphers first: AES-GCM needs no separate MAC pass. Paramiko keeps
#: its own order for whatever is missing here.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")

#: The user known_hosts file when none is configured.
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
#: OpenSSH's GlobalKnownHostsFile default: read, never written.
GLOBAL_KNOWN_HOSTS = (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))
#: The environment variable that sets the policy for one run.
POLICY_ENV = f"{K.ENV_PREFIX}SECURITY_HOST_KEY_POLICY"
#: The ways to ask for accept-new, as the first-contact hint lists them.
ACCEPT_NEW_WAYS = ("[security] host_key_policy = accept-new", f"{POLICY_ENV}=accept-new for one run")
#: Host-key algorithms to ask for, first, when known_hosts holds a key of a type.
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def lookup_name(host: str, port: int | None) -> str:
    """The name known_hosts files the key under: ``host`` or ``[host]:port``."""
    return host if port in (None, K.DEFAULT_PORT) else f"[{host}]:{port}"


@dataclass(frozen=True)
class KnownHostsFiles:
    """The known_hosts files of one host, as OpenSSH reads them."""

    #: User files; accept-new records new keys in the first.
    user: tuple[Path, ...]
    #: System-wide files, read only.
    system: tuple[Path, ...] = field(default=GLOBAL_KNOWN_HOSTS)

    @property
    def all(self) -> tuple[Path, ...]:
        return self.user + tuple(p for p in self.system if p not in self.user)

    @property
    def writable(self) -> Path:
        return self.user[0]


def _config_paths(value, c) -> list[Path] | None:
    """An ssh_config file list (``UserKnownHostsFile a b``), tokens expanded."""
    if not value:
        return None
    words = value if isinstance(value, list) else str(value).split()
    if any(w.lower() == "none" for w in words):
        return []
    tokens = {"%d": os.path.expanduser("~"), "%u": getpass.getuser(), "%h": str(getattr(c, "host", "")),
              "%r": str(getattr(c, "user", "") or ""), "%%": "%"}
    paths = []
    for word in words:
        for token, text in tokens.items():
            word = word.replace(token, text)
        paths.append(Path(os.path.expanduser(word)))
    return paths


def known_hosts_files(c, known_hosts: str | os.PathLike | None = None) -> KnownHostsFiles:
    """The files to check ``c``'s host key against: ``known_hosts`` (default
    ~/.ssh/known_hosts), then ssh_config's UserKnownHostsFile for the host;
    GlobalKnownHostsFile (default /etc/ssh/ssh_known_hosts{,2})."""
    first = Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
    config = getattr(c, "ssh_config", None) or {}
    user = [first]
    for path in _config_paths(config.get("userknownhostsfile"), c) or []:
        if path not in user:
            user.append(path)
    system = _config_paths(config.get("globalknownhostsfile"), c)
    return KnownHostsFiles(tuple(user), tuple(GLOBAL_KNOWN_HOSTS if system is None else system))


@dataclass(frozen=True)
class KnownKey:
    """A known_hosts line holding a key for the host looked up."""

    path: Path
    line: int
    key: paramiko.PKey
    marker: str | None = None  #: "@revoked" or "@cert-authority"


def _name_matches(pattern: str, lookup: str) -> bool:
    if pattern.startswith("|1|"):
        return HostKeys.hash_host(lookup, pattern) == pattern
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(lookup, pattern)
    return pattern == lookup


def known_keys(files, lookup: str) -> Iterator[KnownKey]:
    """Every key ``files`` hold for ``lookup`` (plain, hashed or a pattern)."""
    for path in files:
        try:
            lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            marker = None
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
            try:
                entry = HostKeyEntry.from_line(line.strip(), number)
            except Exception:  # a key type paramiko cannot read, a malformed line: OpenSSH skips them too
                continue
            if entry is None or entry.key is None:
                continue
            names = entry.hostnames
            if any(n.startswith("!") and _name_matches(n[1:], lookup) for n in names):
                continue
            if any(not n.startswith("!") and _name_matches(n, lookup) for n in names):
                yield KnownKey(Path(path), number, entry.key, marker)


def known_hosts_line(path: Path, lookup: str) -> int | None:
    """The 1-based line of ``path`` holding a key for ``lookup`` (plain or hashed)."""
    for known in known_keys([path], lookup):
        return known.line
    return None


def _keyscan_args(lookup: str) -> str:
    if lookup.startswith("["):
        host, _, port = lookup[1:].partition("]:")
        return f"-p {port} {shlex.quote(host)}"
    return shlex.quote(lookup)


def add_it_hint(lookup: str, path: Path) -> str:
    """How to record a host key by hand, on a machine that may have no ~/.ssh yet."""
    return (f"mkdir -p -m 700 {shlex.quote(str(path.parent))} && "
            f"ssh-keyscan {_keyscan_args(lookup)} >> {shlex.quote(str(path))}")


def _record(path: Path, lookup: str, key: paramiko.PKey) -> None:
    """Append ``key`` for ``lookup`` to ``path``; a missing folder is made 0700 (as ssh does)."""
    with _known_hosts_lock:
        folder = path.parent
        if not folder.is_dir():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)  # whatever the umask
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "rb+") as handle:
            end = handle.seek(0, os.SEEK_END)
            # A last line without its newline must not swallow ours.
            newline = end > 0 and handle.seek(end - 1) >= 0 and handle.read(1) != b"\n"
            line = f"{lookup} {key.get_name()} {key.get_base64()}\n".encode()
            handle.write((b"\n" if newline else b"") + line)


def check_server_key(lookup: str, key: paramiko.PKey, policy: str, files: KnownHostsFiles, label: str) -> None:
    """Accept ``key`` as the host key of ``lookup`` under ``policy``, or raise
    HostKeyError saying why and what to do. The one place that decides."""
    log = get_logger(label)
    if policy == "off":
        log.warning("host key NOT checked (host_key_policy = off): %s is %s", lookup, fingerprint(key))
        return
    found = list(known_keys(files.all, lookup))
    for known in found:
        if known.marker == "@revoked" and known.key == key:
            raise HostKeyError(f"host key {fingerprint(key)} for {lookup} is REVOKED ({known.path} line "
                               f"{known.line}): do not connect until the host has a new key", host=label)
    plain = [k for k in found if k.marker is None]
    for known in plain:
        if known.key == key:
            log.debug("host key %s matches %s line %d", fingerprint(key), known.path, known.line)
            return
    for known in plain:
        if known.key.get_name() == key.get_name():
            raise HostKeyError(
                f"host key CHANGED for {lookup}: server offers {fingerprint(key)}, {known.path} line {known.line} "
                f"has {fingerprint(known.key)}; if the change is expected, remove that line "
                f"(ssh-keygen -R '{lookup}' -f {shlex.quote(str(known.path))})",
                host=label,
            )
    target = files.writable
    if policy == "accept-new" and plain:
        other = plain[0]
        raise HostKeyError(
            f"host key {fingerprint(key)} for {lookup} is of a type not known for it, while {other.path} line "
            f"{other.line} holds its {other.key.get_name()} key; check it, then record it: "
            f"{add_it_hint(lookup, target)}", host=label)
    if policy == "accept-new":
        _record(target, lookup, key)
        log.warning("new host key for %s recorded in %s: %s", lookup, target, fingerprint(key))
        return
    existing = [str(p) for p in files.all if p.is_file()]
    where = f"it is in none of {', '.join(existing)}" if len(existing) > 1 else (
        f"it is not in {existing[0]}" if existing else f"there is no {target} yet")
    raise HostKeyError(
        f"unknown host key {fingerprint(key)} for {lookup}: {where}. Check the fingerprint, "
        f"then let synctasks record it on first contact ({', or '.join(ACCEPT_NEW_WAYS)}) "
        f"or record it now: {add_it_hint(lookup, target)}",
        host=label,
    )


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Our policy as paramiko's: every server key goes through
    :func:`check_server_key` (paramiko's own host-key store is left empty)."""

    def __init__(self, policy: str, known_hosts: Path, label: str, files: KnownHostsFiles | None = None):
        self.policy = policy
        self.known_hosts = known_hosts
        self.label = label
        self.files = files or KnownHostsFiles((known_hosts,))

    def missing_host_key(self, client, hostname, key):
        check_server_key(hostname, key, self.policy, self.files, self.label)
        transport = client.get_transport()
        if transport is not None:
            transport.synctasks_host_key = (self.policy, self.files)


def _preferring(factory, key_types: list[str]):
    """A transport factory asking for ``key_types`` first (the types
    known_hosts has for the host), as OpenSSH and paramiko do."""
    base = getattr(factory, "synctasks_base", factory)

    def make(sock, *args, **kwargs):
        transport = (base or paramiko.Transport)(sock, *args, **kwargs)
        options = transport.get_security_options()
        offered = list(options.key_types)
        wanted = [a for name in key_types for a in _ALGORITHMS.get(name, (name,)) if a in offered]
        wanted = list(dict.fromkeys(wanted))
        options.key_types = tuple(wanted + [a for a in offered if a not in wanted])
        return transport

    make.synctasks_base = base
    return make


def _policy_args(policy: str | None, known_hosts) -> tuple[str, Path]:
    policy = (policy or "strict").strip().lower()
    if policy not in K.HOST_KEY_POLICIES:
        raise InputError(f"host_key_policy {policy!r}: use one of {', '.join(K.HOST_KEY_POLICIES)}")
    return policy, Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()


def apply_host_key_policy(c, policy: str = "strict", known_hosts: str | os.PathLike | None = None,
                          label: str | None = None):
    """Replace Fabric's AutoAddPolicy with ``policy`` against ``known_hosts``
    (default ~/.ssh/known_hosts) and the files OpenSSH also reads; returns ``c``."""
    policy, known_hosts = _policy_args(policy, known_hosts)
    label = label or c.original_host
    files = known_hosts_files(c, known_hosts)
    c.client.set_missing_host_key_policy(HostKeyPolicy(policy, known_hosts, label, files))
    # Nothing in paramiko's own store: every key reaches check_server_key.
    c.client._system_host_keys = HostKeys()
    c.client._host_keys = HostKeys()
    if policy != "off":
        lookup = lookup_name(c.host, c.port)
        types = list(dict.fromkeys(k.key.get_name() for k in known_keys(files.all, lookup) if k.marker is None))
        kwargs = c.connect_kwargs
        if types:
            kwargs["transport_factory"] = _preferring(kwargs.get("transport_factory"), types)
        elif hasattr(kwargs.get("transport_factory"), "synctasks_base"):
            kwargs["transport_factory"] = kwargs["transport_factory"].synctasks_base
            if kwargs["transport_factory"] is None:
                del kwargs["transport_factory"]
    return c


def verify_host_key(c, policy: str | None = None, known_hosts: str | os.PathLike | None = None, *,
                    label: str | None = None) -> None:
    """Check the host key of connection ``c`` under ``policy`` (strict,
    accept-new or off) against ``known_hosts``, whoever opened ``c``.

    An open connection (e.g. by a task's ``c.run``, which Fabric's
    AutoAddPolicy lets through any key) has its server key checked now:
    HostKeyError if it is unknown (strict) or changed. An unopened one gets
    the policy for when it opens. ``policy=None`` keeps the policy ``c`` was
    given by :func:`apply_host_key_policy` (an inventory's Connection), else
    strict; ``known_hosts=None`` means that policy's file, else
    ~/.ssh/known_hosts. Jump hosts (ProxyJump) are checked too.
    """
    current = getattr(getattr(c, "client", None), "_policy", None)
    if policy is None and isinstance(current, HostKeyPolicy):
        policy, known_hosts = current.policy, known_hosts or current.known_hosts
    policy, known_hosts = _policy_args(policy, known_hosts)
    label = label or c.original_host
    gateway = getattr(c, "gateway", None)
    if gateway is not None and hasattr(gateway, "client"):  # a ProxyJump Connection (its own jump host next)
        verify_host_key(gateway, policy, known_hosts, label=f"{label} via {gateway.original_host}")
    if not c.is_connected:
        apply_host_key_policy(c, policy, known_hosts, label)
        return
    files = known_hosts_files(c, known_hosts)
    transport = c.transport
    if getattr(transport, "synctasks_host_key", None) == (policy, files):
        return  # checked by this very policy when it opened
    check_server_key(lookup_name(c.host, c.port), transport.get_remote_server_key(), policy, files, label)
    transport.synctasks_host_key = (policy, files)
    # And the same policy if it is opened again.
    apply_host_key_policy(c, policy, known_hosts, label)


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

        # sudo's password for the caller's own c.sudo() after a sync (Fabric asks its config).
        sudo_password = host.sudo_password or host.password
        overrides = {"sudo": {"password": sudo_password}} if sudo_password else {}
        config = Config(runtime_ssh_path=str(settings.ssh_config) if settings.ssh_config else None,
                        overrides=overrides)
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
            message = str(exc).removeprefix(f"{exc.host}: ") if exc.host else str(exc)
            log.warning("%s; retry %d of %d in %.1fs", message, attempt, retries, delay)
            time.sleep(delay)


class EarlyConnections:
    """Connections opened before their host's turn, each in a thread of its
    own: a handshake is mostly waiting for the server (sshd forks, loads its
    keys, checks ours), so it overlaps what the process does meanwhile
    (importing the rest of synctasks, walking the local trees). A host's run
    takes its connection, or the error of opening it, with :meth:`take`;
    :meth:`close` closes what no run took."""

    def __init__(self, hosts: list[HostEntry], settings: Settings, lightweight: bool = False):
        self._lock = threading.Lock()
        self._closed = False
        self._runs: dict[str, tuple[threading.Thread, dict]] = {}
        for host in hosts:
            slot: dict = {}
            thread = threading.Thread(target=self._open, args=(host, settings, lightweight, slot),
                                      name=f"connect-{host.name}", daemon=True)
            self._runs[host.name] = (thread, slot)
            thread.start()

    def _open(self, host: HostEntry, settings: Settings, lightweight: bool, slot: dict) -> None:
        try:
            slot["c"] = build_connection(host, settings, lightweight)
            open_connection(slot["c"], host.name)
        except BaseException as exc:
            slot["error"] = exc
        with self._lock:
            slot["done"] = True
            if self._closed and slot.get("c") is not None:  # nobody will take it
                _close_quietly(slot["c"])

    def take(self, name: str) -> tuple | None:
        """(connection or None, exception or None) of ``name``, once its
        opening ended; None if it has no early connection (or it was taken)."""
        with self._lock:
            run = self._runs.pop(name, None)
        if run is None:
            return None
        thread, slot = run
        thread.join()
        return slot.get("c"), slot.get("error")

    def close(self) -> None:
        """Close the connections no run took (without waiting for one still
        opening: its thread closes it when it is done)."""
        with self._lock:
            self._closed = True
            runs, self._runs = list(self._runs.values()), {}
            for _, slot in runs:
                if slot.get("done") and slot.get("c") is not None:
                    _close_quietly(slot["c"])


def connect_early(inventory: Inventory, hosts: list[HostEntry], lightweight: bool = False) -> EarlyConnections:
    """Start opening the connections that
    :func:`synctasks.runner.sync_inventory` uses first (the first
    ``connections`` of ``hosts`` that have mappings); pass the result to it
    as ``early``."""
    mapped = [h for h in hosts if h.name in inventory.mappings]
    return EarlyConnections(mapped[:max(1, inventory.settings.connections)], inventory.settings, lightweight)


#: paramiko's words when it has no password and no key to offer.
NO_AUTH_METHODS = "No authentication methods available"


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
        raise AuthError(f"login refused for user {c.user!r} ({str(exc).rstrip('.')}): check the user, passkey "
                        "or key_filename", host=label) from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        _close_quietly(c)
        reasons = {getattr(e, "strerror", None) or str(e) for e in exc.errors.values()}
        raise ConnectError(f"cannot connect to {c.host}:{c.port}: {', '.join(sorted(reasons))}", host=label) from None
    except (socket.timeout, TimeoutError) as exc:
        _close_quietly(c)
        raise ConnectError(f"timed out connecting to {c.host}:{c.port} ({exc or 'no answer'})", host=label) from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        _close_quietly(c)
        if isinstance(exc, paramiko.SSHException) and str(exc) == NO_AUTH_METHODS:
            # Nothing to log in with: a fault of the inputs, not of the network.
            raise AuthError(
                f"no credentials to log in as {c.user!r}: its connection_info.json entry gives no passkey, "
                "passkey_env or key_filename, and ssh-agent and ~/.ssh offer no key: add one", host=label) from None
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
