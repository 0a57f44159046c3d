import pytest
import torch

from spatialdreamer.dvg import (
    disparity_from_normalized,
    inverse_depth_from_metric,
    normalize_inverse_depth,
    robust_range,
)


def test_budget_and_convergence_set_the_pixel_range():
    n = torch.tensor([0.0, 0.25, 1.0])
    assert disparity_from_normalized(n, width=1920, budget=5, convergence=0.0).tolist() == [0.0, 24.0, 96.0]
    behind = disparity_from_normalized(n, width=1920, budget=5, convergence=1.0)
    assert behind.max() == 0.0 and behind.min() == -96.0


def test_nearer_is_always_larger_disparity():
    inv = torch.linspace(0.1, 3.0, 50)
    lo, hi = robust_range(inv, 0, 100)
    d = disparity_from_normalized(normalize_inverse_depth(inv, lo, hi), width=640, budget=3, convergence=0.4)
    assert torch.all(d[1:] > d[:-1])


def test_metric_depth_is_inverted_before_use():
    depth = torch.tensor([1.0, 2.0, 4.0])
    assert inverse_depth_from_metric(depth).tolist() == [1.0, 0.5, 0.25]


def test_robust_range_ignores_outliers_and_non_finite_values():
    x = torch.cat([torch.linspace(0, 1, 1000), torch.tensor([1e6, -1e6, float("nan"), float("inf")])])
    lo, hi = robust_range(x, 1, 99)
    assert -0.01 < lo < 0.02 and 0.98 < hi < 1.01


def test_flat_range_maps_to_zero():
    assert normalize_inverse_depth(torch.ones(4), 1.0, 1.0).eq(0).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0}, "width"),
        ({"width": 10, "budget": -1}, "budget"),
        ({"width": 10, "convergence": 1.5}, "convergence"),
    ],
)
def test_bad_disparity_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        disparity_from_normalized(torch.zeros(2), **kwargs)


def test_robust_range_rejects_empty_and_bad_percentiles():
    with pytest.raises(ValueError, match="finite"):
        robust_range(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="low < high"):
        robust_range(torch.rand(10), 50, 10)
