"""Procedural RGB-D stereo video scenes with exact ground truth.

A scene is a stack of textured planar layers (a background plane, cards, ellipses and thin
poles and wires) that move with a camera pan and on their own. Every layer's disparity is an
affine function of its own texture coordinates, so both eyes are rendered analytically: the
right view is ray-cast (solve ``x - d(x) = t`` per layer and keep the nearest), not warped,
which makes it a fair reference for the warp. Occlusion is decided in continuous coordinates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Layer", "SceneSpec", "StereoScene", "make_scene", "random_spec", "render_frame", "iter_frames"]

_SHAPES = ("plane", "rect", "ellipse", "pole", "wire")


@dataclass(frozen=True)
class Layer:
    """One planar layer; positions in pixels of the left view at frame 0."""

    shape: str  # one of _SHAPES
    center: tuple[float, float]  # (x, y)
    size: tuple[float, float]  # (width, height); ignored for "plane"
    disparity: float  # at the layer's centre, pixels
    slope: tuple[float, float]  # d(disparity)/d(x, y) along the layer
    velocity: tuple[float, float]  # own motion, pixels/frame
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    waves: tuple[tuple[float, float, float], ...]  # (kx, ky, phase) texture components


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render any frame of a scene, deterministically."""

    height: int
    width: int
    frames: int
    fps: float
    pan: float  # camera pan, pixels/frame at disparity ``pan_ref``
    pan_ref: float
    baseline: float  # disparity of inverse depth 1 (pixels)
    convergence: float  # shift subtracted from baseline * inverse depth (pixels)
    layers: tuple[Layer, ...] = field(default_factory=tuple)


@dataclass
class StereoScene:
    """A rendered scene. Videos are ``[T,C,H,W]``; RGB float32 in [0, 1].

    ``disparity`` is the left view's disparity in pixels (positive = nearer; a left pixel at
    ``x`` appears at ``x - d`` in the right view). ``occlusion`` is True at right-view pixels
    whose surface point is not visible in the left view (or lies outside it);
    ``occlusion_left`` is True at left-view pixels not visible in the right view, where a warp
    round trip must leave holes. ``depth`` is ``1 / inverse_depth`` with
    ``disparity = baseline * inverse_depth - convergence``. ``flow`` holds left-view forward
    optical flow ``t -> t+1`` (``[T-1,2,H,W]``, x then y).
    """

    spec: SceneSpec
    left: torch.Tensor
    right: torch.Tensor
    disparity: torch.Tensor
    disparity_right: torch.Tensor
    depth: torch.Tensor
    occlusion: torch.Tensor
    occlusion_left: torch.Tensor
    flow: torch.Tensor

    @property
    def fps(self) -> float:
        return self.spec.fps


def _rand_color(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(v) for v in rng.uniform(0.1, 0.9, 3))


def _rand_waves(
    rng: np.random.Generator, n: int, min_period: float
) -> tuple[tuple[float, float, float], ...]:
    waves = []
    for _ in range(n):
        period = rng.uniform(min_period, 6 * min_period)
        angle = rng.uniform(0, np.pi)
        k = 2 * np.pi / period
        waves.append((float(k * np.cos(angle)), float(k * np.sin(angle)), float(rng.uniform(0, 2 * np.pi))))
    return tuple(waves)


