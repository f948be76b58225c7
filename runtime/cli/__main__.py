"""``python -m runtime.cli``: the same as the ``edgecore`` command."""

from runtime.cli.main import main

main()
