"""Memory for time: what a backward pass with frozen weights recomputes instead of keeping.

Forces and stress are one backward pass through the network; by default autograd keeps every
activation it needs for it, most of them per edge. With frozen weights (inference: MD,
relaxation, LAMMPS, torch-sim) parts of the forward pass can instead be re-run during the
backward pass from their inputs (non-reentrant :func:`torch.utils.checkpoint.checkpoint`, so
derivatives of every order stay exact: the numbers are those of keeping, to rounding):

* ``"blocks"``: every stage that reads edges -- the edge-degree embedding and each transformer
  block -- keeps only its input features ``[N, C, D]``; its per-edge activations exist for one
  stage at a time, while that stage's backward pass runs. Costs about one more forward pass;
* ``False`` or ``"auto"`` (the default): keep everything (fastest). The radial networks keep
  only ``dphi/dr`` ``[E, out]`` anyway where first derivatives are all that is taken
  (:class:`~e2former_calc.model.radial.RadialNetwork`).

With trainable weights nothing is recomputed: the parameter gradients need the activations
anyway.
"""

from __future__ import annotations

from torch import nn

from .e2former import E2Former


def set_recompute(module: nn.Module, mode) -> None:
    """Set what the backward passes of every E2Former in ``module`` recompute: ``"auto"``,
    False or ``"blocks"``."""
    if not (mode is False or mode in ("auto", "blocks")):
        raise ValueError(f"recompute must be 'auto', False or 'blocks', got {mode!r} (True, which "
                         f"recomputed the radial networks' activations, is gone: forces no longer keep them)")
    for m in module.modules():
        if isinstance(m, E2Former):
            m.recompute_blocks = mode == "blocks"
