"""What every component with a Metrics output does last: write the logged scalars to the artifact's file;
and what the training components add: their curves as an HTML artifact the KFP UI renders."""

from __future__ import annotations

import json
from typing import Any


def save_metrics_file(metrics: Any) -> None:
    """Write ``metrics.metadata`` (the scalars ``log_metric`` recorded) to ``metrics.path``.

    kfp.local's cache takes an output artifact without a file for a missing one and would never reuse
    the task; on a cluster the launcher uploads the file beside the metadata it records itself.
    """
    with open(metrics.path, "w") as handle:
        json.dump(metrics.metadata, handle, indent=2)


def save_curves_page(curves: Any, stage_out: str, title: str, result: dict) -> None:
    """Write a training stage's curves (``stage_out``/history.json) and per-rank table to the HTML
    artifact ``curves``: the KFP UI draws Metrics as six final numbers, an HTML artifact as a page."""
    import os

    from semcode.report import curves_html

    with open(os.path.join(stage_out, "history.json")) as handle:
        history = json.load(handle)
    with open(curves.path, "w") as handle:
        handle.write(curves_html(title, history, result))
