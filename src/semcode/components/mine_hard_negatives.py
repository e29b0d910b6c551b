"""Component mine_hard_negatives: encoder + pairs -> pairs with hard_negatives (semcode.stages.mine_hard_negatives).

GPU_IMAGE: encoding the train queries and codes is nearly all of the work (seconds on a GPU, minutes on
CPU cores), and FAISS' exact search runs on the GPU there too; the stage falls back to the CPU (device
auto), so the same image also serves a CPU-only node and kfp.local.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from semcode.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def mine_hard_negatives(
    encoder: Input[Model],
    pairs: Input[Dataset],
    mined: Output[Dataset],
    report: Output[Metrics],
    count: int,
    range_min: int,
    range_max: int,
    relative_margin: float,
    absolute_margin: float,
    sampling: str,
    candidates: str,
    max_train_pairs: int,
    batch_size: int,
    max_length: int,
    seed: int,
    device: str,
    runtime: str,
):
    """Mine hard negatives for the train pairs with the encoder: exact FAISS search, then the filters.

    Args:
        encoder: train_encoder's output (the encoder is its encoder/ directory).
        pairs: the pairs to mine: ingest's, or an earlier round's mined pairs.
        mined: a pairs directory (train/ with hard_negatives filled, valid/ and test/ copied), with
            report.json, metrics.json and config.json beside the splits; train_encoder reads it as pairs.
        report: the report's scalars for the KFP UI (rows mined, negatives written, candidates removed
            per filter, median scores, seconds).
        count: hard negatives kept per pair.
        range_min: skip the best-ranked candidates up to this rank (ranks count from 0 without the gold).
        range_max: consider candidates ranked below this only.
        relative_margin: drop candidates scoring >= this fraction of the positive's score (0 = off).
        absolute_margin: drop candidates scoring >= the positive's score minus this (0 = off).
        sampling: top (the best-ranked survivors) or random (a seeded sample of them).
        candidates: the pool: sample (the mined rows' codes) or train (every train code).
        max_train_pairs: mine a seeded sample of this many train pairs and write only those (0 = all).
        batch_size: texts per encoder forward pass.
        max_length: tokens per text at most (0 = the encoder's own).
        seed: seed for the sample and random sampling.
        device: torch device: auto, cpu or cuda.
        runtime: torch, or onnx-int8 / onnx-fp32 (the encoder exported; faster on CPU).
    """
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from semcode import config
    from semcode.stages import mine_hard_negatives as stage

    stage_config = config.from_dict(
        stage.MineHardNegativesConfig,
        {
            "count": count,
            "range_min": range_min,
            "range_max": range_max,
            "relative_margin": relative_margin,
            "absolute_margin": absolute_margin,
            "sampling": sampling,
            "candidates": candidates,
            "max_train_pairs": max_train_pairs,
            "batch_size": batch_size,
            "max_length": max_length,
            "seed": seed,
            "device": device,
            "runtime": runtime,
        },
        source="mine_hard_negatives component",
    )
    with tempfile.TemporaryDirectory(prefix="semcode-mine-") as scratch:
        result = stage.run(stage_config, os.path.join(encoder.path, "encoder"), pairs.path, scratch)
        # The artifact is the pairs directory itself (what train_encoder's `pairs` input expects),
        # with the report, metrics and config beside the splits, as ingest does with its manifest.
        shutil.move(Path(scratch) / "pairs", mined.path)
        for entry in Path(scratch).iterdir():  # report.json, metrics.json, config.json
            shutil.move(entry, Path(mined.path) / entry.name)

    for name, value in result["metrics"].items():
        report.log_metric(name, value)
    # The scalars as a file too: kfp.local's cache takes an output artifact without a file for a
    # missing one and would never reuse this task.
    with open(report.path, "w") as handle:
        json.dump(report.metadata, handle, indent=2)
