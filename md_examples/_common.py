"""What every example shares: choosing the potential. Each example defaults to the shipped
potential for its system; ``--model`` takes a potential file, another shipped name, or
``untrained`` (random weights, to try a workflow only)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2former_calc import E2FormerCalculator  # noqa: E402


def arguments(description, steps):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=None, help="potential file, shipped name or 'untrained' (default: the shipped "
                        "potential for the example's system)")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    return parser.parse_args()


def load(args, default="e2former-xtb-organic", species=("H", "C", "N", "O", "Cu"), **kwargs):
    """The calculator ``--model`` names, else the shipped potential ``default``."""
    model = args.model or default
    if model == "untrained":
        print("NOTE: untrained model with random weights - the numbers show the workflow, not physics")
        return E2FormerCalculator.from_config("small", species=species, dtype=args.dtype, **kwargs)
    if Path(model).is_file():
        return E2FormerCalculator.from_file(model, dtype=args.dtype, **kwargs)
    return E2FormerCalculator.from_pretrained(model, dtype=args.dtype, **kwargs)
