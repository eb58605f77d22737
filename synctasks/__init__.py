"""synctasks: push files and folders from one machine to many SSH hosts, as
Fabric tasks, over SCP: incremental, atomic, parallel.

The public names are re-exported here (loaded on first use, so the console
script starts without importing what it does not need); see the README.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "AuthError": "errors", "ConnectError": "errors", "HostKeyError": "errors", "InputError": "errors",
    "RemoteError": "errors", "SyncFailed": "errors", "SyncTasksError": "errors", "UnsafeDestError": "errors",
    "GroupSyncFailed": "errors",
    "HostEntry": "inputs", "Inventory": "inputs", "Mapping": "inputs", "Settings": "inputs",
    "load_inventory": "inputs", "load_settings": "inputs",
    "FileResult": "results", "GroupResult": "results", "HostResult": "results", "MappingResult": "results",
    "check_hosts": "runner", "sync_host": "runner", "sync_inventory": "runner",
    "SyncOptions": "options", "Interrupted": "errors", "UnsupportedError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'synctasks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
