"""Component train_encoder: pairs + tokenizer -> encoder (semcode.stages.train_encoder, DeepSpeed, GPU)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from semcode.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_encoder(
    pairs: Input[Dataset],
    tokenizer: Input[Model],
    encoder: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    size: str,
    init_from: str,
    towers: str,
    embedding_dim: int,
    max_length: int,
    inference_max_length: int,
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
    distill_weight: float,
    distill_temperature: float,
    teacher_false_negatives: bool,
    teacher_filter_top_k: int,
    teacher_filter_pool: int,
    docstring_share: float,
    zero_stage: int,
    precision: str,
    seed: int,
    eval_every: int,
    checkpoint_every: int,
    checkpoint_every_epochs: int,
    keep_checkpoints: int,
    max_train_pairs: int,
    max_valid_pairs: int,
    time_budget_minutes: float,
    num_workers: int,
    num_nodes: int,
    trainjob_runtime: str,
    trainjob_image: str,
    gpu_count: int,
    gpu_node_selector: dict,
    gpu_tolerations: list,
    s3_secret_name: str,
    checkpoint_root: str,
    tensorboard_prefix: str,
    resume_run_id: str,
    run_id: str,
    task_name: str,
    init_encoder: Input[Model] = None,
):
    """Train the code search encoder (contrastive, DeepSpeed) on the pairs.

    Args:
        pairs: ingest's pairs (train, and valid for model selection).
        tokenizer: train_tokenizer's output; not used when starting from a checkpoint.
        encoder: the encoder in encoder/, with history.json, metrics.json and config.json beside it.
        metrics: training scalars for the KFP UI.
        curves: the training curves (loss and its parts, lr, grad norm, validation) and the per-rank table.
        init_encoder: continue from this encoder (an earlier train_encoder output) instead of init_from.
        size: encoder size when training from scratch.
        init_from: start from a checkpoint: a directory, s3://..., or minilm ('' = from scratch).
        towers: shared or separate query/code towers.
        embedding_dim: output dimension (0 = the default).
        max_length: tokens per query or code.
        inference_max_length: tokens per text of the saved encoder (0 = max_length).
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
        distill_weight: weight of the KL term keeping the in-batch scores close to the starting checkpoint's
            (a frozen teacher; needs init_from or init_encoder; 0 = off).
        distill_temperature: temperature of both score distributions in that KL (0 = the contrastive one).
        teacher_false_negatives: hide in-batch candidates the starting checkpoint scores above the positive.
        teacher_filter_top_k: keep a train pair only when the starting checkpoint ranks its code in its
            query's top k among teacher_filter_pool pairs (0 = keep all).
        teacher_filter_pool: train pairs embedded for that filter (the others are dropped).
        docstring_share: share of train codes given their docstring back as first body line (seeded).
        zero_stage: DeepSpeed ZeRO stage.
        precision: auto (bf16 on a GPU, fp32 on the CPU), bf16, fp16 (dynamic loss scaling) or fp32.
        seed: seed for initialisation, data order and dropout.
        eval_every: validate every this many steps.
        checkpoint_every: checkpoint every this many steps.
        checkpoint_every_epochs: also checkpoint at the end of every this many epochs (0 = by steps only).
        keep_checkpoints: keep the newest this many checkpoints, locally and under checkpoint_root (0 = all).
        max_train_pairs: train on a sample of this many pairs (0 = all).
        max_valid_pairs: validate on a sample of this many pairs (0 = all).
        time_budget_minutes: stop after this much training (0 = none).
        num_workers: tokenizer worker processes feeding batches.
        num_nodes: nodes to train on; above 1 this task submits a Kubeflow Trainer TrainJob running the same
            stage on num_nodes x gpu_count GPUs, waits for it and collects its output (semcode.cluster.trainjob).
        trainjob_runtime: the TrainJob's ClusterTrainingRuntime (torch-distributed or deepspeed-distributed).
        trainjob_image: the image of the TrainJob's pods (the GPU image).
        gpu_count: GPUs per TrainJob node.
        gpu_node_selector: node selector of the TrainJob's pods.
        gpu_tolerations: tolerations of the TrainJob's pods.
        s3_secret_name: Secret with the S3 credentials the TrainJob's pods read and write artifacts with.
        checkpoint_root: durable checkpoints: an s3:// prefix ('' = none); this task's are under <checkpoint_root>/<run>/<task_name>.
        tensorboard_prefix: live curves: an s3:// prefix (or mounted path) this task uploads its TensorBoard event files to while it trains, under <prefix>/<run>/<task_name> ('' = in the artifact only).
        resume_run_id: continue from that earlier run's checkpoints instead of this run's ('' = this run).
        run_id: this pipeline run's id (the pipeline passes dsl.PIPELINE_JOB_ID_PLACEHOLDER).
        task_name: this task's name in the pipeline (dsl.PIPELINE_TASK_NAME_PLACEHOLDER).
    """
    import os
    import shutil

    from semcode import config
    from semcode.cluster import trainjob
    from semcode.components.scalars import save_curves_page, save_metrics_file
    from semcode.stages import train_encoder as stage
    from semcode.train.checkpoints import durable_location
    from semcode.train.history import TENSORBOARD_PREFIX_ENV

    if init_encoder is not None:  # a later round continues from an earlier round's encoder
        init_from = os.path.join(init_encoder.path, "encoder")
        if num_nodes > 1:  # the TrainJob's pods cannot see this pod's disk; they read the store
            init_from = trainjob.to_s3_uri(init_encoder.uri) + "/encoder"
    stage_config = config.from_dict(
        stage.TrainEncoderConfig,
        {
            "size": size,
            "init_from": init_from,
            "towers": towers,
            "embedding_dim": embedding_dim,
            "max_length": max_length,
            "inference_max_length": inference_max_length,
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
            "distill_weight": distill_weight,
            "distill_temperature": distill_temperature,
            "teacher_false_negatives": teacher_false_negatives,
            "teacher_filter_top_k": teacher_filter_top_k,
            "teacher_filter_pool": teacher_filter_pool,
            "docstring_share": docstring_share,
            "zero_stage": zero_stage,
            "precision": precision,
            "seed": seed,
            "eval_every": eval_every,
            "checkpoint_every": checkpoint_every,
            "checkpoint_every_epochs": checkpoint_every_epochs,
            "keep_checkpoints": keep_checkpoints,
            "max_train_pairs": max_train_pairs,
            "max_valid_pairs": max_valid_pairs,
            "time_budget_minutes": time_budget_minutes,
            "num_workers": num_workers,
            # this task's own place, the same on every retry: a retry resumes from it
            "checkpoint_root": durable_location(checkpoint_root, resume_run_id or run_id, task_name),
        },
        source="train_encoder component",
    )
    if tensorboard_prefix:  # read by the training log (semcode.train.history.live_log_dirs, live_log_upload)
        os.environ[TENSORBOARD_PREFIX_ENV] = durable_location(tensorboard_prefix, run_id, task_name)
    result = trainjob.run_distributed(
        "train-encoder",
        trainjob.config_flags(stage_config),
        num_nodes,
        inputs={"pairs": pairs.uri, "tokenizer": tokenizer.uri},
        out_dir=encoder.path,
        work_uri=encoder.uri + "-trainjob",
        image=trainjob_image,
        gpus_per_node=gpu_count,
        runtime=trainjob_runtime,
        s3_secret_name=s3_secret_name,
        node_selector=gpu_node_selector,
        tolerations=gpu_tolerations,
    )
    if result is None:  # one node: train in this pod
        result = stage.run(stage_config, pairs.path, tokenizer.path, encoder.path)
    # The local checkpoints let one process resume (the durable ones, under checkpoint_root, let a retry);
    # with optimizer state they are several times the model: they stay out of the artifact.
    for scratch in ("checkpoints", "best"):
        shutil.rmtree(os.path.join(encoder.path, scratch), ignore_errors=True)

    for name in ("steps", "train_seconds", "pairs_per_second", "final_loss", "best_valid_mrr", "temperature"):
        if isinstance(result.get(name), int | float):
            metrics.log_metric(name, result[name])
    save_metrics_file(metrics)
    save_curves_page(curves, encoder.path, "train-encoder", result)
