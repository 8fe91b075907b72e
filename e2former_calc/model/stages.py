"""Layer by layer, only the atoms whose features still matter: the receptive field shrinking.

An E2Former with ``L`` transformer blocks has ``L + 1`` stages that read neighbours: the
edge-degree embedding (stage 0) and blocks ``1..L``. Let ``hop(i)`` be the graph distance of
node ``i`` (in edges ``i <- j``) from the atoms whose energies are wanted (hop 0). The energy
of a hop-0 atom reads the final features of hop 0 only; those read the features of hop <= 1
after block ``L - 1``; and so on: stage ``k`` is needed exactly on the nodes with

    hop <= L - k        (k = 0: the embedding, hop <= L; k = L: the last block, hop 0),

and reads the edges into those nodes (their senders have hop <= L - k + 1, the nodes stage
``k - 1`` produced). With the nodes numbered by non-decreasing hop, every stage's nodes are a
prefix ``0..n_k - 1`` of the previous stage's, so restricting is slicing.

Engines that evaluate a halo of ghost atoms around the atoms they own (LAMMPS's ghost shell:
``num_layers + 1`` cutoffs deep) use this to do the work of the outer ghosts only in the
stages that need them. The energies of the hop-0 atoms are exactly (to rounding) those of the
full evaluation; the features of the dropped nodes are simply never computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..conv import ConvGraph, ConvPlan


@dataclass(frozen=True)
class LayerStages:
    """Per stage ``k = 0..L``: the number of leading nodes it outputs and the edges it reads.

    Attributes:
        nodes: ``(n_0, ..., n_L)``; stage ``k`` outputs features for nodes ``0..n_k - 1``.
        edges: ``L + 1`` index tensors ``[E_k]`` into the graph's edges: those whose receiver is
            among stage ``k``'s nodes.
        plans: ``L`` convolution plans, one per block, of the graph restricted to stage ``k - 1``'s
            nodes and stage ``k``'s edges (see :meth:`graphs`).
    """

    nodes: tuple[int, ...]
    edges: tuple[torch.Tensor, ...]
    plans: tuple[ConvPlan | None, ...]

    @classmethod
    def build(cls, model, graph: ConvGraph, hops: np.ndarray) -> "LayerStages":
        """The stages of ``model`` on ``graph`` whose nodes carry hop distances ``hops`` ``[N]``
        (non-decreasing: number the nodes by hop first). Made once per neighbour list."""
        hops = np.asarray(hops)
        n_layers = len(model.blocks)
        if hops.shape != (graph.n_nodes,):
            raise ValueError(f"hops must have one entry per node ({graph.n_nodes}), got shape {hops.shape}")
        if hops.size and np.any(np.diff(hops) < 0):
            raise ValueError("number the nodes by non-decreasing hop distance before building layer stages")
        nodes = tuple(int(np.searchsorted(hops, n_layers - k, side="right")) for k in range(n_layers + 1))
        receivers = graph.receivers.cpu().numpy()
        edges = tuple(torch.as_tensor(np.flatnonzero(receivers < n), device=graph.receivers.device) for n in nodes)
        stages = cls(nodes, edges, ())
        with torch.no_grad():
            plans = tuple(model.plan(g) for g in stages.graphs(graph)[1:])
        return cls(nodes, edges, plans)

    def graphs(self, graph: ConvGraph) -> list[ConvGraph]:
        """The graph of each stage: stage 0 reads all nodes, block ``k`` the nodes of stage ``k - 1``."""
        inputs = (graph.n_nodes, *self.nodes[:-1])
        return [graph.restrict(n, e) for n, e in zip(inputs, self.edges)]
