"""Loading and validation of the three input files (the seed's initializer).

config.ini, connection_info.json and hosts/<ip>.json are turned into typed,
validated objects here, once; code past this module never sees raw dicts.
Every problem is an :class:`~synctasks.errors.InputError` whose one-line
message names the file (with line and column, or entry number) and the fix.

Configuration layers are merged here, in one fixed order:
defaults < config.ini < environment (SYNCTASKS_<SECTION>_<KEY>) < command line.
"""

from __future__ import annotations

import configparser
import json
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping as TypingMapping

from . import constants as K
from .errors import InputError



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
    """Everything a run needs: settings, hosts and each host's mappings."""

    settings: Settings
    hosts: list[HostEntry]
    mappings: dict[str, list[Mapping]]
    warnings: list[str] = field(default_factory=list)


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
        raise InputError(f"{where}: unknown value '{value}': use one of {', '.join(choices)}")
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

    raw: dict[str, dict[str, str]] = {s: dict(keys) for s, keys in K.DEFAULTS.items()}
    layer: dict[str, str] = {f"{s}.{k}": "default" for s, keys in K.DEFAULTS.items() for k in keys}
    for section in parser.sections():
        if section not in K.DEFAULTS:
            raise InputError(
                f"{path}: unknown section [{section}]: use {', '.join('[' + s + ']' for s in K.DEFAULTS)}"
            )
        for key, value in parser.items(section):
            if key not in K.DEFAULTS[section]:
                known = ", ".join(K.DEFAULTS[section])
                raise InputError(f"{path}: unknown key '{key}' in [{section}]: known keys are {known}")
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

    s, g, sec = raw["sync"], raw["logging"], raw["security"]
    return Settings(
        config_path=path,
        connections=_int(s["connections"], where("sync", "connections"), 1),
        connection_info=local_path("sync", "connection_info"),
        hosts_dir=local_path("sync", "hosts_dir"),
        protocol=_choice(s["protocol"], where("sync", "protocol"), K.PROTOCOLS),
        compare=_choice(s["compare"], where("sync", "compare"), K.COMPARE_MODES),
        retries=_int(s["retries"], where("sync", "retries"), 0),
        connect_timeout=float(_int(s["connect_timeout"], where("sync", "connect_timeout"), 1)),
        io_timeout=float(_int(s["io_timeout"], where("sync", "io_timeout"), 1)),
        delete=_bool(s["delete"], where("sync", "delete")),
        exclude=_patterns(s["exclude"]),
        symlinks=_choice(s["symlinks"], where("sync", "symlinks"), K.SYMLINK_MODES),
        ssh_config=local_path("sync", "ssh_config") if s["ssh_config"].strip() else None,
        sudo=_bool(s["sudo"], where("sync", "sudo")),
        owner=_account(s["owner"], where("sync", "owner")),
        group=_account(s["group"], where("sync", "group")),
        mode=_mode(s["mode"], where("sync", "mode")),
        info_log=local_path("logging", "info_log"),
        error_log=local_path("logging", "error_log"),
        level=_choice(g["level"], where("logging", "level"), K.LOG_LEVELS, upper=True),
        max_bytes=_int(g["max_bytes"], where("logging", "max_bytes"), 0),
        backups=_int(g["backups"], where("logging", "backups"), 0),
        host_key_policy=_choice(sec["host_key_policy"], where("security", "host_key_policy"), K.HOST_KEY_POLICIES),
        known_hosts=local_path("security", "known_hosts"),
        origins=origins,
    )


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
        raise InputError(f"{where}: '{key}' must be a {wanted}, got {type(value).__name__}: fix its value")
    return value


def _warn_unknown(entry: dict, known: tuple[str, ...], where: str, warnings: list[str]) -> None:
    for key in entry:
        if key not in known:
            warnings.append(f"{where}: unknown key '{key}' is ignored (known keys: {', '.join(known)})")


HOST_KEYS = ("ip_address", "user", "passkey", "passkey_env", "port", "key_filename", "sudo_passkey_env")
MAPPING_KEYS = ("src", "dest", "exclude", "sudo", "owner", "group", "mode")


def load_hosts(settings: Settings, warnings: list[str], env: TypingMapping[str, str] | None = None) -> list[HostEntry]:
    env = os.environ if env is None else env
    path = settings.connection_info
    label = _display(path, settings.base_dir)
    example = '{"ip_address": "10.0.0.5", "user": "deploy", "passkey": "..."}'
    entries = _list_of_objects(_read_json(path, label), label, example)
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
        name = _field(entry, "ip_address", str, where, required=True).strip()
        if not name or any(c.isspace() for c in name) or "/" in name:
            raise InputError(f"{where}: ip_address '{name}' is not a host: use an IP, a host name or an ssh_config alias")
        if name in seen:
            raise InputError(f"{where}: duplicate host '{name}' (also entry {seen[name]}): keep one entry per host")
        seen[name] = number
        _warn_unknown(entry, HOST_KEYS, where, warnings)
        port = _field(entry, "port", int, where)
        if port is not None and not 0 < port < 65536:
            raise InputError(f"{where}: port {port} is out of range: use 1-65535")
        password = _field(entry, "passkey", str, where)
        variable = _field(entry, "passkey_env", str, where)
        if variable:
            if variable not in env:
                raise InputError(f"{where}: passkey_env names ${variable}, which is not set: export it before the run")
            password = env[variable]
        sudo_variable = _field(entry, "sudo_passkey_env", str, where)
        sudo_password = None
        if sudo_variable:
            if sudo_variable not in env:
                raise InputError(f"{where}: sudo_passkey_env names ${sudo_variable}, which is not set: "
                                 "export it before the run")
            sudo_password = env[sudo_variable]
        key_filename = _field(entry, "key_filename", str, where)
        if key_filename:
            key_path = Path(key_filename).expanduser()
            if not key_path.is_absolute():
                key_path = settings.base_dir / key_path
            if not key_path.is_file():
                raise InputError(f"{where}: key_filename {key_path} does not exist: fix the path")
            key_filename = str(key_path)
        hosts.append(
            HostEntry(
                name=name,
                user=_field(entry, "user", str, where) or None,
                port=port,
                password=password or None,
                key_filename=key_filename,
                source=where,
                sudo_password=sudo_password or None,
            )
        )
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


