"""Memory for time: what a backward pass with frozen weights recomputes instead of keeping.

Forces and stress are one backward pass through the network; plain autograd keeps every
activation it needs for it, most of them per edge. In inference (MD, relaxation, LAMMPS,
torch-sim) parts of the forward pass are instead re-run during the backward pass from their
inputs, with derivatives of every order exact (the numbers are those of keeping, to rounding):

* ``"blocks"``: with frozen weights, every stage that reads edges -- each transformer block,
  and the edge-degree embedding unless only first derivatives are taken (forces, stress,
  ``dE/dr_ij``: its first-order path keeps nothing per channel) -- keeps only its input features ``[N, C, D]`` (non-reentrant
  :func:`torch.utils.checkpoint.checkpoint`); its per-edge activations exist for one stage at a
  time, while that stage's backward pass runs. Costs about one more forward pass;
* ``"auto"`` (the default): the convolutions' source products ``[U, C, K]`` (``U``: a few
  sources per atom) are redone by the edge stage's backward pass instead of kept
  (``Wigner6jConvolution.recompute_products``, a custom backward pass, whatever the weights):
  one more batched product per filter degree and convolution, a
  sixth less kept per atom for the small preset, where it is no slower on this CPU; with wide
  features (the medium preset, ``C = 96``) an MD step takes about a tenth longer for a fifth
  less memory (docs/model.md);
* ``False``: keep everything (fastest with wide features). The radial networks keep
  only ``dphi/dr`` ``[E, out]`` anyway where first derivatives are all that is taken
  (:class:`~e2former_calc.model.radial.RadialNetwork`).

``"blocks"`` redoes the source products too, inside each stage's recomputation.

With trainable weights the blocks are not recomputed: the parameter gradients need their
activations anyway. The trainer does not call :func:`set_recompute`, so training keeps everything.
"""

from __future__ import annotations

from torch import nn

from ..conv.factorised import Wigner6jConvolution
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
        if isinstance(m, Wigner6jConvolution):
            m.recompute_products = mode is not False
