"""Remote backends: each carries a plan out on one host.

- :mod:`.shell`: one POSIX ``sh`` script per host (``remote.sh``) that lists
  and applies, files travelling as SCP streams (GNU, BusyBox, BSD userlands,
  OpenSSH or Dropbear);
- :mod:`.sftp`: SFTP requests alone, for accounts that run no command.

:mod:`synctasks.transfer` picks one per host (``protocol = auto | scp | sftp``).
"""
