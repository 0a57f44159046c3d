"""Training memory plan per GPU for the ``full`` (and ``base``) configs, measured without a GPU.

Builds the denoiser and RefinerNet of a config on the meta device, gives them fake tensors
(``FakeTensorMode``: shapes, dtypes and aliasing, no memory) and runs one training forward —
:func:`~spatialdreamer.models.conditioning.encode_reference` then
:func:`~spatialdreamer.models.conditioning.predict_velocity` and the v-prediction MSE — at
the config's frames and resolution under bf16 autocast. Activation memory is what autograd
saves for backward, summed by ``torch.autograd.graph.saved_tensors_hooks`` over distinct
storages, without and with gradient checkpointing. Weights, gradients, AdamW and EMA state
follow from the parameter counts, for one GPU, 8 GPUs with DDP (replicated, gradients in the
all-reduce buckets) and 8 GPUs with FSDP2 (:func:`spatialdreamer.train.parallel.shard_loss_module`),
each without and with checkpointing; the last lines say whether ``full`` fits one 80 GB GPU per
replica under DDP and under FSDP.

    python benchmarks/train_memory.py [--configs full base] [--batch 1] [--gpus 8]

How each figure is obtained:

* Autocast: CPU autocast casts matmuls, convolutions and attention to bf16 like CUDA autocast,
  but keeps norms in the input dtype; CUDA runs group/layer norm, softmax, exp, sums and losses
  in fp32, so those ops get fp32 inputs here as well (their saved inputs are fp32, as on CUDA).
* Saved tensors are deduplicated by storage; parameters are not activations. bf16 copies of
  the weights made by autocast (kept alive by its cache until the forward ends, then by the
  ops that saved them) are counted apart, as "bf16 weights".
* Gradient checkpointing (``enable_gradient_checkpointing()`` of both U-Nets, as the trainer
  calls it: diffusers' non-reentrant ``torch.utils.checkpoint`` around resnets and spatial
  transformer blocks, and the denoiser's own around SVD's temporal transformer blocks): the
  outer hook sees only what is saved outside checkpointed regions. Added to it: the regions'
  inputs that the checkpoints keep, and the largest region's own saved tensors (what backward
  recomputes at once), measured per region by a hook run inside each ``checkpoint`` call.
* The fake-tensor figures equal those of real CPU tensors (``tests/test_train_memory_benchmark.py``
  compares them on ``tiny``); what differs from a CUDA run is kernel choice, e.g. attention
  saves what a flash-attention kernel saves (q, k, v, output, log-sum-exp), not the matrix.
* DDP is built as the trainer builds it, with ``gradient_as_bucket_view=True``: gradients are
  views into the all-reduce buckets, so there is no second gradient-sized copy.
* Not measured (covered by the overhead allowance): backward's transient gradient buffers,
  the frozen VAE/image-encoder forward before the U-Nets (no grad, freed before they run),
  allocator fragmentation and kernel workspaces.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from spatialdreamer.models import conditioning
from spatialdreamer.models.attention_processors import attach_reference_fusion
from spatialdreamer.models.configs import ModelConfig, _denoiser_kwargs, get_config
from spatialdreamer.models.denoiser import SpatialDreamerDenoiser
from spatialdreamer.models.refinernet import RefinerNet

GIB = 2**30
VAE_FACTOR = 8  # SVD / SD VAEs: 576x1024 frames -> 72x128 latents
CONTEXT_GIB = 1.5  # CUDA context + cuBLAS/cuDNN handles per process
SLACK = 0.10  # allocator fragmentation, workspaces, transient gradient buffers
CAPACITY_GIB = {"80 GB": 79.6, "141 GB": 139.8}  # H100/A100 80 GB, H200 141 GB (usable GiB)

# CUDA autocast runs these in fp32 (torch.amp docs: "CUDA ops that can autocast to float32");
# CPU autocast leaves them in their input dtype, so they are upcast here by hand.
_FP32_OPS = frozenset(
    [
        "group_norm",
        "layer_norm",
        "native_layer_norm",
        "softmax",
        "log_softmax",
        "exp",
        "expm1",
        "log",
        "log1p",
        "log2",
        "log10",
        "pow",
        "__pow__",
        "__rpow__",
        "rsqrt",
        "reciprocal",
        "sum",
        "cumsum",
        "cumprod",
        "prod",
        "norm",
        "normalize",
        "mse_loss",
        "l1_loss",
        "smooth_l1_loss",
        "cross_entropy",
        "nll_loss",
        "kl_div",
        "cosine_similarity",
        "softplus",
        "erfinv",
        "acos",
        "asin",
        "cosh",
        "sinh",
        "tan",
        "cdist",
        "pdist",
        "dist",
        "renorm",
        "binary_cross_entropy_with_logits",
    ]
)


class _CudaAutocastFp32(TorchFunctionMode):
    """Give CUDA autocast's fp32 ops fp32 inputs while CPU autocast is on."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_autocast_enabled("cpu") and getattr(func, "__name__", "") in _FP32_OPS:

            def up(x):
                if isinstance(x, torch.Tensor) and x.dtype in (torch.bfloat16, torch.float16):
                    return x.float()
                return x

            args, kwargs = tree_map(up, (args, kwargs))
        return func(*args, **kwargs)


