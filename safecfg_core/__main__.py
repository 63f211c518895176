"""``python -m safecfg_core``: see :mod:`safecfg_core.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
