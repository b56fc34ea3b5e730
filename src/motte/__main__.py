"""``python -m motte``: the same as the ``motte`` command."""

from motte.cli import main

main()