def random_spec(
    seed: int,
    *,
    height: int = 128,
    width: int = 192,
    frames: int = 16,
    fps: float = 24.0,
    objects: int = 4,
    thin: int = 2,
    max_disparity: float | None = None,
    pan: float | None = None,
    motion: float = 1.0,
) -> SceneSpec:
    """A random but reproducible scene: background, ``objects`` cards and ``thin`` poles/wires.

    ``motion`` scales the objects' own velocities (pixels/frame, up to 1.5 * motion).
    """
    if height < 8 or width < 8 or frames < 1:
        raise ValueError(f"scene must be at least 8x8 pixels and 1 frame, got {width}x{height}x{frames}")
    rng = np.random.default_rng(seed)
    max_d = float(max_disparity if max_disparity is not None else 0.05 * width)
    min_period = max(4.0, width / 48)
    layers = [
        Layer(
            "plane",
            (width / 2, height / 2),
            (0.0, 0.0),
            disparity=float(rng.uniform(0.0, 0.15) * max_d),
            slope=(
                float(rng.uniform(-0.02, 0.02) * max_d / width),
                float(rng.uniform(0.0, 0.3) * max_d / height),
            ),
            velocity=(0.0, 0.0),
            colors=(_rand_color(rng), _rand_color(rng)),
            waves=_rand_waves(rng, 4, min_period),
        )
    ]
    for i in range(objects + thin):
        is_thin = i >= objects
        shape = str(rng.choice(["pole", "wire"])) if is_thin else str(rng.choice(["rect", "ellipse"]))
        if shape == "pole":
            size = (float(rng.uniform(1.0, 3.0)), float(rng.uniform(0.5, 1.2) * height))
        elif shape == "wire":
            size = (float(rng.uniform(0.6, 1.2) * width), float(rng.uniform(1.0, 2.5)))
        else:
            size = (float(rng.uniform(0.12, 0.35) * width), float(rng.uniform(0.15, 0.45) * height))
        d = float(rng.uniform(0.25, 1.0) * max_d)
        slope = (float(rng.uniform(-0.08, 0.08)) if shape in ("rect", "ellipse") else 0.0, 0.0)
        layers.append(
            Layer(
                shape,
                (float(rng.uniform(0.1, 0.9) * width), float(rng.uniform(0.15, 0.85) * height)),
                size,
                disparity=d,
                slope=slope,
                velocity=(float(rng.uniform(-1.5, 1.5) * motion), float(rng.uniform(-0.5, 0.5) * motion)),
                colors=(_rand_color(rng), _rand_color(rng)),
                waves=_rand_waves(rng, 3, min_period),
            )
        )
    return SceneSpec(
        height=height,
        width=width,
        frames=frames,
        fps=fps,
        pan=float(pan if pan is not None else rng.uniform(-1.0, 1.0)),
        pan_ref=max_d,
        baseline=1.5 * max_d,
        convergence=0.25 * max_d,
        layers=tuple(layers),
    )


def _bounce(travel: float, amplitude: float) -> float:
    """Triangle wave with unit slope at 0: motion that turns back at +-amplitude."""
    z = travel / amplitude
    return amplitude * (1.0 - abs((z + 1.0) % 4.0 - 2.0))


def _offset(spec: SceneSpec, layer: Layer, frame: int) -> tuple[float, float]:
    """Layer position at ``frame``: own motion plus camera-pan parallax, turning back before it
    leaves the frame, so scenes of any length stay populated."""
    parallax = 0.3 + layer.disparity / max(spec.pan_ref, 1e-6)
    vx = layer.velocity[0] + spec.pan * parallax
    return (
        layer.center[0] + _bounce(frame * vx, 0.4 * spec.width),
        layer.center[1] + _bounce(frame * layer.velocity[1], 0.3 * spec.height),
    )


