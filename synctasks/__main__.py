"""``python -m synctasks``: the console script."""

from .console import main

main()
