"""``python -m e2former_calc ...`` is ``e2former ...`` (also for ``torchrun -m``)."""

import sys

from .cli import main

sys.exit(main())
