"""The scripts under ``experiments/`` are run from the repository root, so the tests import them from there too."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
