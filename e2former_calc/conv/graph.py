"""The geometry a convolution reads: node coordinates, edge shifts and edge vectors (tensors only).

An edge ``e = (i <- j)`` has receiver (target) ``i``, sender (source) ``j``, a Cartesian shift
``s_e`` of the sender's image and an integer image key ``images[e]``, so that

    r_e = p_j + s_e - p_i.

The image key says which edges read the *same* image of their sender: two edges with equal
sender and equal key must have bit-identical shifts (it is the integer cell shift ``S`` of
``s_e = S @ cell`` when the graph comes from positions and a cell). The convolution plan
(:class:`~e2former_calc.conv.plan.ConvPlan`) groups edges by it, so it is never derived by
rounding Cartesian numbers.

Positions, shifts and edge vectors are float64 and may carry gradients; the network casts what
it needs. A :class:`ConvGraph` holds no caches: the discrete structure that is worth keeping
between calls (block origins, sparse patterns) is the explicit :class:`ConvPlan`.

Two ways to make one:

- :meth:`ConvGraph.build`: from node positions (and shifts), the usual case;
- :meth:`ConvGraph.from_edge_vectors`: from pair vectors alone (an engine such as LAMMPS that
  hands ``r_ij`` and wants ``dE/dr_ij`` back). Node coordinates are then rebuilt along a
  spanning forest of the pair graph (:class:`~e2former_calc.conv.forest.SpanningForest`), so
  that the tensor products stay on the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConvGraph:
    """Nodes and edges of one (batch of) structure(s). ``N`` nodes, ``E`` edges."""

    receivers: torch.Tensor  # [E] int64, i
    senders: torch.Tensor  # [E] int64, j
    images: torch.Tensor  # [E, 3] int64, which image of j (equal key and sender -> equal shift)
    positions: torch.Tensor  # [N, 3] float64, p
    shifts: torch.Tensor  # [E, 3] float64, s
    vectors: torch.Tensor  # [E, 3] float64, r = p_j + s - p_i
    lengths: torch.Tensor  # [E] float64, |r|

    @classmethod
    def build(
        cls,
        positions: torch.Tensor,
        receivers: torch.Tensor,
        senders: torch.Tensor,
        shifts: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> "ConvGraph":
        """Check shapes and compute the edge vectors ``r = p_j + s - p_i``.

        Args:
            positions: ``[N, 3]`` node positions (float64 recommended; gradients flow through).
            receivers: ``[E]`` target node ``i`` of each edge.
            senders: ``[E]`` source node ``j`` of each edge.
            shifts: ``[E, 3]`` Cartesian shift of the source image (``S @ cell``); None: zero.
            images: ``[E, 3]`` integer image keys (the integer cell shifts ``S``); None: edges
                are grouped by bit-identical shift rows.
        """
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape [N, 3], got {tuple(positions.shape)}")
        receivers, senders = _check_edges(receivers, senders, positions.shape[0])
        n_edges = receivers.shape[0]
        if shifts is None:
            shifts = positions.new_zeros((n_edges, 3))
            if images is None:
                images = torch.zeros((n_edges, 3), dtype=torch.long, device=positions.device)
        if shifts.shape != (n_edges, 3):
            raise ValueError(f"shifts must have shape [E, 3], got {tuple(shifts.shape)}")
        if images is None:
            images = _exact_row_ids(shifts.detach())
        if images.shape != (n_edges, 3) or images.is_floating_point():
            raise ValueError(f"images must be an integer tensor of shape [E, 3], got {images.dtype} {tuple(images.shape)}")
        vectors = positions.index_select(0, senders) + shifts - positions.index_select(0, receivers)
        return cls(receivers, senders, images.long(), positions, shifts, vectors, torch.linalg.vector_norm(vectors, dim=-1))

    @classmethod
    def from_edge_vectors(cls, vectors: torch.Tensor, forest) -> "ConvGraph":
        """The graph of given pair vectors (the differentiable leaf), nodes rebuilt along ``forest``.

        ``vectors`` ``[E, 3]`` are ``r_ij`` of the forest's edges; the returned graph's
        ``vectors`` are these very tensors, so ``dE/d vectors`` is the derivative by the pairs.
        """
        if vectors.shape != (forest.n_edges, 3):
            raise ValueError(f"edge vectors must have shape {(forest.n_edges, 3)}, got {tuple(vectors.shape)}")
        positions = forest.node_coordinates(vectors)
        shifts = vectors - (positions.index_select(0, forest.senders) - positions.index_select(0, forest.receivers))
        return cls(forest.receivers, forest.senders, forest.images, positions, shifts, vectors,
                   torch.linalg.vector_norm(vectors, dim=-1))

    def restrict(self, n_nodes: int, edges: torch.Tensor) -> "ConvGraph":
        """The subgraph of the first ``n_nodes`` nodes and the edges ``edges`` (``[E']`` indices),
        whose receivers and senders must all be among those nodes; the tensors are views or
        selections of this graph's (gradients flow back to it)."""
        receivers, senders = self.receivers.index_select(0, edges), self.senders.index_select(0, edges)
        if edges.numel() and int(torch.maximum(receivers, senders).max()) >= n_nodes:
            raise IndexError(f"an edge of the subgraph reaches beyond its first {n_nodes} nodes")
        return ConvGraph(receivers, senders, self.images.index_select(0, edges), self.positions[:n_nodes],
                         self.shifts.index_select(0, edges), self.vectors.index_select(0, edges),
                         self.lengths.index_select(0, edges))

    @property
    def n_nodes(self) -> int:
        return self.positions.shape[0]

    @property
    def n_edges(self) -> int:
        return self.receivers.shape[0]


def _check_edges(receivers: torch.Tensor, senders: torch.Tensor, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    receivers, senders = receivers.long(), senders.long()
    if receivers.shape != senders.shape or receivers.ndim != 1:
        raise ValueError(
            f"receivers and senders must be equal 1-d index arrays, got {tuple(receivers.shape)} and {tuple(senders.shape)}"
        )
    for name, index in (("receivers", receivers), ("senders", senders)):
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_nodes):
            raise IndexError(f"{name} index out of range for {n_nodes} nodes")
    return receivers, senders


def _exact_row_ids(rows: torch.Tensor) -> torch.Tensor:
    """``[E, 3]`` integer keys equal exactly where the float rows are bit-identical."""
    if rows.shape[0] == 0:
        return torch.zeros((0, 3), dtype=torch.long, device=rows.device)
    _, ids = torch.unique(rows, dim=0, return_inverse=True)
    return torch.stack([ids, torch.zeros_like(ids), torch.zeros_like(ids)], dim=1)