def resolve_mapping(entry: dict, where: str, base_dir: Path, warnings: list[str],
                    settings: Settings | None = None) -> Mapping:
    _warn_unknown(entry, MAPPING_KEYS, where, warnings)
    src_text = _field(entry, "src", str, where, required=True)
    dest_text = _field(entry, "dest", str, where, required=True)
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
    dest = check_dest(dest_text, where)
    if dest_text.endswith("/"):
        dest = posixpath.join(dest, src.name)
        if "\n" in src.name:
            raise InputError(f"{where}: src name contains a newline: rename it")
    exclude = _field(entry, "exclude", list, where) or []
    if not all(isinstance(p, str) for p in exclude):
        raise InputError(f"{where}: 'exclude' must be a list of strings (gitignore-style patterns)")
    sudo = entry.get("sudo")
    if sudo is not None and not isinstance(sudo, bool):
        raise InputError(f"{where}: 'sudo' must be true or false, got {type(sudo).__name__}")
    return Mapping(
        src=src, dest=dest, is_dir=stat.S_ISDIR(info.st_mode), exclude=tuple(exclude), source=where,
        sudo=sudo if sudo is not None else bool(settings and settings.sudo),
        owner=_account(entry["owner"], f"{where}: owner") if "owner" in entry else (settings.owner if settings else None),
        group=_account(entry["group"], f"{where}: group") if "group" in entry else (settings.group if settings else None),
        mode=_mode(entry["mode"], f"{where}: mode") if "mode" in entry else (settings.mode if settings else None),
    )


def load_mappings(path: Path, settings: Settings, warnings: list[str]) -> list[Mapping]:
    label = _display(path, settings.base_dir)
    example = '{"src": "site/", "dest": "/var/www/site"}'
    entries = _list_of_objects(_read_json(path, label), label, example)
    mappings: list[Mapping] = []
    dests: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        where = f"{label} entry {number}"
        mapping = resolve_mapping(entry, where, settings.base_dir, warnings, settings)
        if mapping.dest in dests:
            raise InputError(
                f"{where}: dest {mapping.dest} is also the dest of entry {dests[mapping.dest]}: "
                "give each mapping its own dest"
            )
        dests[mapping.dest] = number
        mappings.append(mapping)
    for inner in dests:
        parts = inner.split("/")
        for cut in range(1, len(parts)):
            outer = "/".join(parts[:cut]) or "/"
            if outer in dests:
                raise InputError(
                    f"{label} entry {dests[inner]}: dest {inner} is inside the dest of entry {dests[outer]} "
                    f"({outer}): put it in that entry's src instead, or pick separate dests"
                )
    return mappings


def load_inventory(
    config_path: str | os.PathLike | None = None,
    overrides: TypingMapping[str, Any] | None = None,
    env: TypingMapping[str, str] | None = None,
    settings: Settings | None = None,
) -> Inventory:
    """Load and validate all three inputs; raise InputError on the first problem."""
    settings = settings or load_settings(config_path, overrides, env)
    warnings: list[str] = []
    hosts = load_hosts(settings, warnings, env)
    hosts_dir = settings.hosts_dir
    if not hosts_dir.is_dir():
        raise InputError(f"{hosts_dir}: hosts folder not found: create it with one <ip_address>.json per host")
    mapper_files = {p.name[: -len(".json")]: p for p in sorted(hosts_dir.glob("*.json"))}
    mappings: dict[str, list[Mapping]] = {}
    names = {h.name for h in hosts}
    for host in hosts:
        path = mapper_files.get(host.name)
        if path is None:
            label = _display(hosts_dir / f"{host.name}.json", settings.base_dir)
            warnings.append(f"{label}: no mapper file for host {host.name} ({host.source}): host skipped")
            continue
        mappings[host.name] = load_mappings(path, settings, warnings)
    for name, path in mapper_files.items():
        if name not in names:
            label = _display(path, settings.base_dir)
            warnings.append(
                f"{label}: no host '{name}' in {_display(settings.connection_info, settings.base_dir)}: file ignored"
            )
    return Inventory(settings=settings, hosts=hosts, mappings=mappings, warnings=warnings)
