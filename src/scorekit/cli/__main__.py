"""``python -m scorekit.cli``: the same as the ``scorekit`` command."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
