"""Loading and validation of the three input files (the seed's initializer).

config.ini, connection_info.json and hosts/<ip>.json are turned into typed,
validated objects here, once; code past this module never sees raw dicts.
Every problem is one line naming the file (with line and column, or entry
number) and the fix. A file is checked to the end: every problem found is
reported at once, one line each, in one :class:`~synctasks.errors.InputError`
(its ``problems`` attribute lists them). An unknown key gets the closest known
one as a suggestion; a key close to a known one is an error, not a warning
(a misspelled ``"password"`` would otherwise mean "no password").

Configuration layers are merged here, in one fixed order:
defaults < config.ini < environment (SYNCTASKS_<SECTION>_<KEY>) < command line.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping as TypingMapping

from . import constants as K
from .errors import InputError


# --------------------------------------------------------------------------
# Problems: every one of them, in one run
# --------------------------------------------------------------------------
def input_error(problems: Iterable[str]) -> InputError:
    """One InputError for several problems: its message holds one per line."""
    lines = [line for problem in problems for line in str(problem).splitlines() if line]
    error = InputError("\n".join(lines))
    #: Each problem, one line each (the message joins them with newlines).
    error.problems = lines
    return error


def problems_of(error: InputError) -> list[str]:
    """The problems an InputError stands for, one line each."""
    return list(getattr(error, "problems", None) or str(error).splitlines())


class Problems:
    """Collects the problems of the input files instead of stopping at the first."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def guard(self, check: Callable, *args, default=None, **kwargs):
        """``check(*args, **kwargs)``, or ``default`` with its problems recorded."""
        try:
            return check(*args, **kwargs)
        except InputError as exc:
            self.lines.extend(problems_of(exc))
            return default

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self) -> None:
        if self.lines:
            raise input_error(self.lines)


def _close_matches(word: str, choices) -> list[str]:
    """The choice closest to ``word`` (a typo's fix), if one is close."""
    import difflib  # only on bad input: not imported by every run

    return difflib.get_close_matches(word, choices, n=1, cutoff=0.6)


