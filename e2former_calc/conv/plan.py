"""The convolution plan: local origins and the sparse structure of the edge stage, made once.

The factorised convolution writes ``S_f(r_e) = S_f(a_e + t_i)`` with source coordinate
``a_e = p_j + s_e - o`` and target coordinate ``t_i = o - p_i`` around an origin ``o``. The
identity holds for any ``o``, so every target takes the centre of the cubic block (side
``block_side``, on a grid fixed in space) that contains it: coordinates then stay within a block
plus a cutoff of their origin whatever the size or position of the system, and float32 keeps its
precision. Source work is done once per distinct (sender, image, target block): a "source entry".

A :class:`ConvPlan` fixes these discrete choices -- which block each node belongs to, which
edges share a source entry (grouped by sender, integer image key and target block, never by
rounded Cartesian numbers), and the sparse pattern of the edge stage -- for one neighbour list.
Whoever owns the neighbour list builds it and reuses it while that list holds: nodes that have
moved since keep their origin, which leaves results exact (the identity holds for any origin)
and, as long as they moved less than a block (an MD skin is far less), precision unchanged.
A plan is immutable; it holds no geometry that carries gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .aggregation import EdgeAggregation
from .graph import ConvGraph


@dataclass(frozen=True)
class ConvPlan:
    """Discrete structure of one graph's Wigner 6j convolutions for one block side and ``C``.

    Attributes:
        block_side: side of the origin blocks in Å; None: one origin at 0.
        channels: ``C``, the weight groups of the edge stage.
        origins: ``[N, 3]`` float64 origin of each node's block.
        source_atoms: ``[U]`` sender of each source entry.
        source_edge: ``[U]`` one edge that reads each source entry (for its image shift).
        edge_source: ``[E]`` source entry read by each edge.
        aggregation: the edge stage from source entries to targets.
    """

    block_side: float | None
    channels: int
    origins: torch.Tensor
    source_atoms: torch.Tensor
    source_edge: torch.Tensor
    edge_source: torch.Tensor
    aggregation: EdgeAggregation

    @classmethod
    def build(cls, graph: ConvGraph, block_side: float | None, channels: int) -> "ConvPlan":
        """The plan of ``graph`` at its current positions."""
        positions = graph.positions.detach()
        device = positions.device
        if block_side is None:
            blocks = torch.zeros(positions.shape, dtype=torch.long, device=device)
            origins = torch.zeros_like(positions)
        else:
            if not block_side > 0:
                raise ValueError(f"block_side must be positive, got {block_side}")
            blocks = torch.floor(positions / block_side).long()
            origins = (blocks.to(positions.dtype) + 0.5) * block_side
        if graph.n_edges == 0:
            empty = graph.receivers.new_zeros(0)
            edge_source, source_edge = empty, empty
        else:
            target_blocks = blocks.index_select(0, graph.receivers)
            columns = [graph.senders, *graph.images.unbind(1), *target_blocks.unbind(1)]
            _, edge_source = torch.unique(_row_keys(columns), return_inverse=True)
            n_sources = int(edge_source.max()) + 1
            edges = torch.arange(graph.n_edges, device=device)
            source_edge = torch.full((n_sources,), graph.n_edges, device=device)
            source_edge = source_edge.scatter_reduce(0, edge_source, edges, reduce="amin")
        n_sources = source_edge.shape[0]
        aggregation = EdgeAggregation(edge_source, graph.receivers, n_sources, graph.n_nodes, channels)
        return cls(None if block_side is None else float(block_side), int(channels), origins,
                   graph.senders.index_select(0, source_edge), source_edge, edge_source, aggregation)

    @property
    def n_sources(self) -> int:
        return self.source_atoms.shape[0]

    def local_coordinates(self, graph: ConvGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """``[U, 3]`` source coordinates ``p_j + s - o`` and ``[N, 3]`` target coordinates ``o - p_i``
        of ``graph`` (differentiable), which must have the edges this plan was built for."""
        if graph.n_nodes != self.origins.shape[0] or graph.n_edges != self.edge_source.shape[0]:
            raise ValueError(
                f"the plan was built for {self.origins.shape[0]} nodes and {self.edge_source.shape[0]} edges, "
                f"the graph has {graph.n_nodes} and {graph.n_edges}"
            )
        source_coords = (
            graph.positions.index_select(0, self.source_atoms)
            + graph.shifts.index_select(0, self.source_edge)
            - self.origins.index_select(0, graph.receivers.index_select(0, self.source_edge))
        )
        return source_coords, self.origins - graph.positions


def _dense_ids(column: torch.Tensor) -> tuple[torch.Tensor, int]:
    """An integer ``column`` mapped to ``[0, radix)`` keeping its order: ``value - min`` (no sort:
    atom indices, image keys and block indices span small ranges)."""
    low, high = torch.aminmax(column)
    return column - low, int(high - low) + 1


def _row_keys(columns: list[torch.Tensor]) -> torch.Tensor:
    """One int64 key per row, equal iff the rows of the given columns are all equal; keys sort
    as the rows do, column by column."""
    key = torch.zeros_like(columns[0])
    radix_product = 1
    for column in columns:
        ids, radix = _dense_ids(column)
        radix_product *= radix
        if radix_product >= 2**62:  # cannot happen for realistic graphs; stay correct anyway
            return torch.unique(torch.stack(columns, 1), dim=0, return_inverse=True)[1]
        key = key * radix + ids
    return key
