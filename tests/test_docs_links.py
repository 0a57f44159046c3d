"""The documentation stands on its own: every link in the README and docs/ points at a file the
repository holds (or at the web), never outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "manifests" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_resolves_inside_the_repository():
    checked = 0
    for document in _documents():
        for target in _LINK.findall(document.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (document.parent / target.split("#", 1)[0]).resolve()
            assert path.is_relative_to(ROOT), f"{document.name} links outside the repository: {target}"
            assert path.exists(), f"{document.name} links to a missing file: {target}"
            checked += 1
    assert checked >= 5


def test_the_design_document_covers_method_layout_and_contracts():
    text = (ROOT / "docs" / "design.md").read_text()
    for heading in ("## The method", "## Layout", "## Contracts"):
        assert heading in text
    assert "docs/design.md" in (ROOT / "README.md").read_text()