#: Names people give these keys, by the key they meant (difflib finds typos).
KEY_ALIASES = {
    "password": "passkey", "passwd": "passkey", "pass": "passkey", "pwd": "passkey", "secret": "passkey",
    "passphrase": "passkey", "password_env": "passkey_env", "passwd_env": "passkey_env",
    "host": "ip_address", "hostname": "ip_address", "ip": "ip_address", "address": "ip_address",
    "ip_addr": "ip_address", "username": "user", "login": "user", "key": "key_filename",
    "keyfile": "key_filename", "key_file": "key_filename", "identityfile": "key_filename",
    "identity_file": "key_filename", "private_key": "key_filename", "ssh_key": "key_filename",
    "source": "src", "destination": "dest", "target": "dest", "excludes": "exclude",
    "sudo_password_env": "sudo_passkey_env", "chmod": "mode", "chown": "owner",
}


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known key ``word`` most likely stands for (a typo or a synonym), if any."""
    known = list(known)
    lowered = word.strip().lower().replace("-", "_")
    if lowered in known:  # a case or dash slip
        return lowered
    aliases = [a for a, meant in KEY_ALIASES.items() if meant in known]
    matches = _close_matches(lowered, known + aliases)
    if not matches:
        return None
    return KEY_ALIASES.get(matches[0], matches[0])



# --------------------------------------------------------------------------
# Typed records
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """config.ini after merging every layer; paths are absolute."""

    config_path: Path
    connections: int
    connection_info: Path
    hosts_dir: Path
    protocol: str
    compare: str
    retries: int
    connect_timeout: float
    io_timeout: float
    delete: bool
    exclude: tuple[str, ...]
    symlinks: str
    remote_links: str
    sudo: bool
    owner: str | None
    group: str | None
    mode: int | None
    ssh_config: Path | None  #: None: Fabric's defaults (/etc/ssh/ssh_config, ~/.ssh/config)
    info_log: Path
    error_log: Path
    level: str
    max_bytes: int
    backups: int
    host_key_policy: str
    known_hosts: Path
    #: A mapper file named for no host in connection_info.json is ignored with
    #: a warning instead of being an input error ([sync] allow_orphan_mapper_files).
    allow_orphan_mapper_files: bool = False
    #: "section.key = value (from layer)" per key, logged once logging is up.
    origins: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def base_dir(self) -> Path:
        """The folder holding config.ini: relative paths resolve against it."""
        return self.config_path.parent


@dataclass(frozen=True)
class HostEntry:
    """One connection_info.json entry."""

    name: str  #: ip_address as written: an IP, a host name or an ssh_config alias
    user: str | None = None
    port: int | None = None
    password: str | None = field(default=None, repr=False)
    key_filename: str | None = None
    source: str = ""  #: "connection_info.json entry 3", for messages
    #: sudo's password when it is not the login password (sudo_passkey_env)
    sudo_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Mapping:
    """One ``{"src": ..., "dest": ...}`` entry of a mapper file, resolved."""

    src: Path  #: absolute local path
    dest: str  #: the remote path ``src`` becomes (trailing-slash rule applied)
    is_dir: bool
    exclude: tuple[str, ...] = ()
    source: str = ""  #: "hosts/1.2.3.4.json entry 2", for messages
    sudo: bool = False  #: write as root (sudo), e.g. where the login user cannot
    owner: str | None = None  #: chown what is sent
    group: str | None = None  #: chgrp what is sent
    mode: int | None = None  #: file mode of what is sent (instead of the local one)


@dataclass
class Inventory:
    """Everything a run needs: settings, hosts and each host's mappings.

    It also hands out Fabric Connections to its hosts, with the host-key
    policy of config.ini already applied and sudo's password set, so a task
    can sync and then run commands over the same connection::

        inventory = load_inventory("config.ini")
        c = inventory.connection("10.0.0.5")
        sync_host(c, inventory.mappings["10.0.0.5"])
        c.sudo("systemctl reload nginx")
    """

    settings: Settings
    hosts: list[HostEntry]
    mappings: dict[str, list[Mapping]]
    warnings: list[str] = field(default_factory=list)
    #: Hosts of connection_info.json with no mapper file: not synced, listed
    #: as "no mapping" in the summary.
    unmapped: list[str] = field(default_factory=list)

    def host(self, name: str) -> HostEntry:
        """The connection_info.json entry of ``name``; InputError if there is none."""
        for entry in self.hosts:
            if entry.name == name:
                return entry
        names = [h.name for h in self.hosts]
        guess = _close_matches(name, names)
        hint = f"did you mean {guess[0]}? " if guess else ""
        raise InputError(f"{name}: no such host in {self.settings.connection_info.name}: {hint}"
                         f"pick from {', '.join(names)}")

    def connection(self, name: str):
        """A Fabric Connection to host ``name`` (not yet open), verifying host
        keys by ``[security]`` whoever opens it (``c.run`` included)."""
        from .connection import build_connection

        return build_connection(self.host(name), self.settings)

    def group(self, only: str | Iterable[str] | None = None):
        """A Fabric ThreadingGroup of the hosts (all, or those ``only`` names:
        names or shell patterns), each Connection as :meth:`connection` gives."""
        from fabric import ThreadingGroup

        return ThreadingGroup.from_connections([self.connection(h.name) for h in select_hosts(self.hosts, only)])


# --------------------------------------------------------------------------
# Choosing hosts: --only, --shard
# --------------------------------------------------------------------------
def select_hosts(hosts: list[HostEntry], only: str | Iterable[str] | None, flag: str = "--only"
                 ) -> list[HostEntry]:
    """Hosts named by ``only`` (names, IPs or shell-style patterns); ``flag``
    names what the user typed, for the message."""
    if not only:
        return hosts
    patterns = [p.strip() for p in (only.split(",") if isinstance(only, str) else only) if p.strip()]
    chosen = [h for h in hosts if any(fnmatch(h.name, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch(h.name, p) for h in hosts)]
    if unknown:
        raise InputError(f"{flag} {', '.join(unknown)}: no such host in connection_info.json: "
                         f"pick from {', '.join(h.name for h in hosts)}")
    return chosen


def parse_shard(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N), 1 <= K <= N."""
    k, sep, n = str(text).partition("/")
    try:
        shard, count = int(k), int(n)
    except ValueError:
        shard = count = 0
    if not sep or count < 1 or not 1 <= shard <= count:
        raise InputError(f"--shard {text}: expected K/N with 1 <= K <= N, e.g. --shard 2/4")
    return shard, count


