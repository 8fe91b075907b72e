"""Coupling coefficients of the Wigner 6j convolution.

Two identities move the tensor products of a convolution from the edges to the nodes
(``docs/convolution.md`` and the design note give the derivation):

* **Addition theorem of solid harmonics.** For any vectors ``a`` and ``b``::

      S_f(a + b) = sum_{lam=0..f} c[f, lam] [S_lam(a) (x) S_{f-lam}(b)]^(f)

  with ``c[f, lam] = (2f+1) sqrt(binom(2f, 2 lam) / ((2 lam+1)(2f - 2 lam+1)))``
  (:func:`addition_coefficient`).

* **Recoupling.** For irreps of degrees ``l_x``, ``lam``, ``mu`` coupled to ``f`` and ``L``::

      [x (x) [A (x) B]^(f)]^(L) = sum_k W_k [[x (x) A]^(k) (x) B]^(L)

  ``W_k = (-1)^(l_x+lam+mu+L) (2k+1) {l_x lam k; mu L f}`` (a Wigner 6j symbol) in e3nn's
  normalisation. :func:`recoupling_coefficients` obtains the ``W_k`` by projecting one coupling
  scheme onto the other, so no sign or normalisation convention is assumed; the tests check the
  result against the closed form.

Here ``[x (x) y]^(c)_g = sum_ab C^(a,b,c)_abg x_a y_b`` with ``C = e3nn.o3.wigner_3j(a, b, c)``.
"""

from __future__ import annotations

import functools
import math

import torch
from e3nn import o3


@functools.lru_cache(maxsize=None)
def wigner_3j(l1: int, l2: int, l3: int) -> torch.Tensor:
    """e3nn's real coupling tensor ``C^(l1,l2,l3)``: ``[2l1+1, 2l2+1, 2l3+1]``, float64.

    Each nonzero tensor has Frobenius norm 1. Cached: do not modify the result in place.
    """
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


def addition_coefficient(f: int, lam: int) -> float:
    """Coefficient ``c[f, lam]`` of the addition theorem of solid harmonics (exact closed form)."""
    if not 0 <= lam <= f:
        raise ValueError(f"addition theorem needs 0 <= lam <= f, got f={f}, lam={lam}")
    return (2 * f + 1) * math.sqrt(
        math.comb(2 * f, 2 * lam) / ((2 * lam + 1) * (2 * f - 2 * lam + 1))
    )


def triangle(l1: int, l2: int, l3: int) -> bool:
    """Whether ``l3`` lies in ``|l1 - l2| .. l1 + l2``."""
    return abs(l1 - l2) <= l3 <= l1 + l2


@functools.lru_cache(maxsize=None)
def recoupling_coefficients(l_x: int, lam: int, mu: int, f: int, L: int) -> dict[int, float]:
    """The ``W_k`` of ``[x (x) [A (x) B]^(f)]^(L) = sum_k W_k [[x (x) A]^(k) (x) B]^(L)``.

    ``x``, ``A``, ``B`` have degrees ``l_x``, ``lam``, ``mu``. Returns ``{k: W_k}`` for every
    ``k`` with ``|l_x - lam| <= k <= l_x + lam`` and ``|k - mu| <= L <= k + mu`` (an empty dict
    when the left-hand side vanishes by the triangle rule).

    The coefficients come from projecting the left-hand coupling tensor onto the (mutually
    orthogonal) right-hand ones; the projection must reproduce the left-hand tensor to 1e-10,
    else this raises.
    """
    if not (triangle(lam, mu, f) and triangle(l_x, f, L)):
        return {}
    # [2l_x+1, 2lam+1, 2mu+1, 2L+1]
    lhs = torch.einsum("abe,xeg->xabg", wigner_3j(lam, mu, f), wigner_3j(l_x, f, L))
    residual = lhs.clone()
    coefficients = {}
    for k in range(abs(l_x - lam), l_x + lam + 1):
        if not triangle(k, mu, L):
            continue
        rhs = torch.einsum("xak,kbg->xabg", wigner_3j(l_x, lam, k), wigner_3j(k, mu, L))
        w_k = float((lhs * rhs).sum() / (rhs * rhs).sum())
        coefficients[k] = w_k
        residual -= w_k * rhs
    if residual.abs().max() > 1e-10:
        raise ArithmeticError(f"recoupling failed for l_x={l_x}, lam={lam}, mu={mu}, f={f}, L={L}")
    return coefficients
