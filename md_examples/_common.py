"""What every example shares: choosing the potential. Adapt ``load`` to your own potential file."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2former_calc import E2FormerCalculator  # noqa: E402


def arguments(description, steps):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=None, help="potential file or shipped name (default: an UNTRAINED small model)")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    return parser.parse_args()


def load(args, species=("H", "C", "N", "O", "Cu"), **kwargs):
    if args.model is None:
        print("NOTE: untrained model with random weights - the numbers show the workflow, not physics")
        return E2FormerCalculator.from_config("small", species=species, dtype=args.dtype, **kwargs)
    if Path(args.model).is_file():
        return E2FormerCalculator.from_file(args.model, dtype=args.dtype, **kwargs)
    return E2FormerCalculator.from_pretrained(args.model, dtype=args.dtype, **kwargs)