def in_shard(name: str, shard: int, count: int) -> bool:
    """Whether host ``name`` belongs to shard ``shard`` of ``count``: by a
    hash of the name alone, so a host's shard never moves when others are
    added or removed."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count == shard - 1


def shard_hosts(hosts: list[HostEntry], shard: str | tuple[int, int] | None) -> list[HostEntry]:
    if not shard:
        return hosts
    k, n = parse_shard(shard) if isinstance(shard, str) else shard
    return [h for h in hosts if in_shard(h.name, k, n)]


# --------------------------------------------------------------------------
# config.ini
# --------------------------------------------------------------------------
def find_config(path: str | os.PathLike | None = None, env: TypingMapping[str, str] | None = None) -> Path:
    """CLI path > $SYNCTASKS_CONFIG > ./config.ini."""
    env = os.environ if env is None else env
    chosen = path or env.get(K.CONFIG_ENV) or K.DEFAULT_CONFIG_NAME
    return Path(chosen).expanduser().absolute()


def _bool(value: str, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{where}: '{value}' is not a boolean: use true or false")


def _int(value: str, where: str, minimum: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise InputError(f"{where}: '{value}' is not a whole number: use e.g. {minimum}") from None
    if number < minimum:
        raise InputError(f"{where}: {number} is too small: use {minimum} or more")
    return number


def _choice(value: str, where: str, choices: tuple[str, ...], upper: bool = False) -> str:
    value = value.strip().upper() if upper else value.strip().lower()
    if value not in choices:
        guess = _close_matches(value, choices)
        hint = f"did you mean {guess[0]}? " if guess else ""
        raise InputError(f"{where}: unknown value '{value}': {hint}use one of {', '.join(choices)}")
    return value


ACCOUNT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _account(value, where: str) -> str | None:
    """A user or group name (or number) for chown, or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not ACCOUNT.match(text):
        raise InputError(f"{where}: '{value}' is not a user or group name: use letters, digits, _ . -")
    return text