def _inside(layer: Layer, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    w, h = layer.size
    if layer.shape == "plane":
        return torch.ones_like(u, dtype=torch.bool)
    if layer.shape == "ellipse":
        return (u / (w / 2)) ** 2 + (v / (h / 2)) ** 2 <= 1.0
    if layer.shape in ("rect", "pole", "wire"):
        return (u.abs() < w / 2) & (v.abs() < h / 2)
    raise ValueError(f"unknown layer shape {layer.shape!r}; expected one of {_SHAPES}")


def _texture(layer: Layer, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    s = torch.zeros_like(u)
    for kx, ky, phase in layer.waves:
        s = s + torch.sin(kx * u + ky * v + phase)
    s = torch.sigmoid(1.5 * s)  # 0..1 mix between the two colours
    a = torch.tensor(layer.colors[0], dtype=u.dtype).view(3, 1, 1)
    b = torch.tensor(layer.colors[1], dtype=u.dtype).view(3, 1, 1)
    return a + (b - a) * s


def _layer_disparity(layer: Layer, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return layer.disparity + layer.slope[0] * u + layer.slope[1] * v


def _right_ray(spec: SceneSpec, layer: Layer, frame: int, t: torch.Tensor, y: torch.Tensor):
    """Where the right-eye ray at column ``t`` meets ``layer``: left-view ``x``, ``u``, ``v``.

    Solves ``x - (d0 + sx*(x-ox) + sy*v) = t`` for ``x``.
    """
    ox, oy = _offset(spec, layer, frame)
    v = y - oy
    sx, sy = layer.slope
    x = (t + layer.disparity - sx * ox + sy * v) / (1.0 - sx)
    return x, x - ox, v


def _composite(spec: SceneSpec, frame: int, eye: str) -> dict[str, torch.Tensor]:
    """Nearest-layer compositing for one eye. Right-eye rays are solved per layer analytically."""
    h, w = spec.height, spec.width
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    best_d = torch.full((h, w), -torch.inf, dtype=torch.float64)
    rgb = torch.zeros(3, h, w, dtype=torch.float64)
    layer_id = torch.zeros(h, w, dtype=torch.long)
    left_x = xs.clone()
    for k, layer in enumerate(spec.layers):
        if eye == "left":
            ox, oy = _offset(spec, layer, frame)
            x, u, v = xs, xs - ox, ys - oy
        else:
            x, u, v = _right_ray(spec, layer, frame, xs, ys)
        d = _layer_disparity(layer, u, v)
        take = _inside(layer, u, v) & (d > best_d)
        best_d = torch.where(take, d, best_d)
        rgb = torch.where(take, _texture(layer, u, v), rgb)
        layer_id = torch.where(take, torch.full_like(layer_id, k), layer_id)
        left_x = torch.where(take, x, left_x)
    return {"rgb": rgb, "disparity": best_d, "layer": layer_id, "left_x": left_x, "y": ys}


def _visible_in_left(spec: SceneSpec, frame: int, right: dict[str, torch.Tensor]) -> torch.Tensor:
    """Whether the surface point seen by each right-eye pixel is the nearest one in the left eye."""
    x, y, d_seen = right["left_x"], right["y"], right["disparity"]
    visible = (x >= -0.5) & (x <= spec.width - 0.5)
    for layer in spec.layers:
        ox, oy = _offset(spec, layer, frame)
        u, v = x - ox, y - oy
        nearer = _inside(layer, u, v) & (_layer_disparity(layer, u, v) > d_seen + 1e-9)
        visible &= ~nearer
    return visible


def _visible_in_right(spec: SceneSpec, frame: int, left: dict[str, torch.Tensor]) -> torch.Tensor:
    """Whether each left-eye pixel's surface point is the nearest one along its right-eye ray."""
    d_seen, y = left["disparity"], left["y"]
    t = left["left_x"] - d_seen
    visible = (t >= -0.5) & (t <= spec.width - 0.5)
    for layer in spec.layers:
        _, u, v = _right_ray(spec, layer, frame, t, y)
        visible &= ~(_inside(layer, u, v) & (_layer_disparity(layer, u, v) > d_seen + 1e-9))
    return visible


def render_frame(spec: SceneSpec, frame: int) -> dict[str, torch.Tensor]:
    """Render one frame: ``left``, ``right`` ``[3,H,W]``; ``disparity``, ``disparity_right``,
    ``depth`` ``[1,H,W]``; ``occlusion`` and ``occlusion_left`` ``[1,H,W]`` bool; ``flow``
    ``[2,H,W]`` (to frame+1)."""
    left = _composite(spec, frame, "left")
    right = _composite(spec, frame, "right")
    occlusion = ~_visible_in_left(spec, frame, right)
    flow = torch.zeros(2, spec.height, spec.width, dtype=torch.float64)
    for k, layer in enumerate(spec.layers):
        ox0, oy0 = _offset(spec, layer, frame)
        ox1, oy1 = _offset(spec, layer, frame + 1)
        on = left["layer"] == k
        flow[0][on] = ox1 - ox0
        flow[1][on] = oy1 - oy0
    inverse_depth = (left["disparity"] + spec.convergence) / spec.baseline
    return {
        "left": left["rgb"].float().clamp(0, 1),
        "right": right["rgb"].float().clamp(0, 1),
        "disparity": left["disparity"].float().unsqueeze(0),
        "disparity_right": right["disparity"].float().unsqueeze(0),
        "depth": (1.0 / inverse_depth.clamp(min=1e-6)).float().unsqueeze(0),
        "occlusion": occlusion.unsqueeze(0),
        "occlusion_left": (~_visible_in_right(spec, frame, left)).unsqueeze(0),
        "flow": flow.float(),
    }


def iter_frames(spec: SceneSpec) -> Iterator[dict[str, torch.Tensor]]:
    """Frames one at a time, so arbitrarily long scenes render in constant memory."""
    for f in range(spec.frames):
        yield render_frame(spec, f)


def make_scene(seed: int = 0, **kwargs) -> StereoScene:
    """Render a whole random scene (see :func:`random_spec` for the keyword arguments).

    Example:
        >>> scene = make_scene(0, height=32, width=48, frames=3)
        >>> tuple(scene.left.shape), tuple(scene.occlusion.shape)
        ((3, 3, 32, 48), (3, 1, 32, 48))
    """
    spec = random_spec(seed, **kwargs)
    frames = list(iter_frames(spec))
    stack = {key: torch.stack([f[key] for f in frames]) for key in frames[0]}
    return StereoScene(
        spec=spec,
        left=stack["left"],
        right=stack["right"],
        disparity=stack["disparity"],
        disparity_right=stack["disparity_right"],
        depth=stack["depth"],
        occlusion=stack["occlusion"],
        occlusion_left=stack["occlusion_left"],
        flow=stack["flow"][:-1],
    )
