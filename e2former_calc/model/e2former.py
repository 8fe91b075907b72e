"""The E2Former network: per-atom energies from species and a neighbour graph."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..conv import ConvGraph, ConvPlan, scatter_sum
from ..conv.aggregation import EdgeSum
from ..so3 import spherical_harmonics
from .attention import EquivariantAttention
from .config import E2FormerConfig
from .layers import EquivariantRMSNorm, GatedFeedForward
from .radial import BesselBasis, EdgeInputs, FirstOrderEdges, RadialNetwork, polynomial_envelope
from .repulsion import ZBLRepulsion
from .stages import LayerStages


class EdgeDegreeEmbedding(nn.Module):
    """Initial features: species embedding on ``l = 0`` plus, for every ``l``,
    ``sum_j phi_l,c(|r_ij|, Z_i, Z_j) u(|r_ij|) Y_l(r_ij) / average_neighbours``.

    Each degree is one :class:`~e2former_calc.conv.aggregation.EdgeSum` (per-edge weights
    ``phi_l`` ``[E, C]``, per-edge values ``u Y_l`` ``[E, 2l+1]`` shared by the channels): no
    ``[E, C, (L_max+1)^2]`` message tensor, in the forward or the backward pass. Where only first
    derivatives are taken with frozen weights (``edges.first_order``), the whole sum is one
    :meth:`~e2former_calc.model.radial.RadialNetwork.summed_over_edges` instead: messages a piece of edges at a time, and a backward pass that makes ``phi`` and
    ``dphi/dr`` again instead of keeping two ``[E, (L_max+1) C]`` tensors.
    """

    def __init__(self, config: E2FormerConfig, num_species: int):
        super().__init__()
        self.max_degree, self.channels = config.max_degree, config.channels
        self.average_neighbours = config.average_neighbours
        self.species = nn.Embedding(num_species, config.channels)
        self.radial = RadialNetwork(
            config.radial_basis, config.species_features, config.radial_hidden, (config.max_degree + 1) * config.channels
        )

    def forward(self, species, graph: ConvGraph, edges: EdgeInputs):
        """``edges``: the graph's :class:`~e2former_calc.model.radial.EdgeInputs`."""
        dtype, envelope = edges.lengths.dtype, edges.envelope
        vectors = graph.vectors.to(dtype)
        # the envelope multiplies the [E, 2l+1] harmonics, not the [E, C] weights: the same sum,
        # and the backward pass keeps no [E, L_max+1, C] product
        harmonics = [spherical_harmonics(l, vectors) * envelope[:, None] for l in range(self.max_degree + 1)]
        if edges.first_order is not None:
            h = self.radial.summed_over_edges(edges, torch.cat(harmonics, dim=-1),
                                              tuple(2 * l + 1 for l in range(self.max_degree + 1)), graph.n_nodes)
        else:
            phi = self.radial(edges, (self.channels,) * (self.max_degree + 1))  # phi_l [E, C], l = 0 .. L_max
            edge_sum = EdgeSum(graph.receivers, graph.n_nodes, self.channels)  # cheap, O(E)
            h = torch.cat([edge_sum(phi[l], y) for l, y in enumerate(harmonics)], dim=-1)
        h = h / self.average_neighbours  # [N, C, D]
        return torch.cat([h[:, :, :1] + self.species(species)[:, :, None], h[:, :, 1:]], dim=-1)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``h += Attention(Norm(h)); h += FeedForward(Norm(h))``."""

    def __init__(self, config: E2FormerConfig):
        super().__init__()
        self.attention_norm = EquivariantRMSNorm(config.max_degree, config.channels)
        self.attention = EquivariantAttention(config)
        self.feedforward_norm = EquivariantRMSNorm(config.max_degree, config.channels)
        self.feedforward = GatedFeedForward(config.max_degree, config.channels, config.feedforward_channels)

    def forward(self, h, graph, plan, edges: EdgeInputs, keep: int | None = None):
        """``[N, C, D] -> [N, C, D]``, or ``[keep, C, D]``: only the first ``keep`` nodes' output
        (the attention still reads all ``N``)."""
        h = h + self.attention(self.attention_norm(h), graph, plan, edges)
        if keep is not None:
            h = h[:keep]
        return h + self.feedforward(self.feedforward_norm(h))


class E2Former(nn.Module):
    """Per-atom energies of atoms on a neighbour graph::

        E_i = energy_scale * (R(h_i) - R(h_iso[Z_i])) + E0[Z_i]

    ``R`` is the readout MLP of the final scalar features, ``h_iso[Z]`` the final features of a
    lone atom of species ``Z`` (no neighbour within the cutoff: every edge term vanishes, so they
    depend on the species alone). An atom with no neighbour within the cutoff therefore has
    exactly (to rounding) the energy ``E0[Z]``, the isolated-atom energy, and two fragments
    farther apart than the cutoff have the sum of their energies: the dissociation limit is right.
    With ``config.zbl`` the screened nuclear repulsion of close pairs is added
    (:class:`~e2former_calc.model.repulsion.ZBLRepulsion`, half to each atom).

    Args:
        config: the hyper-parameters.
        atomic_numbers: the species the model knows, in the order of its species indices.
        e0: energy of an isolated atom of each species (eV), same order; zeros if None.

    Forward:
        species: ``[N]`` species index of each atom (position in ``atomic_numbers``).
        graph: :class:`~e2former_calc.conv.ConvGraph` (float64 positions and edge vectors).
        plan: the graph's :class:`~e2former_calc.conv.ConvPlan` from :meth:`plan` (made on the
            spot when None; keep it while the neighbour list holds).
        stages: :class:`~e2former_calc.model.stages.LayerStages`: evaluate each stage only on
            the nodes the energies of the first ``stages.nodes[-1]`` atoms need (``plan`` is
            then unused); the result has those ``nodes[-1]`` energies only.
        exchange: a function ``[N, C, D] -> [N, C, D]`` applied to the features before each
            block (a halo exchange: an engine that splits the atoms over processes refreshes its
            ghost atoms' rows from their owners; it must be differentiable).
        first_derivatives_only: the caller takes first derivatives with respect to the
            geometry and nothing beyond (forces, stress, ``dE/dr_ij``): radial networks with
            frozen weights then keep ``dphi/dr`` ``[E, out]`` for the backward pass instead of
            their hidden activations (:class:`~e2former_calc.model.radial.RadialNetwork`), and
            the embedding's keeps nothing per edge and channel (it is made again in the
            backward pass, :meth:`~e2former_calc.model.radial.RadialNetwork.summed_over_edges`);
            a second derivative raises an error. The same numbers to rounding.

    ``recompute_blocks`` (default False; :func:`~e2former_calc.model.recompute.set_recompute`
    sets it): with frozen weights, every block (and the embedding, unless it takes the
    first-order path, where it keeps nothing per channel) keeps only its inputs for the
    backward pass and redoes its forward pass there (less memory per atom, one more forward pass
    of time, the same numbers).

    Returns:
        ``[N]`` per-atom energies, float64 (the network runs in its parameters' dtype; the
        reference energies E0 are added in float64); the total energy is their sum.
    """

    def __init__(self, config: E2FormerConfig, atomic_numbers, e0=None):
        super().__init__()
        self.config = config
        self.atomic_numbers = tuple(int(z) for z in atomic_numbers)
        if len(set(self.atomic_numbers)) != len(self.atomic_numbers) or not self.atomic_numbers:
            raise ValueError(f"atomic_numbers must be distinct and non-empty, got {atomic_numbers}")
        n = len(self.atomic_numbers)
        self.e0 = tuple(0.0 for _ in range(n)) if e0 is None else tuple(float(e) for e in e0)
        if len(self.e0) != n:
            raise ValueError(f"e0 must have one energy per species ({n}), got {len(self.e0)}")
        self.basis = BesselBasis(config.cutoff, config.radial_basis)
        self.species_features = nn.Embedding(n, config.species_features)
        self.embedding = EdgeDegreeEmbedding(config, n)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.repulsion = (ZBLRepulsion(self.atomic_numbers, config.cutoff, config.zbl_switch_off)
                           if config.zbl else None)
        self.readout_norm = EquivariantRMSNorm(config.max_degree, config.channels)
        # no output bias: it would cancel exactly in R(h_i) - R(h_iso) (a parameter without a
        # gradient, which an optimizer only walks by rounding noise)
        self.readout = nn.Sequential(nn.Linear(config.channels, config.channels), nn.SiLU(),
                                     nn.Linear(config.channels, 1, bias=False))
        self.recompute_blocks = False

    def species_indices(self, atomic_numbers) -> np.ndarray:
        """``[n]`` int64 species index (position in ``atomic_numbers``) of each atomic number;
        the numbers must be known to the model (check first: -1 or an IndexError otherwise)."""
        table = np.full(max(self.atomic_numbers) + 1, -1, dtype=np.int64)
        table[list(self.atomic_numbers)] = np.arange(len(self.atomic_numbers))
        return table[np.asarray(atomic_numbers)]

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the parameters (the network's precision)."""
        return self.readout[0].weight.dtype

    def plan(self, graph: ConvGraph) -> ConvPlan | None:
        """The convolution plan of ``graph`` for this model's convolutions in its current dtype
        (None for a model without transformer blocks: it has no convolution)."""
        if not self.blocks:
            return None
        return self.blocks[0].attention.convolution.plan(graph, self.dtype, self.config.cutoff)

    def forward(self, species: torch.Tensor, graph: ConvGraph, plan: ConvPlan | None = None,
                stages: LayerStages | None = None, exchange=None, first_derivatives_only: bool = False) -> torch.Tensor:
        dtype = self.dtype
        lengths = graph.lengths.to(dtype)
        envelope = polynomial_envelope(lengths, self.config.cutoff, self.config.envelope_exponent)
        features = self.species_features(species)
        if (first_derivatives_only and lengths.requires_grad and torch.is_grad_enabled()
                and not any(p.requires_grad for p in self.parameters())):
            # the radial networks carry d/dr forward and keep only that, and make their inputs
            # a piece of edges at a time (see RadialNetwork)
            first_order = FirstOrderEdges(self.basis, features.detach(), graph.receivers, graph.senders)
            edges = EdgeInputs(lengths, None, None, None, envelope, first_order)
        else:
            edges = EdgeInputs(lengths, self.basis(lengths), features[graph.receivers], features[graph.senders],
                               envelope)
        stage = self._stage_runner(lengths)
        # the first-order embedding keeps nothing per channel (its harmonics' per-edge
        # intermediates only, ~70 bytes per edge at L_max = 1): recomputing it would save that
        # and run its radial network a third time
        embed = stage if edges.first_order is None else (lambda module, *args: module(*args))
        if stages is None:
            if plan is None:
                plan = self.plan(graph)
            h = embed(self.embedding, species, graph, edges)
            for block in self.blocks:
                if exchange is not None:
                    h = exchange(h)
                h = stage(block, h, graph, plan, edges)
        else:
            graphs = stages.graphs(graph)
            inputs = [edges.select(e) for e in stages.edges]
            h = embed(self.embedding, species, graphs[0], inputs[0])[: stages.nodes[0]]
            for k, block in enumerate(self.blocks, start=1):
                if exchange is not None:
                    h = exchange(h)
                h = stage(functools.partial(block, keep=stages.nodes[k]), h, graphs[k], stages.plans[k - 1], inputs[k])
        n_out = h.shape[0]
        readout = self.readout(self.readout_norm(h)[:, :, 0]).squeeze(-1)  # [N]
        relative = readout.double() - self.isolated_atom_readout().double().index_select(0, species[:n_out])
        e0 = torch.tensor(self.e0, dtype=torch.float64, device=species.device)
        energies = relative * self.config.energy_scale + e0.index_select(0, species[:n_out])
        if self.repulsion is not None:  # half of each pair's energy to each atom (edges go both ways)
            last = graph if stages is None else graphs[-1]  # the edges into the atoms of the output
            species_i, species_j = species.index_select(0, last.receivers), species.index_select(0, last.senders)
            close = self.repulsion.close_edges(last.lengths, species_i, species_j)  # the others add exactly 0
            pairs = self.repulsion(last.lengths.index_select(0, close), species_i.index_select(0, close),
                                   species_j.index_select(0, close))
            energies = energies + scatter_sum(0.5 * pairs, last.receivers.index_select(0, close), n_out)
        return energies

    def _stage_runner(self, lengths: torch.Tensor):
        """How a stage (embedding or block) runs: directly, or recomputed in the backward pass
        (``recompute_blocks``, frozen weights, a backward pass to come)."""
        if not (self.recompute_blocks and torch.is_grad_enabled() and lengths.requires_grad
                and not self.readout[0].weight.requires_grad):
            return lambda module, *args: module(*args)
        return lambda module, *args: checkpoint(module, *args, use_reentrant=False, preserve_rng_state=False)

    def isolated_atom_readout(self) -> torch.Tensor:
        """``[n_species]`` ``R(h_iso[Z])``: the readout of a lone atom of each species.

        With no edge, the embedding leaves the species embedding on ``l = 0`` and zeros
        elsewhere, and every attention block adds exactly zero; only the feed-forward layers act.
        """
        weight = self.embedding.species.weight  # [n_species, C]
        h = weight.new_zeros(weight.shape[0], self.config.channels, (self.config.max_degree + 1) ** 2)
        h = torch.cat([h[:, :, :1] + weight[:, :, None], h[:, :, 1:]], dim=-1)
        for block in self.blocks:
            h = h + block.feedforward(block.feedforward_norm(h))
        return self.readout(self.readout_norm(h)[:, :, 0]).squeeze(-1)