def _mode(value, where: str) -> int | None:
    """An octal file mode ("0640", "640" or 640), or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"0?[0-7]{3,4}", text) or int(text, 8) > 0o7777:
        raise InputError(f"{where}: mode '{value}' is not an octal file mode: use e.g. \"0640\"")
    return int(text, 8)


def _patterns(value: str) -> tuple[str, ...]:
    parts = [p.strip() for line in value.splitlines() for p in line.split(",")]
    return tuple(p for p in parts if p)


def load_settings(
    config_path: str | os.PathLike | None = None,
    overrides: TypingMapping[str, Any] | None = None,
    env: TypingMapping[str, str] | None = None,
) -> Settings:
    """Read config.ini and merge every layer into :class:`Settings`.

    ``overrides`` holds command-line values as ``{"sync.connections": 8}``;
    ``None`` values are ignored (the flag was not given).
    """
    env = os.environ if env is None else env
    path = find_config(config_path, env)
    if not path.is_file():
        raise InputError(
            f"{path}: config.ini not found: create it (an empty file uses every default) "
            f"or point --config / {K.CONFIG_ENV} at it"
        )
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read config.ini ({exc}): check its permissions and encoding") from exc
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"{path}: malformed config.ini ({first}): fix the syntax") from exc

    problems = Problems()
    raw: dict[str, dict[str, str]] = {s: dict(keys) for s, keys in K.DEFAULTS.items()}
    layer: dict[str, str] = {f"{s}.{k}": "default" for s, keys in K.DEFAULTS.items() for k in keys}
    for section in parser.sections():
        if section not in K.DEFAULTS:
            guess = closest(section, K.DEFAULTS)
            hint = f"did you mean [{guess}]? " if guess else ""
            problems.add(f"{path}: unknown section [{section}]: {hint}"
                          f"use {', '.join('[' + s + ']' for s in K.DEFAULTS)}")
            continue
        for key, value in parser.items(section):
            if key not in K.DEFAULTS[section]:
                guess = closest(key, K.DEFAULTS[section])
                hint = f"did you mean '{guess}'? " if guess else ""
                problems.add(f"{path}: unknown key '{key}' in [{section}]: {hint}"
                             f"known keys are {', '.join(K.DEFAULTS[section])}")
                continue
            raw[section][key] = value
            layer[f"{section}.{key}"] = "file"
    for section, keys in K.DEFAULTS.items():
        for key in keys:
            name = f"{K.ENV_PREFIX}{section}_{key}".upper()
            if name in env:
                raw[section][key] = env[name]
                layer[f"{section}.{key}"] = f"env {name}"
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        raw[section][key] = str(value)
        layer[dotted] = "command line"
    origins = tuple(f"{d} = {raw[d.split('.')[0]][d.split('.')[1]]!r} (from {o})" for d, o in sorted(layer.items()))

    def where(section: str, key: str) -> str:
        origin = layer[f"{section}.{key}"]
        if origin == "file":
            return f"{path}: [{section}] {key}"
        return f"{path}: [{section}] {key} (from {origin})"

    def local_path(section: str, key: str) -> Path:
        value = raw[section][key].strip()
        if not value:
            raise InputError(f"{where(section, key)}: empty path: give a file name")
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else path.parent / candidate

    def value(convert: Callable, section: str, key: str, *args):
        """``key`` converted, or None with the problem recorded."""
        if convert is local_path:
            return problems.guard(local_path, section, key)
        return problems.guard(convert, raw[section][key], where(section, key), *args)

    s, g, sec = "sync", "logging", "security"
    values = dict(
        config_path=path,
        connections=value(_int, s, "connections", 1),
        connection_info=value(local_path, s, "connection_info"),
        hosts_dir=value(local_path, s, "hosts_dir"),
        protocol=value(_choice, s, "protocol", K.PROTOCOLS),
        compare=value(_choice, s, "compare", K.COMPARE_MODES),
        retries=value(_int, s, "retries", 0),
        connect_timeout=value(_int, s, "connect_timeout", 1),
        io_timeout=value(_int, s, "io_timeout", 1),
        delete=value(_bool, s, "delete"),
        exclude=_patterns(raw[s]["exclude"]),
        symlinks=value(_choice, s, "symlinks", K.SYMLINK_MODES),
        remote_links=value(_choice, s, "remote_links", K.REMOTE_LINK_MODES),
        ssh_config=value(local_path, s, "ssh_config") if raw[s]["ssh_config"].strip() else None,
        sudo=value(_bool, s, "sudo"),
        owner=value(_account, s, "owner"),
        group=value(_account, s, "group"),
        mode=value(_mode, s, "mode"),
        allow_orphan_mapper_files=value(_bool, s, "allow_orphan_mapper_files"),
        info_log=value(local_path, g, "info_log"),
        error_log=value(local_path, g, "error_log"),
        level=value(_choice, g, "level", K.LOG_LEVELS, True),
        max_bytes=value(_int, g, "max_bytes", 0),
        backups=value(_int, g, "backups", 0),
        host_key_policy=value(_choice, sec, "host_key_policy", K.HOST_KEY_POLICIES),
        known_hosts=value(local_path, sec, "known_hosts"),
        origins=origins,
    )
    problems.raise_if_any()
    values["connect_timeout"] = float(values["connect_timeout"])
    values["io_timeout"] = float(values["io_timeout"])
    return Settings(**values)


# --------------------------------------------------------------------------
# JSON files
# --------------------------------------------------------------------------
def _display(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _read_json(path: Path, label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{label}: file not found: create it (see the README for its format)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{label}: cannot read it ({exc}): check its permissions and encoding") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg}): fix the syntax there") from None


def _list_of_objects(data: Any, label: str, example: str) -> list[dict]:
    if not isinstance(data, list):
        raise InputError(f"{label}: expected a JSON list of objects like {example}, got {type(data).__name__}")
    if not data:
        raise InputError(f"{label}: the list is empty: add at least one entry like {example}")
    for number, entry in enumerate(data, 1):
        if not isinstance(entry, dict):
            raise InputError(f"{label}: entry {number} is a {type(entry).__name__}, expected an object like {example}")
    return data


def _field(entry: dict, key: str, kind: type | tuple, where: str, required: bool = False):
    if key not in entry or entry[key] is None:
        if required:
            raise InputError(f"{where}: missing key '{key}': add it")
        return None
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        wanted = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        wanted = {"str": "string", "int": "number", "list": "list"}.get(wanted, wanted)
        raise InputError(f"{where}: '{key}' must be a {wanted}, got {type(value).__name__}: fix its value")
    return value


def _check_keys(entry: dict, known: tuple[str, ...], where: str, warnings: list[str], problems: Problems) -> None:
    """An unknown key close to a known one is a typo: an error naming the key
    meant. Any other unknown key is ignored with a warning."""
    absent = tuple(k for k in known if k not in entry)  # a typo stands for a key the entry lacks
    for key in entry:
        if key in known:
            continue
        guess = closest(str(key), absent)
        if guess:
            problems.add(f"{where}: unknown key '{key}': did you mean '{guess}'? rename it")
        else:
            warnings.append(f"{where}: unknown key '{key}' is ignored (known keys: {', '.join(known)})")


def _port(entry: dict, where: str) -> int | None:
    """``"port": 2222`` or ``"port": "2222"`` (a number in a string)."""
    value = entry.get("port")
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: port {json.dumps(value)} is not a number: write it as \"port\": 2222")
    if not 0 < value < 65536:
        raise InputError(f"{where}: port {value} is out of range: use 1-65535")
    return value


HOST_KEYS = ("ip_address", "user", "passkey", "passkey_env", "port", "key_filename", "sudo_passkey_env")
MAPPING_KEYS = ("src", "dest", "exclude", "sudo", "owner", "group", "mode")


def load_hosts(settings: Settings, warnings: list[str], env: TypingMapping[str, str] | None = None,
               problems: Problems | None = None, names: list[str] | None = None) -> list[HostEntry]:
    """connection_info.json's entries. Every problem of the file is recorded
    in ``problems``; without one, they are raised together. ``names`` gets
    the host name of every entry that has a sound one (whatever else is
    wrong with it), or None appended when the file or an entry has none."""
    env = os.environ if env is None else env
    own = problems is None
    problems = Problems() if own else problems
    path = settings.connection_info
    label = _display(path, settings.base_dir)
    example = '{"ip_address": "10.0.0.5", "user": "deploy", "passkey": "..."}'
    entries = problems.guard(lambda: _list_of_objects(_read_json(path, label), label, example))
    if entries is None:
        entries = []
        if names is not None:
            names.append(None)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(f"{label}: other users can read it (it says how to log in to every host): "
                            f"run chmod 600 {path}")
    except OSError:
        pass
    hosts: list[HostEntry] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        where = f"{label} entry {number}"
        before = len(problems.lines)
        _check_keys(entry, HOST_KEYS, where, warnings, problems)
        name = problems.guard(_field, entry, "ip_address", str, where, required=True)
        if name is not None:
            name = name.strip()
            if not name or any(c.isspace() for c in name) or "/" in name:
                problems.add(f"{where}: ip_address '{name}' is not a host: "
                             "use an IP, a host name or an ssh_config alias")
            elif name in seen:
                problems.add(f"{where}: duplicate host '{name}' (also entry {seen[name]}): keep one entry per host")
            else:
                seen[name] = number
        if names is not None:
            names.append(name if name and name in seen else None)
        port = problems.guard(_port, entry, where)
        user = problems.guard(_field, entry, "user", str, where)
        password = problems.guard(_field, entry, "passkey", str, where)
        variable = problems.guard(_field, entry, "passkey_env", str, where)
        if variable:
            if variable not in env:
                problems.add(f"{where}: passkey_env names ${variable}, which is not set: export it before the run")
            else:
                password = env[variable]
        sudo_variable = problems.guard(_field, entry, "sudo_passkey_env", str, where)
        sudo_password = None
        if sudo_variable:
            if sudo_variable not in env:
                problems.add(f"{where}: sudo_passkey_env names ${sudo_variable}, which is not set: "
                             "export it before the run")
            else:
                sudo_password = env[sudo_variable]
        key_filename = problems.guard(_field, entry, "key_filename", str, where)
        if key_filename:
            key_path = Path(key_filename).expanduser()
            if not key_path.is_absolute():
                key_path = settings.base_dir / key_path
            if not key_path.is_file():
                problems.add(f"{where}: key_filename {key_path} does not exist: fix the path")
            key_filename = str(key_path)
        if len(problems.lines) > before:
            continue
        hosts.append(
            HostEntry(
                name=name,
                user=user or None,
                port=port,
                password=password or None,
                key_filename=key_filename,
                source=where,
                sudo_password=sudo_password or None,
            )
        )
    if own:
        problems.raise_if_any()
    return hosts


def check_dest(dest: str, where: str) -> str:
    """Validate a remote path; return it normalised (no // and no trailing /)."""
    if "\x00" in dest or "\n" in dest or "\r" in dest:
        raise InputError(f"{where}: dest contains a NUL or newline character: remove it")
    if not dest.startswith("/"):
        raise InputError(f"{where}: dest '{dest}' is relative: give an absolute remote path starting with /")
    parts = [p for p in dest.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InputError(f"{where}: dest '{dest}' contains '.' or '..': write the path without them")
    return "/" + "/".join(parts)


def _src(src_text: str, where: str, base_dir: Path) -> tuple[Path, os.stat_result]:
    if not src_text or "\x00" in src_text:
        raise InputError(f"{where}: src is empty or contains NUL: name a local file or folder")
    src = Path(src_text).expanduser()
    if not src.is_absolute():
        src = base_dir / src
    src = Path(os.path.normpath(src))
    try:
        info = src.stat()
    except FileNotFoundError:
        raise InputError(f"{where}: src {src} does not exist: fix the path or create it") from None
    except OSError as exc:
        raise InputError(f"{where}: src {src} cannot be read ({exc.strerror}): fix its permissions") from None
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        raise InputError(f"{where}: src {src} is neither a file nor a folder: map a file or folder")
    if not os.access(src, os.R_OK | (os.X_OK if stat.S_ISDIR(info.st_mode) else 0)):
        raise InputError(f"{where}: src {src} is not readable: fix its permissions")
    return src, info


def _exclude(entry: dict, where: str) -> tuple[str, ...]:
    exclude = _field(entry, "exclude", list, where) or []
    if not all(isinstance(p, str) for p in exclude):
        raise InputError(f"{where}: 'exclude' must be a list of strings (gitignore-style patterns)")
    return tuple(exclude)


def _sudo(entry: dict, where: str) -> bool | None:
    sudo = entry.get("sudo")
    if sudo is not None and not isinstance(sudo, bool):
        raise InputError(f"{where}: 'sudo' must be true or false, got {type(sudo).__name__}")
    return sudo


def _resolve(entry: dict, where: str, base_dir: Path, warnings: list[str], settings: Settings | None,
             problems: Problems) -> tuple[Mapping | None, str | None]:
    """One mapper entry, every problem of it recorded: (the Mapping or None if
    it has a problem, its dest if that much is sound)."""
    before = len(problems.lines)
    _check_keys(entry, MAPPING_KEYS, where, warnings, problems)
    src_text = problems.guard(_field, entry, "src", str, where, required=True)
    dest_text = problems.guard(_field, entry, "dest", str, where, required=True)
    src, info = problems.guard(_src, src_text, where, base_dir, default=(None, None)) if src_text is not None \
        else (None, None)
    dest = problems.guard(check_dest, dest_text, where) if dest_text is not None else None
    if dest is not None and src is not None and dest_text.endswith("/"):
        dest = posixpath.join(dest, src.name)
        if "\n" in src.name:
            problems.add(f"{where}: src name contains a newline: rename it")
    exclude = problems.guard(_exclude, entry, where, default=())
    sudo = problems.guard(_sudo, entry, where)
    owner = problems.guard(_account, entry["owner"], f"{where}: owner") if "owner" in entry else (
        settings.owner if settings else None)
    group = problems.guard(_account, entry["group"], f"{where}: group") if "group" in entry else (
        settings.group if settings else None)
    mode = problems.guard(_mode, entry["mode"], f"{where}: mode") if "mode" in entry else (
        settings.mode if settings else None)
    if len(problems.lines) > before:
        return None, dest
    return Mapping(
        src=src, dest=dest, is_dir=stat.S_ISDIR(info.st_mode), exclude=exclude, source=where,
        sudo=sudo if sudo is not None else bool(settings and settings.sudo),
        owner=owner, group=group, mode=mode,
    ), dest


def resolve_mapping(entry: dict, where: str, base_dir: Path, warnings: list[str],
                    settings: Settings | None = None) -> Mapping:
    """One ``{"src", "dest", ...}`` entry as a Mapping; InputError listing
    every problem of the entry."""
    problems = Problems()
    mapping, _ = _resolve(entry, where, base_dir, warnings, settings, problems)
    problems.raise_if_any()
    return mapping


def _dest_problems(mappings: list) -> list[str]:
    """Duplicate and nested dests among ``mappings``, one line each."""

    def name(mapping: Mapping, number: int) -> str:
        return mapping.source or f"mapping {number}"

    def ref(other: str, this: str) -> str:
        # "entry 1" when both are entries of the same file, the full name otherwise.
        head, _, tail = other.rpartition(" entry ")
        return f"entry {tail}" if head and this.startswith(head + " entry ") else other

    lines: list[str] = []
    first: dict[str, str] = {}
    for number, mapping in enumerate(mappings, 1):
        this = name(mapping, number)
        if mapping.dest in first:
            lines.append(f"{this}: dest {mapping.dest} is also the dest of {ref(first[mapping.dest], this)}: "
                         "give each mapping its own dest")
        else:
            first[mapping.dest] = this
    for inner, this in first.items():
        parts = inner.split("/")
        for cut in range(1, len(parts)):
            outer = "/".join(parts[:cut]) or "/"
            if outer in first:
                lines.append(f"{this}: dest {inner} is inside the dest of {ref(first[outer], this)} ({outer}): "
                             "put it in that entry's src instead, or pick separate dests")
                break
    return lines


def check_mapping_dests(mappings: Iterable[Mapping], source: str | None = None) -> None:
    """Refuse duplicate and nested dests among one host's ``mappings``, as the
    mapper files are refused (InputError, one line per problem). ``source``
    names where the mappings came from when they carry no ``source`` of their
    own (e.g. "sync_host mappings")."""
    mappings = list(mappings)
    if source:
        mappings = [m if m.source else _with_source(m, f"{source} {n}") for n, m in enumerate(mappings, 1)]
    lines = _dest_problems(mappings)
    if lines:
        raise input_error(lines)


@dataclass(frozen=True)
class _Dest:
    dest: str
    source: str


def _with_source(mapping: Mapping, source: str) -> Mapping:
    from dataclasses import replace

    return replace(mapping, source=source)


def load_mappings(path: Path, settings: Settings, warnings: list[str], problems: Problems | None = None
                  ) -> list[Mapping]:
    """A mapper file's mappings. Every problem of the file is recorded in
    ``problems``; without one, they are raised together."""
    own = problems is None
    problems = Problems() if own else problems
    label = _display(path, settings.base_dir)
    example = '{"src": "site/", "dest": "/var/www/site"}'
    entries = problems.guard(lambda: _list_of_objects(_read_json(path, label), label, example), default=[])
    mappings: list[Mapping] = []
    dests: list[_Dest] = []  # of every entry whose dest is sound, whatever else is wrong with it
    for number, entry in enumerate(entries, 1):
        where = f"{label} entry {number}"
        mapping, dest = _resolve(entry, where, settings.base_dir, warnings, settings, problems)
        if mapping is not None:
            mappings.append(mapping)
        if dest is not None:
            dests.append(_Dest(dest, where))
    for line in _dest_problems(dests):
        problems.add(line)
    if own:
        problems.raise_if_any()
    return mappings


def load_inventory(
    config_path: str | os.PathLike | None = None,
    overrides: TypingMapping[str, Any] | None = None,
    env: TypingMapping[str, str] | None = None,
    settings: Settings | None = None,
) -> Inventory:
    """Load and validate all three inputs; raise one InputError listing every
    problem found in them (config.ini's first: the others depend on it)."""
    settings = settings or load_settings(config_path, overrides, env)
    warnings: list[str] = []
    problems = Problems()
    named: list[str | None] = []
    hosts = load_hosts(settings, warnings, env, problems, named)
    # Which mapper file has no host can only be told when every entry has a name.
    names_sound = None not in named
    names = list(dict.fromkeys(n for n in named if n))
    hosts_dir = settings.hosts_dir
    if not hosts_dir.is_dir():
        problems.add(f"{hosts_dir}: hosts folder not found: create it with one <ip_address>.json per host")
        problems.raise_if_any()
    mapper_files = {p.name[: -len(".json")]: p for p in sorted(hosts_dir.glob("*.json"))}
    mappings: dict[str, list[Mapping]] = {}
    unmapped: list[str] = []
    sound = {h.name for h in hosts}
    for host in hosts:
        if host.name not in mapper_files:
            unmapped.append(host.name)
            label = _display(hosts_dir / f"{host.name}.json", settings.base_dir)
            warnings.append(f"{label}: no mapper file for host {host.name} ({host.source}): host skipped")
    for name in names:
        # Also the mapper files of entries with problems: every problem in one run.
        if name in mapper_files:
            loaded = load_mappings(mapper_files[name], settings, warnings, problems)
            if name in sound:
                mappings[name] = loaded
    info = _display(settings.connection_info, settings.base_dir)
    for name, path in mapper_files.items():
        if name in names or not names_sound:
            continue
        label = _display(path, settings.base_dir)
        if settings.allow_orphan_mapper_files:
            warnings.append(f"{label}: no host '{name}' in {info}: file ignored "
                            "([sync] allow_orphan_mapper_files = true)")
            continue
        guess = _close_matches(name, [n for n in names if n not in mapper_files])
        hint = f"did you mean {guess[0]}.json? " if guess else ""
        problems.add(f"{label}: no host '{name}' in {info}: {hint}rename the file or add the host "
                     "(or set [sync] allow_orphan_mapper_files = true to ignore such files)")
    problems.raise_if_any()
    return Inventory(settings=settings, hosts=hosts, mappings=mappings, warnings=warnings, unmapped=unmapped)