def _storage(t: torch.Tensor):
    s = t.untyped_storage()
    return s._cdata, s


def _is_weight_cast(t: torch.Tensor) -> bool:
    """An autocast copy of a parameter (``param.to(bf16)``), or a view of one."""
    base = t._base if t._base is not None else t
    fn = base.grad_fn
    if fn is None or fn.name() != "ToCopyBackward0":
        return False
    nxt = fn.next_functions[0][0] if fn.next_functions else None
    return type(nxt).__name__ == "AccumulateGrad" and isinstance(nxt.variable, torch.nn.Parameter)


_BLOCKS = frozenset(
    [
        "BasicTransformerBlock",
        "TemporalBasicTransformerBlock",
        "SpatioTemporalResBlock",
        "ResnetBlock2D",
        "Downsample2D",
        "Upsample2D",
    ]
)
_WRAPPERS = frozenset(["TransformerSpatioTemporalModel", "Transformer2DModel"])


class _ModuleStack:
    """Which block is running, to attribute saved tensors to it (global module hooks)."""

    def __init__(self) -> None:
        self.stack: list[str] = []

    def where(self) -> str:
        for name in self.stack:
            if name in _BLOCKS:
                return name
        for name in reversed(self.stack):
            if name in _WRAPPERS:
                return f"{name} norm/proj"
        return "other (stem, embeddings, heads, loss)"

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def pre(module, args):
            self.stack.append(type(module).__name__)

        def post(module, args, output):
            self.stack.pop()

        handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@dataclass
