"""Real licence texts (the ones installed wheels ship in their .dist-info) and a small licensed checkout,
for the licence tests of the sources (tests/data/test_licenses.py) and of ingest."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

TOYPKG = Path(__file__).parent / "data" / "toypkg"


def shipped_licence(distribution: str, name: str) -> str:
    """A licence text an installed wheel ships in its .dist-info (real text, as found in repositories)."""
    files = importlib.metadata.distribution(distribution).files or []
    return next(f for f in files if f.name == name and ".dist-info" in f.parts[0]).read_text()


MIT = shipped_licence("pyyaml", "LICENSE")
APACHE = shipped_licence("license-expression", "apache-2.0.LICENSE")
BSD3 = shipped_licence("licenseclassifier", "LICENSE")


def licensed_tree(root: Path) -> Path:
    """toypkg with a BSD-3-Clause LICENSE at its root and a sub-folder under MIT and Apache-2.0 (Rust's two
    files side by side)."""
    repo = root / "licensed"
    shutil.copytree(TOYPKG, repo)
    (repo / "LICENSE").write_text(BSD3)
    dual = repo / "dual"
    dual.mkdir()
    (dual / "LICENSE-MIT").write_text(MIT)
    (dual / "LICENSE-APACHE").write_text(APACHE)
    shutil.copy(TOYPKG / "geometry.py", dual / "shapes.py")
    return repo
