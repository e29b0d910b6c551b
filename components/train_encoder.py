"""Component train_encoder: pairs + tokenizer -> encoder (semcode.stages.train_encoder, DeepSpeed, GPU)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_encoder(
    pairs: Input[Dataset],
    tokenizer: Input[Model],
    encoder: Output[Model],
    metrics: Output[Metrics],
    size: str,
    init_from: str,
    towers: str,
    embedding_dim: int,
    max_length: int,
    epochs: int,
    max_steps: int,
    batch_size: int,
    grad_accum: int,
    lr: float,
    warmup_ratio: float,
    temperature: float,
    learnable_temperature: bool,
    hard_negative_weight: float,
    max_hard_negatives: int,
    zero_stage: int,
    seed: int,
    eval_every: int,
    checkpoint_every: int,
    max_train_pairs: int,
    max_valid_pairs: int,
    time_budget_minutes: float,
    num_workers: int,
    init_encoder: Input[Model] = None,
):
    """Train the code search encoder (contrastive, DeepSpeed) on the pairs.

    Args:
        pairs: ingest's pairs (train, and valid for model selection).
        tokenizer: train_tokenizer's output; not used when starting from a checkpoint.
        encoder: the encoder in encoder/, with history.json, metrics.json and config.json beside it.
        metrics: training scalars for the KFP UI.
        init_encoder: continue from this encoder (an earlier train_encoder output) instead of init_from.
        size: encoder size when training from scratch.
        init_from: start from a checkpoint: a directory, s3://..., or minilm ('' = from scratch).
        towers: shared or separate query/code towers.
        embedding_dim: output dimension (0 = the default).
        max_length: tokens per query or code.
        epochs: passes over the training pairs (ignored when max_steps > 0).
        max_steps: optimizer steps (0 = as many as epochs gives).
        batch_size: pairs per micro-batch per GPU.
        grad_accum: micro-batches per optimizer step.
        lr: peak learning rate.
        warmup_ratio: warmup as a fraction of the total steps.
        temperature: InfoNCE temperature (the start value when learnable).
        learnable_temperature: learn the temperature.
        hard_negative_weight: weight of the hard-negative term (pairs mined by mine_hard_negatives; 0 = off).
        max_hard_negatives: hard negatives per pair used when hard_negative_weight > 0.
        zero_stage: DeepSpeed ZeRO stage.
        seed: seed for initialisation, data order and dropout.
        eval_every: validate every this many steps.
        checkpoint_every: checkpoint every this many steps.
        max_train_pairs: train on a sample of this many pairs (0 = all).
        max_valid_pairs: validate on a sample of this many pairs (0 = all).
        time_budget_minutes: stop after this much training (0 = none).
        num_workers: tokenizer worker processes feeding batches.
    """
    import json
    import os
    import shutil

    from semcode import config
    from semcode.stages import train_encoder as stage

    if init_encoder is not None:  # a later round continues from an earlier round's encoder
        init_from = os.path.join(init_encoder.path, "encoder")
    stage_config = config.from_dict(
        stage.TrainEncoderConfig,
        {
            "size": size,
            "init_from": init_from,
            "towers": towers,
            "embedding_dim": embedding_dim,
            "max_length": max_length,
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "lr": lr,
            "warmup_ratio": warmup_ratio,
            "temperature": temperature,
            "learnable_temperature": learnable_temperature,
            "hard_negative_weight": hard_negative_weight,
            "max_hard_negatives": max_hard_negatives,
            "zero_stage": zero_stage,
            "seed": seed,
            "eval_every": eval_every,
            "checkpoint_every": checkpoint_every,
            "max_train_pairs": max_train_pairs,
            "max_valid_pairs": max_valid_pairs,
            "time_budget_minutes": time_budget_minutes,
            "num_workers": num_workers,
        },
        source="train_encoder component",
    )
    result = stage.run(stage_config, pairs.path, tokenizer.path, encoder.path)
    # Checkpoints let one process resume; a pipeline task starts fresh and never resumes them, and
    # with optimizer state they are several times the model: they stay out of the artifact.
    for scratch in ("checkpoints", "best"):
        shutil.rmtree(os.path.join(encoder.path, scratch), ignore_errors=True)

    for name in ("steps", "train_seconds", "pairs_per_second", "final_loss", "best_valid_mrr", "temperature"):
        if isinstance(result.get(name), int | float):
            metrics.log_metric(name, result[name])
    # The scalars as a file too: kfp.local's cache takes an output artifact without a file for a
    # missing one and would never reuse this task.
    with open(metrics.path, "w") as handle:
        json.dump(metrics.metadata, handle, indent=2)