class _Saved:
    """Distinct storages that autograd saved for backward, split into activations and weight casts."""

    skip: set = field(default_factory=set)
    acts: dict = field(default_factory=dict)
    casts: dict = field(default_factory=dict)
    modules: _ModuleStack | None = None
    owner: dict = field(default_factory=dict)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key, s = _storage(t)
        if key not in self.skip:
            (self.casts if _is_weight_cast(t) else self.acts)[key] = s
            if self.modules is not None:
                self.owner.setdefault(key, self.modules.where())
        return t

    def by_owner(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, s in self.acts.items():
            name = self.owner.get(key, "?")
            out[name] = out.get(name, 0) + s.nbytes()
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def act_bytes(self, exclude: set | None = None) -> int:
        return sum(s.nbytes() for k, s in self.acts.items() if not exclude or k not in exclude)

    def cast_bytes(self) -> int:
        return sum(s.nbytes() for s in self.casts.values())

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield


@dataclass
class _Regions:
    """Checkpointed regions: their kept inputs and, per region, what backward recomputes."""

    skip: set
    inputs: dict = field(default_factory=dict)
    largest: int = 0
    largest_name: str = ""
    count: int = 0

    @contextlib.contextmanager
    def patch(self) -> Iterator[None]:
        original = torch.utils.checkpoint.checkpoint

        def checkpoint(function, *args, **kwargs):
            for a in args:
                if isinstance(a, torch.Tensor):
                    key, s = _storage(a)
                    self.inputs[key] = s
            region = _Saved(skip=self.skip)

            def run(*a, **k):
                # Innermost hooks win: this region's tensors are counted here (and kept, which
                # costs nothing on fake tensors) instead of being dropped by the checkpoint.
                with region.hooks():
                    return function(*a, **k)

            out = original(run, *args, **kwargs)
            size = region.act_bytes() + region.cast_bytes()
            self.count += 1
            if size > self.largest:
                owner = getattr(function, "__self__", function)
                self.largest, self.largest_name = size, type(owner).__name__
            return out

        torch.utils.checkpoint.checkpoint = checkpoint
        try:
            yield
        finally:
            torch.utils.checkpoint.checkpoint = original


def build_meta(cfg: ModelConfig) -> tuple[SpatialDreamerDenoiser, RefinerNet]:
    """The config's denoiser and RefinerNet on the meta device (no memory), fusion attached."""
    with torch.device("meta"):
        denoiser = SpatialDreamerDenoiser(**_denoiser_kwargs(cfg))
        refinernet = RefinerNet.from_denoiser(
            denoiser, til_weight=cfg.til_weight, til_frames=cfg.til_frames, copy_weights=False
        )
    attach_reference_fusion(denoiser, refinernet)
    return denoiser, refinernet


def _fake_(module: torch.nn.Module, mode: FakeTensorMode) -> None:
    """Replace meta parameters and buffers by fake CPU tensors in place (``.to()`` cannot)."""
    with mode:
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    fake = torch.empty(p.shape, dtype=p.dtype)
                    sub._parameters[name] = torch.nn.Parameter(fake, requires_grad=p.requires_grad)
            for name, b in list(sub._buffers.items()):
                if b is not None:
                    sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype)


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@dataclass
class Checkpointed:
    """Activation bytes with one checkpointing level (measured)."""

    outer: int  # saved outside checkpointed regions (+ held RefinerNet features)
    inputs: int  # inputs the checkpoints keep that nothing else saved
    largest: int  # largest region's recompute footprint
    largest_name: str
    regions: int
    by_owner: dict[str, int]

    @property
    def total(self) -> int:
        return self.outer + self.inputs + self.largest


@dataclass
class Activations:
    """Measured bytes of one training forward (per GPU, for the given batch)."""

    refiner: int  # saved by RefinerNet (no checkpointing)
    denoiser: int  # saved by the denoiser and the loss (no checkpointing)
    features: int  # RefinerNet features held for fusion and not otherwise saved
    casts: int  # bf16 weight copies made by autocast
    by_owner: dict[str, int]
    checkpointed: Checkpointed  # with enable_gradient_checkpointing()
    seconds: float

    @property
    def plain(self) -> int:
        return self.refiner + self.denoiser + self.features


def latent_size(cfg: ModelConfig) -> tuple[int, int]:
    """Latent height and width at the config's training resolution."""
    factor = cfg.vae_patch_size if cfg.vae == "space_to_depth" else VAE_FACTOR
    return cfg.train_resolution[0] // factor, cfg.train_resolution[1] // factor


