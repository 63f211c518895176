"""``python -m safecfg_core.bench``: the same as ``python -m safecfg_core bench``."""
import sys

from .cli import main

sys.exit(main())
