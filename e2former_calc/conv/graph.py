"""The geometry a convolution needs: edge vectors, and local origins per spatial block.

An edge ``e = (i <- j)`` has receiver (target) ``i``, sender (source) ``j`` and a Cartesian
lattice shift ``s_e`` (zero in non-periodic directions), so that

    r_e = r_j + s_e - r_i.

Positions, shifts and edge vectors are float64: the network casts what it needs.

The factorised convolution writes ``S_f(r_e) = S_f(a_e + t_i)`` with source coordinate
``a_e = r_j + s_e - o`` and target coordinate ``t_i = o - r_i`` around an origin ``o``. The
identity holds for any ``o``, so every target takes the centre of the cubic block (side
``block_side``, on a grid fixed in space) that contains it: coordinates then stay within a block
plus a cutoff of their origin whatever the size or position of the system, and float32 keeps
its precision. Source work is done once per distinct (source atom, periodic image, target
block): a "source entry".

Which block an atom belongs to is a discrete choice, made once per neighbour list
(:class:`BlockTopology`) together with the sparse structure of the edge stage. Atoms that move
afterwards keep their origin; since the identity holds for any origin, results stay exact, and
as long as atoms move less than a block (an MD skin is far less) precision is unchanged.
:meth:`ConvGraph.with_positions` makes the graph of new positions that shares this topology.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .aggregation import EdgeAggregation


@dataclass
class BlockTopology:
    """Discrete structure of the local origins for one block side (no gradients).

    Attributes:
        origins: ``[N, 3]`` float64 origin of each atom's block.
        source_atoms: ``[U]`` atom of each distinct (atom, image, target block) source entry.
        source_edge: ``[U]`` one edge that reads each source entry (for its image shift).
        edge_source: ``[E]`` source entry read by each edge.
        receivers: ``[E]`` target of each edge.
    """

    origins: torch.Tensor
    source_atoms: torch.Tensor
    source_edge: torch.Tensor
    edge_source: torch.Tensor
    receivers: torch.Tensor
    _aggregations: dict = field(default_factory=dict, repr=False)

    @property
    def n_sources(self) -> int:
        return self.source_atoms.shape[0]

    def aggregation(self, channels: int) -> EdgeAggregation:
        """The edge stage from source entries to targets with ``channels`` weight groups (cached)."""
        if channels not in self._aggregations:
            self._aggregations[channels] = EdgeAggregation(
                self.edge_source, self.receivers, self.n_sources, self.origins.shape[0], channels
            )
        return self._aggregations[channels]


@dataclass
class LocalOrigins:
    """Source and target coordinates relative to the local origins (differentiable).

    Attributes:
        topology: the :class:`BlockTopology` they come from.
        source_coords: ``[U, 3]`` float64, ``r_j + s - o``: each source image relative to its origin.
        target_coords: ``[N, 3]`` float64, ``o - r_i``: each target's origin relative to the target.
    """

    topology: BlockTopology
    source_coords: torch.Tensor
    target_coords: torch.Tensor


@dataclass
class ConvGraph:
    """Atoms and edges of one (batch of) structure(s).

    Build it with :meth:`ConvGraph.build`; :meth:`with_positions` gives the graph of moved or
    strained positions that reuses the discrete structure (block topologies, sparse patterns).
    """

    positions: torch.Tensor  # [N, 3] float64
    receivers: torch.Tensor  # [E] int64
    senders: torch.Tensor  # [E] int64
    shifts: torch.Tensor  # [E, 3] float64
    vectors: torch.Tensor  # [E, 3] float64, r_j + s - r_i
    lengths: torch.Tensor  # [E] float64
    _shared: dict = field(default_factory=dict, repr=False)  # shared with with_positions()
    _origins: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        positions: torch.Tensor,
        receivers: torch.Tensor,
        senders: torch.Tensor,
        shifts: torch.Tensor | None = None,
        cutoff: float | None = None,
    ) -> "ConvGraph":
        """Check shapes and compute edge vectors.

        Args:
            positions: ``[N, 3]`` atom positions (float64 recommended; gradients flow through).
            receivers: ``[E]`` target atom ``i`` of each edge.
            senders: ``[E]`` source atom ``j`` of each edge.
            shifts: ``[E, 3]`` Cartesian lattice shift of the source image (``S @ cell``);
                None for no periodicity.
            cutoff: the neighbour list's cutoff in Å (sets automatic block sides); None: the
                longest edge stands in for it.
        """
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape [N, 3], got {tuple(positions.shape)}")
        receivers = receivers.long()
        senders = senders.long()
        if receivers.shape != senders.shape or receivers.ndim != 1:
            raise ValueError(
                f"receivers and senders must be equal 1-d index arrays, got "
                f"{tuple(receivers.shape)} and {tuple(senders.shape)}"
            )
        n_nodes = positions.shape[0]
        for name, index in (("receivers", receivers), ("senders", senders)):
            if index.numel() and (index.min() < 0 or index.max() >= n_nodes):
                raise IndexError(f"{name} index out of range for {n_nodes} atoms")
        if shifts is None:
            shifts = positions.new_zeros((receivers.shape[0], 3))
        if shifts.shape != (receivers.shape[0], 3):
            raise ValueError(f"shifts must have shape [E, 3], got {tuple(shifts.shape)}")
        shared = {"topologies": {}}
        if cutoff is not None:
            shared["cutoff"] = float(cutoff)
        return cls._from_parts(positions, receivers, senders, shifts, shared)

    @classmethod
    def _from_parts(cls, positions, receivers, senders, shifts, shared):
        vectors = positions.index_select(0, senders) + shifts - positions.index_select(0, receivers)
        lengths = torch.linalg.vector_norm(vectors, dim=-1)
        return cls(positions, receivers, senders, shifts, vectors, lengths, shared)

    def with_positions(self, positions: torch.Tensor, shifts: torch.Tensor | None = None) -> "ConvGraph":
        """The same edges at new positions (and shifts, e.g. strained), sharing the topology."""
        if positions.shape != self.positions.shape:
            raise ValueError(f"positions must have shape {tuple(self.positions.shape)}, got {tuple(positions.shape)}")
        shifts = self.shifts if shifts is None else shifts
        return ConvGraph._from_parts(positions, self.receivers, self.senders, shifts, self._shared)

    @property
    def n_nodes(self) -> int:
        return self.positions.shape[0]

    @property
    def n_edges(self) -> int:
        return self.receivers.shape[0]

    @property
    def cutoff(self) -> float:
        """The stated cutoff, else the longest edge when first asked (kept by moved graphs)."""
        if "cutoff" not in self._shared:
            self._shared["cutoff"] = float(self.lengths.max()) if self.n_edges else 1.0
        return self._shared["cutoff"]

    def topology(self, block_side: float | None) -> BlockTopology:
        """Blocks of side ``block_side`` Å (None: one origin at 0), made once and shared."""
        topologies = self._shared["topologies"]
        if block_side not in topologies:
            topologies[block_side] = _block_topology(self, block_side)
        return topologies[block_side]

    def local_origins(self, block_side: float | None) -> LocalOrigins:
        """Source and target coordinates around the block origins at these positions (cached)."""
        if block_side not in self._origins:
            top = self.topology(block_side)
            source_coords = (
                self.positions.index_select(0, top.source_atoms)
                + self.shifts.index_select(0, top.source_edge)
                - top.origins.index_select(0, self.receivers.index_select(0, top.source_edge))
            )
            self._origins[block_side] = LocalOrigins(top, source_coords, top.origins - self.positions)
        return self._origins[block_side]


def _dense_ids(column: torch.Tensor) -> tuple[torch.Tensor, int]:
    values, ids = torch.unique(column, return_inverse=True)
    return ids, values.shape[0]


def _row_keys(columns: list[torch.Tensor]) -> torch.Tensor:
    """One int64 key per row, equal iff the rows of the given columns are all equal."""
    key = torch.zeros_like(columns[0])
    radix_product = 1
    for column in columns:
        ids, radix = _dense_ids(column)
        radix_product *= radix
        if radix_product >= 2**62:  # cannot happen for realistic graphs; stay correct anyway
            return torch.unique(torch.stack(columns, 1), dim=0, return_inverse=True)[1]
        key = key * radix + ids
    return key


def _block_topology(graph: ConvGraph, block_side: float | None) -> BlockTopology:
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
        return BlockTopology(origins, empty, empty, empty, graph.receivers)
    # equal shifts are bit-identical: rounding to 0.01 Å only turns them into integers
    shift_key = torch.round(graph.shifts.detach() / 0.01).long()
    target_blocks = blocks.index_select(0, graph.receivers)
    columns = [graph.senders, *shift_key.unbind(1), *target_blocks.unbind(1)]
    _, edge_source = torch.unique(_row_keys(columns), return_inverse=True)
    n_sources = int(edge_source.max()) + 1
    edges = torch.arange(graph.n_edges, device=device)
    source_edge = torch.full((n_sources,), graph.n_edges, device=device)
    source_edge = source_edge.scatter_reduce(0, edge_source, edges, reduce="amin")
    return BlockTopology(origins, graph.senders.index_select(0, source_edge), source_edge, edge_source, graph.receivers)
