"""synctasks: push files and folders from one machine to many SSH hosts, as
Fabric tasks, over SCP: incremental, atomic, parallel.

The public names are re-exported here; see the README for the API.
"""

from .errors import (AuthError, ConnectError, HostKeyError, InputError, RemoteError, SyncFailed, SyncTasksError,
                     UnsafeDestError)
from .inputs import HostEntry, Inventory, Mapping, Settings, load_inventory, load_settings
from .results import FileResult, GroupResult, HostResult, MappingResult
from .runner import check_hosts, sync_host, sync_inventory
from .transfer import SyncOptions

__version__ = "0.1.0"

__all__ = [
    "AuthError", "ConnectError", "FileResult", "GroupResult", "HostEntry", "HostKeyError", "HostResult",
    "InputError", "Inventory", "Mapping", "MappingResult", "RemoteError", "Settings", "SyncFailed",
    "SyncOptions", "SyncTasksError", "UnsafeDestError", "check_hosts", "load_inventory", "load_settings",
    "sync_host", "sync_inventory",
]
