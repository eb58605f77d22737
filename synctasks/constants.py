"""Defaults and fixed names, in one place."""

from __future__ import annotations

#: Every config.ini key with its default, by section. An empty config.ini is
#: valid: whatever it leaves out comes from here.
DEFAULTS: dict[str, dict[str, str]] = {
    "sync": {
        "connections": "4",
        "connection_info": "connection_info.json",
        "hosts_dir": "hosts",
        "protocol": "auto",
        "compare": "size-mtime",
        "retries": "3",
        "connect_timeout": "10",
        "io_timeout": "60",
        "delete": "false",
        "exclude": "",
        "symlinks": "copy",
        "remote_links": "refuse",
        "ssh_config": "",
        "sudo": "false",
        "owner": "",
        "group": "",
        "mode": "",
        "allow_orphan_mapper_files": "false",
    },
    "logging": {
        "info_log": "logs/info.log",
        "error_log": "logs/error.log",
        "level": "DEBUG",
        "max_bytes": "10485760",
        "backups": "5",
    },
    "security": {
        "host_key_policy": "strict",
        "known_hosts": "~/.ssh/known_hosts",
    },
}

PROTOCOLS = ("auto", "scp", "sftp")
COMPARE_MODES = ("size-mtime", "checksum")
HOST_KEY_POLICIES = ("strict", "accept-new", "off")
SYMLINK_MODES = ("copy", "follow", "skip")
#: What to do where the dest has a symlink and src a file or folder.
REMOTE_LINK_MODES = ("refuse", "replace", "skip")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

#: Environment variables that override config.ini: SYNCTASKS_<SECTION>_<KEY>,
#: e.g. SYNCTASKS_SYNC_CONNECTIONS=8. SYNCTASKS_CONFIG picks the file itself.
ENV_PREFIX = "SYNCTASKS_"
CONFIG_ENV = "SYNCTASKS_CONFIG"
DEFAULT_CONFIG_NAME = "config.ini"

DEFAULT_PORT = 22

#: Remote temporary folders start with this; a run's own folders add a token.
#: Anything under a dest with this prefix is a leftover of a cut run.
STAGING_PREFIX = ".synctasks-tmp-"

#: Version of the --json report's shape (see README, "JSON report").
REPORT_VERSION = 1

#: Exit statuses (SPEC.md): in sync, some host failed, bad input.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
