"""fab tasks of synctasks: `fab sync`, `fab plan`, `fab validate`, `fab check`, `fab watch`.

Thin on purpose: the work is in the synctasks package.
"""

from pathlib import Path

from synctasks import tasks
from synctasks.tasks import check, plan, sync, validate, watch  # noqa: F401  (the task list)

tasks.DEFAULT_CONFIG[0] = str(Path(__file__).resolve().parent / "config.ini")
