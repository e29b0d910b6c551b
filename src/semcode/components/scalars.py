"""What every component with a Metrics output does last: write the logged scalars to the artifact's file."""

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
