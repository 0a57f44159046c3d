"""Hole filling with a trained :class:`~spatialdreamer.models.SpatialDreamerPipeline`, streamed.

A converter sees a video chunk by chunk; the refiner must not see the whole video (memory) nor
treat chunks independently (seams and flicker at chunk boundaries, the "chunk flashing" users
report of windowed video diffusion). :class:`StreamingRefiner` runs the pipeline on each chunk
together with the last ``overlap`` frames of the previous one, blends the frames both runs
produced with a linear ramp, and holds those ``overlap`` frames back until the next chunk has
been blended into them. Memory is one chunk plus the overlap, whatever the video's length.

The model sees what it was trained on (:mod:`spatialdreamer.models.reference`): the rendered
view with its holes pre-filled by the classical fill, and a complete reference view.
"""

from __future__ import annotations

import os

import torch

from spatialdreamer.models.reference import reference_view, rendered_view

__all__ = ["RefinerError", "StreamingRefiner", "load_refiner_pipeline"]


class RefinerError(RuntimeError):
    """A trained pipeline that cannot be loaded or used."""


def load_refiner_pipeline(
    path: str, device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None
):
    """A saved ``SpatialDreamerPipeline`` from a folder (``pipelines.train`` writes
    ``OUTPUT/pipeline``) or a Hugging Face id; a clear :class:`RefinerError` otherwise."""
    from spatialdreamer.models import SpatialDreamerPipeline

    local = os.path.expanduser(str(path))
    if (local.startswith((".", "/", "~")) or os.path.exists(local)) and not os.path.isfile(
        os.path.join(local, "model_index.json")
    ):
        raise RefinerError(
            f"--refiner {path}: not a SpatialDreamer pipeline folder (no model_index.json); pass the "
            "pipeline/ folder that `python -m pipelines.train` writes, or a Hugging Face id"
        )
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components": noise for a CLI
    try:
        pipe = SpatialDreamerPipeline.from_pretrained(
            local, **({"torch_dtype": torch_dtype} if torch_dtype else {})
        )
    except Exception as exc:  # hub errors, bad folders, wrong classes: all one line for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RefinerError(f"--refiner {path}: could not load the pipeline ({reason})") from exc
    finally:
        diffusers_logging.enable_progress_bar()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class StreamingRefiner:
    """Refine the holes of a frame stream with overlapping, blended temporal windows.

    Args:
        pipe: a ``SpatialDreamerPipeline``.
        steps: denoising steps per window (1 is a one-step refiner: fastest, coarsest).
        overlap: frames shared by consecutive chunks (default: a quarter of the denoiser's
            window, at least 1).
        seed: seeds the initial noise; chunk ``k`` uses ``seed + k``, so output is reproducible.
        tile_size: latent tile side for large frames (``None`` = whole frames).

    Example:
        >>> refiner = StreamingRefiner(pipe, steps=4)  # doctest: +SKIP
        >>> ready = refiner.push(rendered, holes, source)  # frames ready so far  # doctest: +SKIP
        >>> rest = refiner.flush()  # at a cut and at the end  # doctest: +SKIP
    """

    def __init__(
        self,
        pipe,
        *,
        steps: int = 8,
        overlap: int | None = None,
        seed: int = 0,
        tile_size: int | None = None,
    ) -> None:
        if steps < 1:
            raise ValueError(f"refiner steps must be >= 1, got {steps}")
        window = int(pipe.unet.config.num_frames)
        self.pipe, self.steps, self.seed, self.tile_size = pipe, int(steps), int(seed), tile_size
        self.overlap = max(1, window // 4) if overlap is None else int(overlap)
        if self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        self._calls = 0
        self._pending: dict[str, torch.Tensor] | None = None  # inputs and output of held-back frames

    def push(
        self,
        rendered: torch.Tensor,
        holes: torch.Tensor,
        reference: torch.Tensor,
        disparity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Add ``T`` frames; returns the frames that are final (``[t, 3, H, W]``, ``t`` ≤ ``T`` +
        held-back frames), in order.

        ``rendered`` ``[T, 3, H, W]`` in [0, 1] (any values in holes), ``holes`` ``[T, 1, H, W]``
        bool, ``reference`` ``[T, 3, H, W]`` the complete source-eye frames, ``disparity``
        ``[T, 1, H, W]`` of the rendered view (picks the background side of each hole).
        """
        if rendered.ndim != 4 or holes.shape != (rendered.shape[0], 1, *rendered.shape[2:]):
            raise ValueError(
                f"rendered must be [T, 3, H, W] and holes [T, 1, H, W] of the same size, got "
                f"{tuple(rendered.shape)} and {tuple(holes.shape)}"
            )
        if reference.shape != rendered.shape:
            raise ValueError(
                f"reference {tuple(reference.shape)} must match rendered {tuple(rendered.shape)}"
            )
        new = {
            "rendered": rendered_view(rendered, holes, disparity),
            "holes": holes,
            "reference": reference_view(reference),
        }
        held = self._pending
        if held is not None:
            inputs = {k: torch.cat([held[k], new[k].to(held[k].device)]) for k in new}
        else:
            inputs = new
        out = self._refine(inputs)
        kept = 0 if held is None else held["output"].shape[0]
        if kept:
            ramp = torch.arange(1, kept + 1, device=out.device, dtype=out.dtype) / (kept + 1)
            ramp = ramp.view(-1, 1, 1, 1)
            out[:kept] = (1 - ramp) * held["output"].to(out) + ramp * out[:kept]
        hold = min(self.overlap, out.shape[0] - 1) if self.overlap else 0
        ready, back = out[: out.shape[0] - hold], out[out.shape[0] - hold :]
        self._pending = (
            {k: v[v.shape[0] - hold :] for k, v in inputs.items()} | {"output": back} if hold else None
        )
        return ready

    def flush(self) -> torch.Tensor:
        """The held-back frames; call at a shot cut (no blending across shots) and at the end."""
        held, self._pending = self._pending, None
        if held is None:
            return torch.empty(0)
        return held["output"]

    @property
    def pending(self) -> int:
        """Frames pushed but not yet returned."""
        return 0 if self._pending is None else self._pending["output"].shape[0]

    def _refine(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + self._calls)
        self._calls += 1
        result = self.pipe(
            inputs["rendered"],
            inputs["holes"],
            inputs["reference"],
            num_inference_steps=self.steps,
            tile_size=self.tile_size,
            generator=generator,
        )
        return result.frames.clamp(0.0, 1.0)
