"""Progress bars for long jobs, drawn by tqdm:
``MD nvt  45%|████▌     | 450/1000 [00:36<00:45, 12.3steps/s, T= 301.2 K E_tot=-1234.5678 eV]``.

:func:`progress_bar` makes the bars of the ``e2former`` workflows and of training.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

#: Seconds between redraws when the bar does not go to a terminal (a log file, CI): a few lines
#: per minute instead of ten a second.
OFF_TERMINAL_INTERVAL = 10.0


def progress_bar(total: int, label: str = "", unit: str = "steps", stream=None) -> tqdm:
    """A tqdm bar on ``stream`` (standard error by default) that redraws at most ten times a second
    on a terminal and every :data:`OFF_TERMINAL_INTERVAL` seconds elsewhere; use it as tqdm
    (``update(n)`` adds ``n``, ``set_postfix_str``, ``close``)."""
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    return tqdm(total=int(total), desc=label, unit=unit, file=stream, dynamic_ncols=True,
                mininterval=0.1 if tty else OFF_TERMINAL_INTERVAL)
