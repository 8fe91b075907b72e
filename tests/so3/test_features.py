import pytest
import torch
from e3nn import o3

from e2former_calc.so3 import FeatureLayout, solid_harmonics, spherical_harmonics


def test_layout_round_trips_through_e3nn_order():
    layout = FeatureLayout.parse("0e + 1o + 2e")
    x = torch.randn(4, 3, layout.dim)
    flat = layout.to_e3nn(x)
    assert flat.shape == (4, 27)
    # channel 1 of the 1o block sits at 3 + 1*3 in e3nn's order
    assert torch.equal(flat[:, 3 + 3 : 3 + 6], x[:, 1, 1:4])
    assert torch.equal(layout.from_e3nn(flat, 3), x)


def test_layout_rejects_multiplicities_and_repeats():
    with pytest.raises(ValueError, match="one copy"):
        FeatureLayout.parse("2x0e")
    with pytest.raises(ValueError, match="repeat"):
        FeatureLayout.parse("0e + 0e")


def test_wigner_D_of_reflection_flips_odd_irreps():
    layout = FeatureLayout.parse("0e + 1o + 1e")
    D = layout.wigner_D(-torch.eye(3, dtype=torch.float64))
    assert torch.allclose(D, torch.diag(torch.tensor([1.0, -1, -1, -1, 1, 1, 1], dtype=torch.float64)))


def test_solid_harmonics_are_homogeneous_and_match_spherical_on_the_sphere():
    v = torch.randn(10, 3, dtype=torch.float64)
    s = solid_harmonics(3, v)
    s2 = solid_harmonics(3, 2.5 * v)
    for l in range(4):
        block = slice(l**2, (l + 1) ** 2)
        assert torch.allclose(s2[:, block], 2.5**l * s[:, block])
        r = v.norm(dim=-1, keepdim=True)
        assert torch.allclose(s[:, block], r**l * spherical_harmonics(l, v))
    assert torch.equal(solid_harmonics(2, torch.zeros(1, 3, dtype=torch.float64))[0, 1:], torch.zeros(8, dtype=torch.float64))


def test_spherical_harmonics_follow_e3nn_component_normalisation():
    v = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose(spherical_harmonics(2, v), o3.spherical_harmonics(2, v, True, normalization="component"))
