"""The jobs' YAML configs: found by name in this folder or given as a path."""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["CONFIG_DIR", "read_config"]

CONFIG_DIR = Path(__file__).parent


def read_config(
    name_or_path: str, prefix: str = "", listing: str = "*.yaml", kind: str = "config"
) -> tuple[Path, dict]:
    """``(path, settings)`` of ``<prefix><name>.yaml`` here or of a YAML path.

    Errors are one line: a missing config names the known ones (files matching ``listing``,
    shown without ``prefix``); bad YAML or a non-mapping names the file.
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{prefix}{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem.removeprefix(prefix) for p in CONFIG_DIR.glob(listing)))
        raise FileNotFoundError(f"{kind} {name_or_path!r} not found (a YAML path or one of: {known})")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config {path} is not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"config {path} must be a mapping of settings, got {type(values).__name__}")
    return path, values
