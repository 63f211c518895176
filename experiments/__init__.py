"""The lab beside the pack: research diagnostics and the demo world's training script.

Not part of the installed package (the wheel holds ``safecfg_core`` only) and never imported by it. Run each script
from the repository root, e.g. ``python -m experiments.sigma_windows``; experiments/README.md says what each is for.
"""
