"""``python -m scorekit``: the same as the ``scorekit`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
