"""The depth-estimator interface: factory, device resolution, input checks, output contract."""

from __future__ import annotations

import pytest
import torch

from spatialdreamer.depth import (
    DepthEstimator,
    DepthModelError,
    ParallaxDepthEstimator,
    check_frames,
    load_depth_estimator,
    resolve_device,
)


class _WrongShape(DepthEstimator):
    name = "wrong"
    device = torch.device("cpu")

    def _estimate(self, frames: torch.Tensor) -> torch.Tensor:
        return frames[:, :1, ::2]


def test_factory_picks_parallax_by_name_and_passes_options():
    est = load_depth_estimator(" Parallax ", device="cpu", work_width=32)
    assert isinstance(est, ParallaxDepthEstimator) and est.work_width == 32
    assert est.name == "parallax" and est.device == torch.device("cpu")
    assert repr(est) == "ParallaxDepthEstimator(name='parallax', device='cpu')"
    with pytest.raises(ValueError, match="empty"):
        load_depth_estimator("  ")
    with pytest.raises(TypeError):
        load_depth_estimator("parallax", device="cpu", no_such_option=1)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(DepthModelError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize(
    "value, match",
    [
        ([[0.0]], "torch.Tensor"),
        (torch.rand(3, 8, 8), r"\[B,3,H,W\]"),
        (torch.rand(1, 3, 0, 8), "non-empty"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
    ],
)
def test_check_frames_names_the_expected_shape(value, match):
    with pytest.raises(ValueError, match=match):
        check_frames(value)


def test_backend_returning_the_wrong_shape_is_caught():
    with pytest.raises(RuntimeError, match=r"expected \(2, 1, 8, 8\)"):
        _WrongShape()(torch.rand(2, 3, 8, 8))
