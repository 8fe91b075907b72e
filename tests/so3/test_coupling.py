"""Addition theorem and recoupling coefficients against independent computations."""

import math

import pytest
import torch
from sympy.physics.wigner import wigner_6j

from e2former_calc.so3 import addition_coefficient, recoupling_coefficients, solid_harmonics, wigner_3j
from e2former_calc.so3.coupling import triangle

DEGREES = range(5)


def _solid(l, v):
    return solid_harmonics(l, v)[..., l**2 :]


@pytest.mark.parametrize("f", DEGREES)
def test_addition_theorem_holds_with_closed_form_coefficients(f):
    gen = torch.Generator().manual_seed(f)
    a = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 2
    b = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 2
    rhs = sum(
        addition_coefficient(f, lam)
        * torch.einsum("abc,na,nb->nc", wigner_3j(lam, f - lam, f), _solid(lam, a), _solid(f - lam, b))
        for lam in range(f + 1)
    )
    lhs = _solid(f, a + b)
    assert torch.allclose(rhs, lhs, rtol=0, atol=1e-12 * lhs.abs().max())


@pytest.mark.parametrize("f", DEGREES)
def test_addition_coefficients_match_least_squares_fit(f):
    """Fit the c[f, lam] to S_f(a+b) with no formula, then compare with the closed form."""
    gen = torch.Generator().manual_seed(10 + f)
    a = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    columns = [
        torch.einsum("abc,na,nb->nc", wigner_3j(lam, f - lam, f), _solid(lam, a), _solid(f - lam, b)).flatten()
        for lam in range(f + 1)
    ]
    fit = torch.linalg.lstsq(torch.stack(columns, 1), _solid(f, a + b).flatten()[:, None]).solution[:, 0]
    closed = torch.tensor([addition_coefficient(f, lam) for lam in range(f + 1)], dtype=torch.float64)
    assert torch.allclose(fit, closed, rtol=1e-10, atol=0)


def test_addition_coefficients_quoted_in_the_design_note():
    assert addition_coefficient(1, 0) == pytest.approx(math.sqrt(3))
    assert addition_coefficient(2, 1) == pytest.approx(4.0825, abs=1e-4)
    assert [round(addition_coefficient(4, lam), 3) for lam in range(5)] == [3.0, 10.392, 15.06, 10.392, 3.0]
    with pytest.raises(ValueError):
        addition_coefficient(2, 3)


def _cases():
    for l_x in DEGREES:
        for f in DEGREES:
            for lam in range(f + 1):
                for L in range(abs(l_x - f), l_x + f + 1):
                    if L <= 4:
                        yield l_x, lam, f - lam, f, L


@pytest.mark.parametrize("l_x,lam,mu,f,L", list(_cases()))
def test_recoupling_matches_sympy_wigner_6j(l_x, lam, mu, f, L):
    coefficients = recoupling_coefficients(l_x, lam, mu, f, L)
    expected_ks = [k for k in range(abs(l_x - lam), l_x + lam + 1) if triangle(k, mu, L)]
    assert sorted(coefficients) == expected_ks
    for k, w_k in coefficients.items():
        closed = (-1) ** (l_x + lam + mu + L) * (2 * k + 1) * float(wigner_6j(l_x, lam, k, mu, L, f))
        assert w_k == pytest.approx(closed, abs=1e-10)


def test_recoupling_reproduces_the_coupled_tensors_on_random_vectors():
    """[x (x) [A (x) B]^f]^L computed both ways on random inputs, l_x = lam = mu = 2, f = 3, L = 2."""
    gen = torch.Generator().manual_seed(3)
    x, a, b = (torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(3))
    ab = torch.einsum("abc,a,b->c", wigner_3j(2, 2, 3), a, b)
    lhs = torch.einsum("abc,a,b->c", wigner_3j(2, 3, 2), x, ab)
    rhs = sum(
        w_k * torch.einsum("abc,a,b->c", wigner_3j(k, 2, 2), torch.einsum("abc,a,b->c", wigner_3j(2, 2, k), x, a), b)
        for k, w_k in recoupling_coefficients(2, 2, 2, 3, 2).items()
    )
    assert torch.allclose(lhs, rhs, atol=1e-13)


def test_recoupling_is_empty_outside_the_triangle():
    assert recoupling_coefficients(0, 1, 1, 3, 3) == {}
