"""Component train_decoder: frozen encoder + pairs + tokenizer -> decoder (stages.train_decoder, GPU)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from semcode.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_decoder(
    encoder: Input[Model],
    onnx: Input[Model],
    pairs: Input[Dataset],
    tokenizer: Input[Model],
    decoder: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    size: str,
    prefix_tokens: int,
    token_bias: bool,
    max_length: int,
    skip_long_functions: bool,
    query_share: float,
    epochs: int,
    max_steps: int,
    batch_size: int,
    grad_accum: int,
    lr: float,
    warmup_ratio: float,
    zero_stage: int,
    precision: str,
    seed: int,
    eval_every: int,
    checkpoint_every: int,
    checkpoint_every_epochs: int,
    keep_checkpoints: int,
    max_train_pairs: int,
    max_valid_pairs: int,
    max_eval_pairs: int,
    generate_samples: int,
    generate_max_tokens: int,
    rerank_candidates: int,
    runtime: str,
    threads: int,
    time_budget_minutes: float,
    checkpoint_root: str,
    tensorboard_prefix: str,
    resume_run_id: str,
    run_id: str,
    task_name: str,
):
    """Train a decoder that writes code from the frozen encoder's embeddings; measure it on the test split.

    Args:
        encoder: train_encoder's output (the encoder in encoder/), frozen: it only embeds.
        onnx: export_onnx's output: the onnx runtimes run its files (the bundle's) as they are.
        pairs: ingest's pairs (train; test for the metrics; valid for evaluations during training).
        tokenizer: train_tokenizer's output: the decoder's vocabulary.
        decoder: the decoder in decoder/, with metrics.json, history.json, samples.jsonl and config.json.
        metrics: test metrics and training throughput for the KFP UI.
        curves: the training curves (loss and its parts, lr, grad norm, validation) and the per-rank table.
        size: decoder size (tiny, small, base).
        prefix_tokens: virtual tokens the embedding becomes, ahead of the code.
        token_bias: also map the embedding to a logit bias over the vocabulary (a bag-of-tokens prior).
        max_length: code tokens per function, <s> and </s> included.
        skip_long_functions: train only on functions that fit in max_length.
        query_share: share of training functions conditioned on their docstring's embedding.
        epochs: passes over the training functions (ignored when max_steps > 0).
        max_steps: optimizer steps (0 = as many as epochs gives).
        batch_size: functions per micro-batch per GPU.
        grad_accum: micro-batches per optimizer step.
        lr: peak learning rate.
        warmup_ratio: warmup as a fraction of the total steps.
        zero_stage: DeepSpeed ZeRO stage.
        precision: auto (bf16 on a GPU, fp32 on the CPU), bf16, fp16 (dynamic loss scaling) or fp32.
        seed: seed for initialisation, the samples and the data order.
        eval_every: evaluate on the valid split every this many steps (0 = at the end).
        checkpoint_every: checkpoint every this many steps.
        checkpoint_every_epochs: also checkpoint at the end of every this many epochs (0 = by steps only).
        keep_checkpoints: keep the newest this many checkpoints, locally and under checkpoint_root (0 = all).
        max_train_pairs: train on a sample of this many functions (0 = all).
        max_valid_pairs: valid functions evaluated during training (0 = none).
        max_eval_pairs: test functions for the metrics and the round-trip corpus (0 = all).
        generate_samples: test functions generated for parse rate, BLEU and round-trip retrieval.
        generate_max_tokens: tokens generated per sample at most.
        rerank_candidates: candidates per sample for the best-of-N (reranked_*) metrics; 1 = off.
        runtime: how the frozen encoder embeds: torch, onnx-int8 or onnx-fp32 (onnx: CPU).
        threads: torch CPU threads (0 = every core).
        time_budget_minutes: stop training after this much (0 = none).
        checkpoint_root: durable checkpoints: an s3:// prefix ('' = none); this task's are under <checkpoint_root>/<run>/<task_name>.
        tensorboard_prefix: live curves: an s3:// prefix (or mounted path) this task uploads its TensorBoard event files to while it trains, under <prefix>/<run>/<task_name> ('' = in the artifact only).
        resume_run_id: continue from that earlier run's checkpoints instead of this run's ('' = this run).
        run_id: this pipeline run's id (the pipeline passes dsl.PIPELINE_JOB_ID_PLACEHOLDER).
        task_name: this task's name in the pipeline (dsl.PIPELINE_TASK_NAME_PLACEHOLDER).
    """
    import os
    import shutil

    from semcode import config
    from semcode.components.scalars import save_curves_page, save_metrics_file
    from semcode.stages import train_decoder as stage
    from semcode.train.checkpoints import durable_location
    from semcode.train.history import TENSORBOARD_PREFIX_ENV

    stage_config = config.from_dict(
        stage.TrainDecoderConfig,
        {
            "size": size,
            "prefix_tokens": prefix_tokens,
            "token_bias": token_bias,
            "max_length": max_length,
            "skip_long_functions": skip_long_functions,
            "query_share": query_share,
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "lr": lr,
            "warmup_ratio": warmup_ratio,
            "zero_stage": zero_stage,
            "precision": precision,
            "seed": seed,
            "eval_every": eval_every,
            "checkpoint_every": checkpoint_every,
            "checkpoint_every_epochs": checkpoint_every_epochs,
            "keep_checkpoints": keep_checkpoints,
            "max_train_pairs": max_train_pairs,
            "max_valid_pairs": max_valid_pairs,
            "max_eval_pairs": max_eval_pairs,
            "generate_samples": generate_samples,
            "generate_max_tokens": generate_max_tokens,
            "rerank_candidates": rerank_candidates,
            "runtime": runtime,
            "threads": threads,
            "time_budget_minutes": time_budget_minutes,
            # this task's own place, the same on every retry: a retry resumes from it
            "checkpoint_root": durable_location(checkpoint_root, resume_run_id or run_id, task_name),
        },
        source="train_decoder component",
    )
    if tensorboard_prefix:  # read by the training log (semcode.train.history.live_log_dirs, live_log_upload)
        os.environ[TENSORBOARD_PREFIX_ENV] = durable_location(tensorboard_prefix, run_id, task_name)
    encoder_dir = os.path.join(encoder.path, "encoder")
    result = stage.run(
        stage_config, encoder_dir, pairs.path, tokenizer.path, decoder.path, onnx_dir=onnx.path
    )
    # The local checkpoints let one process resume (the durable ones, under checkpoint_root, let a retry);
    # with optimizer state they are several times the model: they stay out of the artifact.
    shutil.rmtree(os.path.join(decoder.path, "checkpoints"), ignore_errors=True)

    for name in (
        "test_loss",
        "test_perplexity",
        "test_token_accuracy",
        "parse_rate",
        "bleu",
        "round_trip_recall@1",
        "round_trip_recall@10",
        "query_parse_rate",
        "query_round_trip_recall@10",
        "reranked_parse_rate",
        "reranked_round_trip_recall@1",
        "reranked_round_trip_recall@10",
        "query_reranked_parse_rate",
        "query_reranked_round_trip_recall@10",
        "tokens_per_second",
        "steps",
        "train_seconds",
    ):
        if isinstance(result.get(name), int | float):
            metrics.log_metric(name, result[name])
    save_metrics_file(metrics)
    save_curves_page(curves, decoder.path, "train-decoder", result)
