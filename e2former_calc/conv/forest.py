"""Node coordinates rebuilt from pair vectors along a spanning forest of the pair graph.

An engine that hands only pair vectors ``r_e = x_j - x_i`` (LAMMPS ML-IAP, with its ghost
atoms) gives no node positions, but the factorised convolution needs per-node coordinates to
keep its tensor products on the nodes. Any coordinates ``p`` with

    r_e = p_j + s_e - p_i

serve, whatever the per-edge shift ``s_e``, because the convolution's identity holds for any
origin. So: take a breadth-first spanning forest of the undirected pair graph, put the root of
each connected component at 0 and set ``p_k = p_parent + (+/-) r_tree-edge`` down the trees;
every edge then gets ``s_e = r_e - (p_j - p_i)``: zero (to rounding) for a graph whose pairs
are consistent with some positions, such as a ghost-atom graph, and a lattice vector for the
wrap-around pairs of a periodic cell handed as pair vectors.

The sums run in float64 by pointer doubling (``ceil(log2(depth))`` rounds of gathers, on any
device, differentiable): breadth-first trees are shallow, so rounding stays near 1e-15 Å.

Image keys for the convolution plan: an edge whose shift is zero (``|s_e| <= IMAGE_TOLERANCE``)
reads the sender itself (key 0); any other edge gets a key of its own, so no two edges with
different shifts ever share a source entry. Energies, total forces and the virial are those of
the pair vectors; how ``dE/dr`` is split among pairs can differ from a position-based
evaluation (only per-atom sums of it are physical).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Shifts up to this length (Å) count as "no shift": rounding of consistent pair vectors is
#: ~1e-13 Å, the shortest lattice vector of any structure ~1 Å.
IMAGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SpanningForest:
    """The discrete part of rebuilding node coordinates: made once per pair list.

    Attributes:
        receivers, senders: ``[E]`` the pairs ``i <- j``.
        parent_edge: ``[N]`` the tree edge from each node's parent (0 for roots, unused).
        sign: ``[N]`` float64: ``p_k = p_parent + sign_k r_parent_edge`` (0 for roots).
        parent: ``[N]`` parent of each node (itself for roots).
        ancestors: per pointer-doubling round ``k``, the ``2^(k+1)``-th ancestor of each node.
        images: ``[E, 3]`` int64 image keys (see the module docstring).
    """

    receivers: torch.Tensor
    senders: torch.Tensor
    parent_edge: torch.Tensor
    sign: torch.Tensor
    parent: torch.Tensor
    ancestors: tuple
    images: torch.Tensor

    @property
    def n_nodes(self) -> int:
        return self.parent.shape[0]

    @property
    def n_edges(self) -> int:
        return self.receivers.shape[0]

    @classmethod
    def build(cls, receivers, senders, n_nodes: int, vectors: torch.Tensor) -> "SpanningForest":
        """The breadth-first forest of the pairs ``receivers <- senders`` over ``n_nodes`` nodes.

        ``vectors`` ``[E, 3]`` (their current values, no gradient kept) only decide the image keys.
        """
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import breadth_first_order, connected_components

        device = vectors.device
        i = torch.as_tensor(receivers).long().cpu().numpy()
        j = torch.as_tensor(senders).long().cpu().numpy()
        if i.shape != j.shape or i.ndim != 1 or vectors.shape != (i.shape[0], 3):
            raise ValueError("receivers, senders [E] and vectors [E, 3] must describe the same edges")
        if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n_nodes):
            raise IndexError(f"pair index out of range for {n_nodes} nodes")
        # undirected adjacency plus a virtual node n_nodes joined to one root per component
        keep = i != j
        adjacency = coo_matrix((np.ones(keep.sum()), (i[keep], j[keep])), shape=(n_nodes, n_nodes)).tocsr()
        n_components, labels = connected_components(adjacency, directed=False)
        roots = np.full(n_components, n_nodes)
        np.minimum.at(roots, labels, np.arange(n_nodes))
        rows = np.concatenate([i[keep], np.full(n_components, n_nodes)])
        cols = np.concatenate([j[keep], roots])
        extended = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n_nodes + 1, n_nodes + 1)).tocsr()
        _, predecessors = breadth_first_order(extended, n_nodes, directed=False, return_predecessors=True)
        parent = predecessors[:n_nodes].astype(np.int64)
        is_root = parent == n_nodes
        parent[is_root] = np.flatnonzero(is_root)

        # the edge of each (parent, node) pair: node as sender (+1) or as receiver (-1)
        parent_edge = np.zeros(n_nodes, dtype=np.int64)
        sign = np.zeros(n_nodes)
        child = np.flatnonzero(~is_root)
        for a, b, s in ((i, j, 1.0), (j, i, -1.0)):  # edge e: a[e] = parent, b[e] = child
            found = _lookup(a * n_nodes + b, parent[child] * n_nodes + child)
            todo = (found >= 0) & (sign[child] == 0)
            parent_edge[child[todo]] = found[todo]
            sign[child[todo]] = s

        ancestors, current = [], parent
        while not np.array_equal(current, current[current]):
            current = current[current]
            ancestors.append(torch.as_tensor(current, device=device))

        as_tensor = dict(device=device)
        forest = cls(torch.as_tensor(i, **as_tensor), torch.as_tensor(j, **as_tensor),
                     torch.as_tensor(parent_edge, **as_tensor), torch.as_tensor(sign, dtype=torch.float64, **as_tensor),
                     torch.as_tensor(parent, **as_tensor), tuple(ancestors),
                     torch.zeros((i.size, 3), dtype=torch.long, device=device))
        with torch.no_grad():
            v = vectors.detach().to(torch.float64)
            p = forest.node_coordinates(v)
            residual = v - (p.index_select(0, forest.senders) - p.index_select(0, forest.receivers))
            shifted = torch.linalg.vector_norm(residual, dim=-1) > IMAGE_TOLERANCE
        images = torch.zeros((i.size, 3), dtype=torch.long, device=device)
        images[:, 0] = torch.where(shifted, torch.arange(1, i.size + 1, device=device), 0)
        return cls(forest.receivers, forest.senders, forest.parent_edge, forest.sign, forest.parent, forest.ancestors,
                   images)

    def node_coordinates(self, vectors: torch.Tensor) -> torch.Tensor:
        """``[N, 3]`` coordinates ``p`` from the pair vectors ``[E, 3]`` (differentiable).

        Pointer doubling keeps ``offset_k = p_k - p_(ancestor of k)``: ``offset_k += offset_a``,
        ``a <- ancestor of a``, until every ancestor is a root (at 0).
        """
        vectors = vectors.to(torch.float64)
        offset = self.sign[:, None] * vectors.index_select(0, self.parent_edge) if self.n_edges else (
            vectors.new_zeros((self.n_nodes, 3)))
        ancestor = self.parent
        for next_ancestor in self.ancestors:
            offset = offset + offset.index_select(0, ancestor)
            ancestor = next_ancestor
        return offset


def _lookup(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Position of each query among ``keys`` (any one of equal keys), -1 where absent."""
    if keys.size == 0:
        return np.full(queries.shape, -1)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    at = np.clip(np.searchsorted(sorted_keys, queries), 0, keys.size - 1)
    return np.where(sorted_keys[at] == queries, order[at], -1)