def _forward(cfg: ModelConfig, batch: int, checkpointing: bool, fake: bool = True) -> dict:
    """One training forward on fake tensors, with or without ``enable_gradient_checkpointing()``
    on both U-Nets. ``fake=False`` runs real CPU tensors instead (small configs only: it checks
    the fake-tensor accounting)."""
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    denoiser, refinernet = build_meta(cfg)
    for model in (denoiser, refinernet):
        if fake:
            _fake_(model, mode)
        else:
            model.to_empty(device="cpu")
            for p in model.parameters():
                torch.nn.init.normal_(p.data, std=0.02)
        model.train()
        if checkpointing:
            model.enable_gradient_checkpointing()
    params = {_storage(p)[0] for m in (denoiser, refinernet) for p in m.parameters()}
    modules = _ModuleStack()
    saved = _Saved(skip=params, modules=modules)
    regions = _Regions(skip=params)
    height, width = latent_size(cfg)
    frames, c = cfg.num_frames, cfg.latent_channels
    out: dict = {}
    with (
        mode,
        regions.patch(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        _CudaAutocastFp32(),
        modules.track(),
        saved.hooks(),
    ):
        z0, z_ref, z_render = (torch.randn(batch, frames, c, height, width) for _ in range(3))
        mask = torch.zeros(batch, frames, 1, height, width)
        context = torch.zeros(batch, 1, cfg.cross_attention_dim)
        features = conditioning.encode_reference(refinernet, z_ref, context)
        out["refiner"] = saved.act_bytes()
        v = conditioning.predict_velocity(
            denoiser,
            refinernet,
            noisy_latents=z0,
            timestep=torch.full((batch,), 0.5),
            rendered_latents=z_render,
            mask_latents=mask,
            reference_latents=z_ref,
            encoder_hidden_states=context,
            added_time_ids=conditioning.added_time_ids(denoiser, batch),
            deviation_strength=torch.full((batch,), 0.1),
            reference_features=features,
        )
        loss = F.mse_loss(v.float(), z0)
        held = {_storage(t)[0]: _storage(t)[1] for t in features.values()}
    out["total"] = saved.act_bytes()
    out["features"] = sum(s.nbytes() for k, s in held.items() if k not in saved.acts)
    out["casts"] = saved.cast_bytes()
    out["ckpt_inputs"] = sum(s.nbytes() for k, s in regions.inputs.items() if k not in saved.acts)
    out["largest"], out["largest_name"], out["regions"] = regions.largest, regions.largest_name, regions.count
    out["by_owner"] = saved.by_owner()
    del loss
    return out


def measure_activations(cfg: ModelConfig, batch: int = 1) -> Activations:
    start = time.perf_counter()
    plain = _forward(cfg, batch, False)
    run = _forward(cfg, batch, True)
    if run["regions"] == 0:
        raise RuntimeError("gradient checkpointing checkpointed nothing; cannot measure it")
    checkpointed = Checkpointed(
        outer=run["total"] + run["features"],
        inputs=run["ckpt_inputs"],
        largest=run["largest"],
        largest_name=run["largest_name"],
        regions=run["regions"],
        by_owner=run["by_owner"],
    )
    return Activations(
        refiner=plain["refiner"],
        denoiser=plain["total"] - plain["refiner"],
        features=plain["features"],
        casts=plain["casts"],
        by_owner=plain["by_owner"],
        checkpointed=checkpointed,
        seconds=time.perf_counter() - start,
    )


def _frozen_counts(cfg: ModelConfig) -> dict[str, int]:
    """Frozen components the trainer keeps on every GPU in fp32 (VAE, image encoder)."""
    from diffusers import AutoencoderKLTemporalDecoder

    from spatialdreamer.models import configs

    out = {}
    with torch.device("meta"):
        if cfg.vae == "temporal":
            vae = AutoencoderKLTemporalDecoder(  # SVD's VAE
                down_block_types=("DownEncoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                latent_channels=cfg.latent_channels,
            )
            out["VAE"] = count(vae)
        make_encoder = getattr(configs, "_make_image_encoder", None)
        if cfg.image_encoder and make_encoder is not None:
            out["image encoder"] = count(make_encoder(cfg))
    return out


def _units(model: torch.nn.Module) -> list[int]:
    """Parameter counts of the FSDP units (down/mid/up blocks; the rest is the root unit)."""
    blocks = [*model.down_blocks, model.mid_block, *model.up_blocks]
    sizes = [count(b) for b in blocks]
    return [*sizes, count(model) - sum(sizes)]


@dataclass
class Row:
    label: str
    parts: dict[str, float]  # GiB

    @property
    def total(self) -> float:
        return sum(self.parts.values())


COLUMNS = ("weights", "grads", "AdamW", "EMA", "frozen", "bf16 wts", "acts", "ovh")
LEVELS = ("no ckpt", "ckpt")
SETUPS = ("1 GPU", "{gpus} GPUs DDP", "{gpus} GPUs FSDP")  # row labels: f"{setup}, {level}"


def _top(by_owner: dict[str, int], k: int = 4) -> str:
    return ", ".join(f"{name} {size / GIB:.1f}" for name, size in list(by_owner.items())[:k])


def plan(cfg: ModelConfig, batch: int, gpus: int) -> tuple[list[str], list[Row]]:
    denoiser, refinernet = build_meta(cfg)
    n_den, n_ref = count(denoiser), count(refinernet)
    n = n_den + n_ref
    frozen = _frozen_counts(cfg)
    acts = measure_activations(cfg, batch)
    units = _units(denoiser) + _units(refinernet)
    h, w = cfg.train_resolution
    lh, lw = latent_size(cfg)
    lines = [
        f"== {cfg.name}: {cfg.num_frames} frames, {h}x{w} (latents {lh}x{lw}), "
        f"{batch} sample(s) per GPU, bf16 autocast, fp32 master weights, AdamW ==",
        f"parameters: denoiser {n_den / 1e6:,.1f} M, RefinerNet {n_ref / 1e6:,.1f} M, trainable "
        f"{n / 1e6:,.1f} M; frozen fp32: "
        + (", ".join(f"{k} {v / 1e6:,.1f} M" for k, v in frozen.items()) or "none counted"),
        f"one fp32 copy of the trainable params {4 * n / GIB:.2f} GiB (master weights, gradients, EMA "
        f"each), AdamW state {8 * n / GIB:.2f} GiB",
        f"activations (measured in {acts.seconds:.1f} s), no ckpt: {acts.plain / GIB:.2f} GiB = RefinerNet "
        f"{acts.refiner / GIB:.2f} + denoiser & loss {acts.denoiser / GIB:.2f} + held RefinerNet features "
        f"{acts.features / GIB:.2f}; autocast's bf16 weight copies {acts.casts / GIB:.2f} GiB",
        f"  largest savers, GiB: {_top(acts.by_owner)}",
    ]
    c = acts.checkpointed
    lines += [
        f"ckpt: {c.total / GIB:.2f} GiB = saved outside {c.regions} checkpointed regions "
        f"{c.outer / GIB:.2f} + inputs kept only by them {c.inputs / GIB:.2f} + largest region's "
        f"recompute {c.largest / GIB:.2f} ({c.largest_name})",
        f"  saved outside regions, GiB: {_top(c.by_owner)}",
        "ckpt = enable_gradient_checkpointing() of both U-Nets (resnets, spatial and temporal "
        "transformer blocks)",
    ]
    frozen_gib = 4 * sum(frozen.values()) / GIB
    levels = dict(zip(LEVELS, (acts.plain, c.total), strict=True))
    rows = []
    setups = ((SETUPS[0], 1), (SETUPS[1].format(gpus=gpus), 1), (SETUPS[2].format(gpus=gpus), gpus))
    for label, shards in setups:
        for level, act in levels.items():
            if shards > 1:
                # FSDP2 bf16 compute params: RefinerNet stays unsharded from its forward to its
                # backward (reshard_after_forward=False); denoiser units are gathered one at a
                # time plus one prefetched; the largest unit's bf16 + fp32 gradient is transient.
                bf16 = 2 * n_ref + 2 * 2 * max(_units(denoiser)) + (2 + 4) * max(units)
            else:
                bf16 = acts.casts
            parts = {
                "weights": 4 * n / shards / GIB,
                "grads": 4 * n / shards / GIB,  # DDP: the buckets themselves (bucket views)
                "AdamW": 8 * n / shards / GIB,
                "EMA": 4 * n / shards / GIB,
                "frozen": frozen_gib,
                "bf16 wts": bf16 / GIB,
                "acts": act / GIB,
            }
            parts["ovh"] = CONTEXT_GIB + SLACK * (parts["bf16 wts"] + parts["acts"])
            rows.append(Row(f"{label}, {level}", parts))
    return lines, rows


def render(rows: list[Row]) -> list[str]:
    head = f"{'per GPU, GiB':<30}" + "".join(f"{c:>9}" for c in COLUMNS) + f"{'total':>9}"
    head += "".join(f"{'fits ' + k:>13}" for k in CAPACITY_GIB)
    out = [head]
    for row in rows:
        line = f"{row.label:<30}" + "".join(f"{row.parts[c]:>9.2f}" for c in COLUMNS) + f"{row.total:>9.2f}"
        line += "".join(f"{'yes' if row.total <= cap else 'no':>13}" for cap in CAPACITY_GIB.values())
        out.append(line)
    return out


def fit_summary(name: str, rows: list[Row], gpus: int, capacity: str = "80 GB") -> list[str]:
    """Whether the config fits ``capacity`` per GPU under DDP (one whole replica per GPU) and
    under FSDP (one replica sharded over ``gpus`` GPUs), with and without checkpointing."""
    cap = CAPACITY_GIB[capacity]
    by_label = {row.label: row for row in rows}
    out = [f"{name}: fits one {capacity} GPU ({cap} GiB) per replica?"]
    for setup, how in (("DDP", "one replica per GPU"), ("FSDP", f"one replica sharded over {gpus} GPUs")):
        verdicts = []
        for level in reversed(LEVELS):
            total = by_label[f"{gpus} GPUs {setup}, {level}"].total
            verdicts.append(f"{level}: {'YES' if total <= cap else 'NO'} ({total:.1f} GiB per GPU)")
        out.append(f"  {setup:<4} ({how}): " + "; ".join(verdicts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["full", "base"])
    parser.add_argument("--batch", type=int, default=1, help="samples per GPU")
    parser.add_argument("--gpus", type=int, default=8, help="data-parallel GPUs (DDP and FSDP rows)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "Assumptions: fp32 master weights, fp32 gradients and EMA (one copy), AdamW (2 fp32 moments); "
        "frozen VAE/image encoder fp32 on every GPU;\n"
        "DDP as the trainer builds it (gradient_as_bucket_view=True: gradients live in the all-reduce "
        "buckets, no extra copy); FSDP2 = spatialdreamer.train.parallel.shard_loss_module\n"
        "(bf16 params, fp32 reduce; master, grads, AdamW and EMA sharded); 'bf16 wts' = autocast's weight "
        "copies (DDP, 1 GPU) or FSDP's unsharded bf16 params + grad buffers;\n"
        f"'ovh' = CUDA context {CONTEXT_GIB} GiB + {SLACK:.0%} of (bf16 wts + acts) for fragmentation, "
        "workspaces and backward's transient buffers (not measured). 'fits' compares the total\n"
        f"with {', '.join(f'{k} = {v} GiB' for k, v in CAPACITY_GIB.items())}. Frames-stage training "
        "(temporal layers frozen) needs less: no grads/AdamW/EMA for them.\n"
    )
    for name in args.configs:
        lines, rows = plan(get_config(name), args.batch, args.gpus)
        print("\n".join(lines + render(rows) + fit_summary(name, rows, args.gpus)) + "\n")


if __name__ == "__main__":
    main()
