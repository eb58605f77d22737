"""fab tasks of synctasks: `fab sync`, `fab plan`, `fab validate`, `fab check`, `fab watch`,
`fab version`.

Thin on purpose: the work is in the synctasks package. A fabfile of your own
can import the same tasks (`from synctasks.tasks import sync, plan`); their
default config.ini is the one next to that fabfile.
"""

from pathlib import Path

from synctasks import tasks
from synctasks.tasks import check, plan, sync, validate, version, watch  # noqa: F401  (the task list)

tasks.DEFAULT_CONFIG[0] = str(Path(__file__).resolve().parent / "config.ini")
