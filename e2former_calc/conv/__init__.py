"""Equivariant convolutions over neighbour graphs.

:class:`Wigner6jConvolution` (tensor products on nodes) and :class:`EdgeWiseConvolution`
(tensor products on edges, the reference) compute the same function with the same interface;
:class:`PathMixing` mixes their path outputs and channels on the nodes.
"""

from .aggregation import EdgeAggregation, scatter_backend, scatter_sum, set_scatter_backend
from .base import Convolution
from .edgewise import EdgeUVWConvolution, EdgeWiseConvolution
from .factorised import FLOAT32_BLOCKS_PER_CUTOFF, FLOAT64_BLOCK_SIDE, Wigner6jConvolution
from .forest import SpanningForest
from .graph import ConvGraph
from .mixing import PathMixing
from .paths import Path, enumerate_paths
from .plan import ConvPlan

__all__ = [
    "FLOAT32_BLOCKS_PER_CUTOFF",
    "FLOAT64_BLOCK_SIDE",
    "EdgeAggregation",
    "ConvGraph",
    "ConvPlan",
    "Convolution",
    "EdgeUVWConvolution",
    "EdgeWiseConvolution",
    "Path",
    "PathMixing",
    "SpanningForest",
    "Wigner6jConvolution",
    "enumerate_paths",
    "scatter_backend",
    "set_scatter_backend",
    "scatter_sum",
]
