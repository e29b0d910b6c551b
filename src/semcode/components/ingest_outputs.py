"""What the ingest components do last, inside their task: place the stage's output directory into the
pairs and corpus artifacts and log its counts. A module of its own because a task's kfp is the executor
runtime, without ``dsl.component``: a component body cannot import a module that defines components."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from semcode.components.scalars import save_metrics_file


def place_outputs(scratch: str, manifest: dict, pairs: Any, corpus: Any, metrics: Any) -> None:
    """Move a stage output directory into the artifacts: the corpus on its own, everything else with the
    pairs (manifest.json, config.json, eval/); log the counts for the KFP UI."""
    shutil.move(Path(scratch) / "corpus", corpus.path)
    shutil.move(Path(scratch) / "pairs", pairs.path)
    for entry in Path(scratch).iterdir():  # manifest.json, config.json, eval/
        shutil.move(entry, Path(pairs.path) / entry.name)
    for name in ("pairs", "corpus_rows", "eval_rows", "files_seen", "functions_found"):
        metrics.log_metric(name, manifest["totals"][name])
    for split, size in manifest["split"]["sizes"].items():
        metrics.log_metric(f"pairs_{split}", size)
    save_metrics_file(metrics)
