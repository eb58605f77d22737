"""``python -m synctasks``: the console script."""

from .cli import console

console()
