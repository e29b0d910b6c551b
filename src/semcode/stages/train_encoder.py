"""Stage train_encoder: contrastive training of the code search encoder with DeepSpeed.

Reads the ingest ``pairs/`` (train, and valid for model selection) and a tokenizer, or starts from a
checkpoint (``init_from``: a saved semcode encoder, any transformers / sentence-transformers directory,
an s3:// prefix, or ``minilm`` for all-MiniLM-L6-v2; its tokenizer then replaces ours). Writes::

    out/encoder/                 the final encoder (CodeSearchEncoder.save: sentence-transformers loadable)
    out/checkpoints/step-NNNNNN/ resumable checkpoints (see semcode.train.checkpoints), and `latest`; each
                                 is an encoder too: --encoder of export-onnx, mine-hard-negatives, build-index
    out/best/model.safetensors   weights at the best validation MRR so far (+ best.json)
    out/history.json             per step: loss, contrastive (+ hard, temperature when used), lr; evaluations
    out/metrics.json             steps, seconds, pairs/s, best / final / zero-shot validation MRR
    out/config.json, out/deepspeed_config.json

The output appears whole or not at all: it grows in ``.OUT.partial`` beside ``out`` (checkpoints and
TensorBoard logs included) and replaces ``out`` when complete; a run stopped before its end keeps that
partial, and the same command with ``--resume`` continues it (semcode.train.checkpoints.training_output).

The final encoder is the one with the best validation MRR (full-corpus protocol on up to
``max_valid_pairs`` valid pairs, evaluated every ``eval_every`` steps and at the end), not simply the
last step: on small data contrastive training overfits, and the pipeline evaluates what it ships on
the test split anyway. Without a valid split the last step is shipped. Training reads ``max_length``
tokens per text; the saved encoder (and validation, which selects it) embeds ``inference_max_length``
(0 = the same): the local preset trains on whole functions (256) and searches at 128, which scored
better on CoSQA than 128 alone and on the held-out split than 256 alone (bench/RESULTS.md).

``train`` is five numbered steps, each a small helper of this module: the plan (the steps, and the run's
shape a resume must match); the loss (and a frozen teacher), AdamW, the LR schedule and the DeepSpeed
engine; resume; the loop; the shipped weights. The loop itself is semcode.train.loop.run_steps, shared
with train_decoder: this stage gives it three callbacks, its micro-batches, forward pass and evaluation.
Each micro-batch is encoded by both towers, the loss is symmetric in-batch InfoNCE (plus a hard-negative
term for rows whose ``hard_negatives`` column is filled, when ``hard_negative_weight`` > 0; plus, when
``distill_weight`` > 0, a KL term keeping the in-batch scores close to those of a frozen copy of
``init_from``), DeepSpeed does backward, accumulation, clipping and the update, and the LR follows linear
warmup then cosine decay. With gradient accumulation the in-batch negatives are those of each
micro-batch. Everything is seeded, and the data order is a function of (seed, epoch), so ``--resume``
continues exactly where the last checkpoint left off; ``--resume-from PATH`` starts a new output folder
from any complete checkpoint of a run of the same shape (model, tokenizer, data, batch, schedule,
precision). ``--precision`` (semcode.train.distributed.resolve_precision): auto is bf16 on a GPU and fp32
on the CPU; fp16 (DeepSpeed's loss scaling) for GPUs without bf16; fp32 when half precision diverges.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semcode import config as cfg
from semcode.config import ConfigError, field
from semcode.contract import (
    ENCODER_SIZE_NAMES,
    MAX_LENGTH_LIMIT,
    PRECISION_HELP,
    RESUME_FROM_HELP,
    TOWERS,
    TRAINING_PRECISIONS,
)
from semcode.progress import log

TAG = "train-encoder"
SIZES = ENCODER_SIZE_NAMES
VALID_METRICS = ("mrr", "recall@1", "recall@5", "recall@10", "ndcg@10")


@dataclass(frozen=True)
class TrainEncoderConfig:
    size: str = field("small", f"encoder size when training from scratch: {'|'.join(SIZES)}")
    init_from: str = field(
        "", "start from a checkpoint: a directory, s3://..., or 'minilm' ('' = from scratch)"
    )
    towers: str = field("shared", "one tower for queries and code (shared) or one each (separate)")
    embedding_dim: int = field(
        0, "output dimension (0 = the size's default, or the checkpoint's hidden size)"
    )
    max_length: int = field(128, "tokens per query or code; longer texts are truncated")
    inference_max_length: int = field(
        0,
        "tokens per text of the saved encoder, what validation, evaluate, the index and search embed with "
        "(0 = max_length); training may see more than search needs",
    )
    epochs: int = field(
        3,
        "passes over the training pairs (ignored when max_steps > 0); 0 with max_steps 0: no training, "
        "init_from is validated and passed on as it is (hard-negative rounds start from it)",
    )
    max_steps: int = field(0, "optimizer steps to train (0 = as many as `epochs` gives)")
    batch_size: int = field(32, "pairs per micro-batch (per GPU); the in-batch negatives are the others")
    grad_accum: int = field(1, "micro-batches per optimizer step")
    lr: float = field(5e-4, "peak learning rate (about 5e-4 from scratch, 2e-5..5e-5 when fine-tuning)")
    weight_decay: float = field(0.01, "AdamW weight decay (not applied to biases and norms)")
    warmup_steps: int = field(0, "linear warmup steps (0 = warmup_ratio of the total steps)")
    warmup_ratio: float = field(0.05, "warmup as a fraction of the total steps when warmup_steps is 0")
    min_lr_ratio: float = field(0.1, "the cosine decay ends at lr * min_lr_ratio")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0 = no clipping)")
    temperature: float = field(0.05, "InfoNCE temperature (the start value when learnable)")
    symmetric: bool = field(
        True, "also make each code pick its query among the batch's (else query -> code only)"
    )
    learnable_temperature: bool = field(False, "learn the temperature, clamped to [min, max]_temperature")
    min_temperature: float = field(0.01, "lower bound of a learnable temperature")
    max_temperature: float = field(1.0, "upper bound of a learnable temperature")
    hard_negative_weight: float = field(0.0, "weight of the hard-negative term (needs mined hard_negatives)")
    max_hard_negatives: int = field(4, "hard negatives per pair used when hard_negative_weight > 0")
    distill_weight: float = field(
        0.0,
        "weight of a KL term keeping the in-batch scores close to init_from's (a frozen teacher; 0 = none)",
    )
    distill_temperature: float = field(
        0.0, "temperature of both score distributions in the KL term (0 = the contrastive temperature)"
    )
    teacher_false_negatives: bool = field(
        False,
        "hide from the contrastive term the in-batch candidates the frozen init_from scores above the "
        "positive (likely right answers too)",
    )
    teacher_filter_top_k: int = field(
        0,
        "keep a train pair only when init_from ranks its code in the top k for its query among a pool of "
        "train codes (0 = keep all); the pool is teacher_filter_pool pairs, seeded",
    )
    teacher_filter_pool: int = field(
        2000, "train pairs embedded for teacher_filter_top_k (the rest are dropped)"
    )
    seed: int = field(0, "seed for initialisation, data order and dropout")
    eval_every: int = field(100, "validate every this many steps (0 = only at the end)")
    checkpoint_every: int = field(200, "checkpoint every this many steps (0 = only at the end)")
    checkpoint_every_epochs: int = field(
        0, "also checkpoint at the end of every this many epochs (0 = by steps only)"
    )
    keep_checkpoints: int = field(
        2, "keep the newest this many checkpoints, here and under checkpoint_root (0 = all)"
    )
    resume: bool = field(False, "continue from out/checkpoints/latest when it exists")
    resume_from: str = field("", RESUME_FROM_HELP)
    precision: str = field("auto", PRECISION_HELP)
    checkpoint_root: str = field(
        "",
        "a durable copy of the checkpoints: an s3:// prefix or a folder that outlives this process; each "
        "checkpoint is uploaded there ('latest' last) and a start that finds one there resumes from it "
        "('' = out/checkpoints only)",
    )
    zero_stage: int = field(0, "DeepSpeed ZeRO stage: 0, 1 or 2 (1/2 partition optimizer state over GPUs)")
    max_train_pairs: int = field(0, "train on a seeded sample of this many pairs (0 = all)")
    web_query_share: float = field(
        0.0, "share of train queries rewritten as short web-style searches ('python get the x'), seeded"
    )
    docstring_share: float = field(0.0, "share of train codes given their docstring back as first body line")
    max_valid_pairs: int = field(1000, "validate on a seeded sample of this many pairs (0 = all)")
    eval_batch_size: int = field(64, "texts per batch when encoding the validation pairs")
    query_prefix: str = field("", "text prepended to every query ('' keeps a checkpoint's own prefix)")
    code_prefix: str = field("", "text prepended to every code snippet ('' keeps a checkpoint's own prefix)")
    time_budget_minutes: float = field(
        0.0, "stop after this much training, with a final checkpoint (0 = none)"
    )
    num_workers: int = field(0, "tokenizer worker processes feeding batches (0 = in the training process)")
    log_every: int = field(10, "print a progress line every this many steps (when not on a terminal)")

    def validate(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"size must be one of {SIZES}, got {self.size!r}")
        if self.towers not in TOWERS:
            raise ConfigError(f"towers must be one of {TOWERS}, got {self.towers!r}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}")
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.precision not in TRAINING_PRECISIONS:
            raise ConfigError(f"precision must be one of {TRAINING_PRECISIONS}, got {self.precision!r}")
        if not 8 <= self.max_length <= MAX_LENGTH_LIMIT:
            raise ConfigError(
                f"max_length must be in 8..{MAX_LENGTH_LIMIT} tokens (attention grows with its square), "
                f"got {self.max_length}"
            )
        if self.inference_max_length != 0 and not 8 <= self.inference_max_length <= MAX_LENGTH_LIMIT:
            raise ConfigError(
                f"inference_max_length must be 0 or in 8..{MAX_LENGTH_LIMIT}, got {self.inference_max_length}"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(
                f"min_lr_ratio must be in [0, 1] and warmup_ratio in [0, 1), got {self.min_lr_ratio}, "
                f"{self.warmup_ratio}"
            )
        if not 0 < self.min_temperature <= self.temperature <= self.max_temperature:
            raise ConfigError(
                f"need 0 < min_temperature <= temperature <= max_temperature, got {self.min_temperature}, "
                f"{self.temperature}, {self.max_temperature}"
            )
        if self.epochs < 0 or (self.epochs == 0 and self.max_steps == 0 and not self.init_from):
            raise ConfigError(
                f"epochs must be >= 1, or 0 (no training) with init_from set; got {self.epochs} "
                f"(init_from {self.init_from!r})"
            )
        for name in ("distill_weight", "teacher_filter_top_k"):
            if getattr(self, name) > 0 and not self.init_from:
                raise ConfigError(
                    f"{name} {getattr(self, name)} needs init_from: the teacher is the starting checkpoint"
                )
        if self.teacher_false_negatives and not self.init_from:
            raise ConfigError(
                "teacher_false_negatives needs init_from: the teacher is the starting checkpoint"
            )
        if self.teacher_filter_top_k and self.teacher_filter_pool < max(
            self.batch_size, self.teacher_filter_top_k
        ):
            raise ConfigError(
                f"teacher_filter_pool {self.teacher_filter_pool} must be >= batch_size and teacher_filter_top_k"
            )
        for name in ("web_query_share", "docstring_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("grad_accum", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "embedding_dim",
            "max_steps",
            "weight_decay",
            "warmup_steps",
            "grad_clip",
            "hard_negative_weight",
            "distill_weight",
            "distill_temperature",
            "max_hard_negatives",
            "eval_every",
            "checkpoint_every",
            "checkpoint_every_epochs",
            "keep_checkpoints",
            "max_train_pairs",
            "teacher_filter_top_k",
            "max_valid_pairs",
            "time_budget_minutes",
            "num_workers",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


def inference_length(config: TrainEncoderConfig) -> int:
    """Tokens per text of the saved encoder: ``inference_max_length``, else the training ``max_length``."""
    return config.inference_max_length or config.max_length


def validation_metrics(
    model: Any,
    tokenizer: Any,
    valid: Any,
    batch_size: int,
    device: Any,
    max_length: int | None = None,
    loss: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Full-corpus retrieval metrics of the valid pairs: each query ranks its code among all valid codes,
    embedded at ``max_length`` tokens (training passes the saved encoder's; None = the model's own).
    ``loss`` ({temperature, batch_size, symmetric}): also the contrastive loss of training on them
    (semcode.losses.held_out_contrastive_loss), as "loss"."""
    import torch

    from semcode.evaluation import full_corpus_metrics
    from semcode.losses import held_out_contrastive_loss
    from semcode.models.encoder import encode_texts

    settings = dict(batch_size=batch_size, device=device, max_length=max_length)
    query_emb = encode_texts(model, tokenizer, valid.queries, "query", **settings)
    code_emb = encode_texts(model, tokenizer, valid.codes, "code", **settings)
    metrics = full_corpus_metrics(query_emb, code_emb)
    values = {name: metrics[name] for name in VALID_METRICS}
    if loss is not None:
        values["loss"] = held_out_contrastive_loss(
            torch.as_tensor(query_emb), torch.as_tensor(code_emb), **loss
        )
    return values


def train(
    config: TrainEncoderConfig, model: Any, tokenizer: Any, train_pairs: Any, valid_pairs: Any, out_dir: Path
) -> dict[str, Any]:
    """The training run: DeepSpeed set-up, optional resume, the shared loop, the shipped weights.

    Leaves the best (or last) weights in ``model`` (float32, on the CPU) and returns the run's metrics.
    """
    import torch

    from semcode.losses import EncoderWithLoss
    from semcode.train.checkpoints import DEFINITION_DIR, restore_durable, resume_state
    from semcode.train.distributed import resolve_precision, setup_distributed
    from semcode.train.history import TrainingLog, run_name
    from semcode.train.loop import LoopSchedule, run_steps

    checkpoints_dir, best_dir = out_dir / "checkpoints", out_dir / "best"
    # 1. The plan: optimizer steps over the train pairs on every rank, and the shape a resume must match.
    setup_distributed()
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    precision = resolve_precision(config.precision)
    plan, run_shape = _plan(config, len(train_pairs), world_size)
    run_shape.update(_model_shape(config, model, tokenizer, precision))

    # 2. The loss (and its frozen teacher), AdamW with warmup + cosine, the DeepSpeed engine; what every
    #    checkpoint carries to be an encoder as well (the encoder without its weights).
    loss_fn, teacher = _loss(config, model)
    net = EncoderWithLoss(model, loss_fn)
    engine, ds_config, init_seconds = _initialize(config, net, teacher, plan, out_dir, precision)
    definition = checkpoints_dir / DEFINITION_DIR
    _write_definition(config, model, tokenizer, definition)

    # 3. Resume (this run's latest, from the durable copy when this disk has none; or --resume-from) or
    #    start at step 0.
    durable, resume = restore_durable(config, checkpoints_dir, (best_dir,))
    state = resume_state(checkpoints_dir, engine, resume, run_shape, config.resume_from)
    step = state["step"] if state else 0
    history = state["history"] if state else None
    log_ = TrainingLog(
        "encoder",
        "pairs",
        plan.total_steps,
        plan.epochs,
        config.log_every,
        metric="mrr",
        history=history,
        run=run_name("encoder", out_dir),  # encoder, or encoder-N in the pipeline task train-encoder-N
        config=cfg.to_dict(config),  # TensorBoard's config text and hparams
    )
    log_.announce_start(state, resume, checkpoints_dir)
    log_.message(
        f"{len(train_pairs)} train / {len(valid_pairs)} valid pairs | {plan.total_steps} steps x "
        f"{config.batch_size * config.grad_accum * world_size} pairs | {plan.epochs} epoch(s) | "
        f"device {engine.device} | deepspeed init {init_seconds:.1f}s"
    )

    # 4. The shared loop (semcode.train.loop.run_steps), fed by this stage's batches, forward and evaluation.
    evaluate = _evaluator(config, model, tokenizer, valid_pairs, engine, loss_fn, log_, best_dir)
    if step == 0 and config.init_from:
        evaluate(0)  # zero-shot: what the checkpoint does before any training
    micro_batches = _micro_batches(config, train_pairs, tokenizer, model, rank, world_size)
    forward = _forward(config, engine, teacher)
    schedule = LoopSchedule.from_config(config)
    step, stopped_by = run_steps(
        engine,
        plan,
        log_,
        schedule,
        checkpoints_dir,
        run_shape,
        step,
        micro_batches,
        forward,
        evaluate,
        durable=durable,
        definition=definition,
    )
    rank_table = log_.rank_table()  # a collective: every rank takes part
    log_.close()
    log_.save(out_dir / "history.json")

    # 5. The shipped weights (the best validation MRR, or the last step without validation), the metrics.
    best = log_.history["best"]
    _keep_shipped_weights(engine, net, best_dir if best is not None else None)
    evals = log_.history["evals"]
    zero_shot = next((e["mrr"] for e in evals if e["step"] == 0), None)
    return {
        "steps": step,
        "total_steps": plan.total_steps,
        "steps_this_run": log_.steps_this_run,
        **rank_table,  # ranks: each rank's steps, items/s, mean loss, data wait; their spread
        "epochs": plan.epochs,
        "stopped_by": stopped_by if step < plan.total_steps else "steps",
        "train_seconds": round(log_.train_seconds, 3),
        "pairs_per_second": round(log_.items_per_second(), 2),
        "deepspeed_init_seconds": round(init_seconds, 3),
        "train_pairs": len(train_pairs),
        "valid_pairs": len(valid_pairs),
        "world_size": world_size,
        "device": str(engine.device),
        "precision": precision,
        "bf16": bool(ds_config["bf16"]["enabled"]),
        "skipped_steps": int(getattr(engine, "skipped_steps", 0)),  # fp16: steps whose gradients overflowed
        "warmup_steps": plan.warmup_steps,
        "final_loss": log_.history["steps"][-1]["loss"] if log_.history["steps"] else None,
        "zero_shot_valid_mrr": zero_shot,
        "final_valid_mrr": evals[-1]["mrr"] if evals and evals[-1]["step"] > 0 else None,
        "best_valid_mrr": best["mrr"] if best else None,
        "best_step": best["step"] if best else None,
        "final_model": "best" if best is not None else "last",
        "temperature": float(loss_fn.temperature),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _plan(config: TrainEncoderConfig, num_pairs: int, world_size: int) -> tuple[Any, dict[str, Any]]:
    """Step 1 of ``train``: the StepPlan of a run over ``num_pairs`` train pairs, and its shape (what a
    resumed run must equal)."""
    from semcode.train.loop import plan_steps

    plan = plan_steps(
        num_pairs,
        config.batch_size,
        config.grad_accum,
        world_size,
        config.epochs,
        config.max_steps,
        config.warmup_steps,
        config.warmup_ratio,
    )
    run_shape = {  # a resumed run must have the same shape, or it would not continue the same run
        "total_steps": plan.total_steps,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "seed": config.seed,
        "train_pairs": num_pairs,
        "warmup_steps": plan.warmup_steps,
        "world_size": world_size,
    }
    return plan, run_shape


def _model_shape(config: TrainEncoderConfig, model: Any, tokenizer: Any, precision: str) -> dict[str, Any]:
    """The rest of the run's shape: the model a checkpoint's weights and optimizer state fit, its tokenizer
    (the vocabulary's digest) and the precision (DeepSpeed keeps other optimizer state in each)."""
    from semcode.train.checkpoints import vocabulary_digest

    return {
        "init_from": config.init_from,
        "size": model.size,
        "towers": model.towers,
        "hidden_size": model.tower.hidden_size,
        "layers": int(model.tower.transformer.config.num_hidden_layers),
        "embedding_dim": model.embedding_dim,
        "max_length": config.max_length,
        "vocabulary": vocabulary_digest(tokenizer),
        "precision": precision,
    }


def _write_definition(config: TrainEncoderConfig, model: Any, tokenizer: Any, folder: Path) -> None:
    """The encoder without its weights, as the shipped one will be (at its inference length), in
    ``folder``: every checkpoint carries a copy, so that a checkpoint is an encoder too."""
    from semcode.train.distributed import is_main_process

    if not is_main_process():
        return
    shutil.rmtree(folder, ignore_errors=True)
    training_length, model.max_length = model.max_length, inference_length(config)
    try:
        model.save(folder, tokenizer, weights=False)
    finally:
        model.max_length = training_length


def _loss(config: TrainEncoderConfig, model: Any) -> tuple[Any, Any]:
    """Step 2 of ``train``: the contrastive loss, and the frozen teacher (a copy of the starting model,
    taken before DeepSpeed moves it) when distilling or hiding the teacher's false negatives (else None)."""
    from semcode.losses import ContrastiveLoss

    loss_fn = ContrastiveLoss(
        temperature=config.temperature,
        learnable_temperature=config.learnable_temperature,
        min_temperature=config.min_temperature,
        max_temperature=config.max_temperature,
        hard_negative_weight=config.hard_negative_weight,
        symmetric=config.symmetric,
        distill_weight=config.distill_weight,
        distill_temperature=config.distill_temperature,
        teacher_false_negatives=config.teacher_false_negatives,
    )
    teacher = None
    if config.distill_weight > 0 or config.teacher_false_negatives:  # before training, before DeepSpeed
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    return loss_fn, teacher


def _initialize(
    config: TrainEncoderConfig, net: Any, teacher: Any, plan: Any, out_dir: Path, precision: str
) -> tuple[Any, dict, float]:
    """Step 2 of ``train``: AdamW, warmup + cosine and the DeepSpeed engine over ``net`` at ``precision``
    (its config saved in ``out_dir``), then the teacher (if any) on the engine's device and dtype; returns
    the engine, its DeepSpeed config and the seconds ``initialize`` took."""
    from semcode.train.distributed import (
        adamw,
        deepspeed_config,
        initialize,
        is_main_process,
        precision_dtype,
        save_deepspeed_config,
        warmup_cosine_schedule,
    )

    optimizer = adamw(net, config.lr, config.weight_decay)
    scheduler = warmup_cosine_schedule(optimizer, plan.warmup_steps, plan.total_steps, config.min_lr_ratio)
    ds_config = deepspeed_config(
        config.batch_size, config.grad_accum, config.grad_clip, config.zero_stage, precision
    )
    if is_main_process():
        save_deepspeed_config(ds_config, out_dir)
    started = time.perf_counter()
    engine = initialize(net, optimizer, scheduler, ds_config)
    init_seconds = time.perf_counter() - started
    if teacher is not None:
        teacher.to(device=engine.device, dtype=precision_dtype(precision))
    return engine, ds_config, init_seconds


def _evaluator(
    config: TrainEncoderConfig,
    model: Any,
    tokenizer: Any,
    valid_pairs: Any,
    engine: Any,
    loss_fn: Any,
    log_: Any,
    best_dir: Path,
) -> Any:
    """The loop's ``evaluate(step)``: validation metrics (and loss) on the valid pairs, recorded in
    ``log_``; a new best also saves its weights (and best.json) in ``best_dir``. Without valid pairs, nothing."""
    from semcode.train.checkpoints import WEIGHTS_FILE, save_weights
    from semcode.train.distributed import is_main_process

    def evaluate(at_step: int) -> None:
        if len(valid_pairs) == 0:
            return
        eval_started = time.perf_counter()
        validation_loss = dict(
            temperature=loss_fn.temperature, batch_size=config.batch_size, symmetric=config.symmetric
        )
        metrics = validation_metrics(
            model,
            tokenizer,
            valid_pairs,
            config.eval_batch_size,
            engine.device,
            inference_length(config),
            loss=validation_loss,
        )
        if log_.evaluate(at_step, metrics, time.perf_counter() - eval_started):
            save_weights(engine, best_dir / WEIGHTS_FILE)
            if is_main_process():
                (best_dir / "best.json").write_text(json.dumps({"step": at_step, **metrics}, indent=2) + "\n")
        log_.restart_clock()

    return evaluate


def _micro_batches(
    config: TrainEncoderConfig, train_pairs: Any, tokenizer: Any, model: Any, rank: int, world_size: int
) -> Any:
    """The loop's ``micro_batches(epoch, position, count)``: this rank's tokenized micro-batches of the
    epoch's seeded order, fed by ``num_workers`` tokenizer processes."""
    from semcode.train.data import PairBatches, batch_loader, epoch_batches

    def micro_batches(epoch: int, position: int, count: int) -> Any:
        batches = epoch_batches(len(train_pairs), config.batch_size, config.seed, epoch, rank, world_size)
        dataset = PairBatches(
            train_pairs,
            batches[position : position + count],
            tokenizer,
            model.max_length,
            model.query_prefix,
            model.code_prefix,
            config.max_hard_negatives if config.hard_negative_weight > 0 else 0,
        )
        return batch_loader(dataset, config.num_workers, seed=config.seed + epoch)

    return micro_batches


def _forward(config: TrainEncoderConfig, engine: Any, teacher: Any) -> Any:
    """The loop's ``forward(batch)``: both towers and the loss on one micro-batch (with the teacher's
    embeddings added when there is one); the loss parts to average, and the temperature when learnable."""
    from semcode.losses import add_teacher_embeddings
    from semcode.train.loop import StepOutput

    def forward(batch: dict[str, Any]) -> StepOutput:
        batch = {name: tensor.to(engine.device) for name, tensor in batch.items()}
        if teacher is not None:
            batch = add_teacher_embeddings(teacher, batch)
        output = engine(batch)
        averaged = {"loss": output.total, "contrastive": output.contrastive}
        if config.hard_negative_weight > 0:
            averaged["hard"] = output.hard
        if teacher is not None:
            averaged["distill"] = output.distill
        as_is = {"temperature": output.temperature} if config.learnable_temperature else {}
        return StepOutput(output.total, averaged, len(batch["query_input_ids"]), as_is)

    return forward


def _keep_shipped_weights(engine: Any, net: Any, best_dir: Path | None) -> None:
    """Step 5 of ``train``: leave in ``net`` (float32, on the CPU) the weights saved in ``best_dir`` when
    there is a best (and its file), else the last step's. Every rank calls: a collective under ZeRO."""
    from semcode.train.checkpoints import WEIGHTS_FILE, full_state_dict, load_weights

    final_state = full_state_dict(engine)  # a collective under ZeRO: every rank takes part
    net.float().cpu()
    if best_dir is not None and (best_dir / WEIGHTS_FILE).exists():
        load_weights(net, best_dir / WEIGHTS_FILE)
    else:
        net.load_state_dict(final_state)


def pass_through(
    config: TrainEncoderConfig, model: Any, tokenizer: Any, valid_pairs: Any, out_dir: Path
) -> dict:
    """No training (epochs 0): validate init_from once, record it like a step-0 evaluation, ship it as is.

    What a preset that continues an earlier run's encoder with hard-negative rounds uses for its first
    training (src/semcode/configs/with_hard_negatives.yaml).
    """
    from semcode.train.history import TrainingLog

    log_ = TrainingLog("encoder", "pairs", total_steps=0, epochs=0, metric="mrr")
    log_.message(f"epochs 0: no training; {config.init_from} is passed on as it is")
    if len(valid_pairs) > 0:
        started = time.perf_counter()
        metrics = validation_metrics(
            model, tokenizer, valid_pairs, config.eval_batch_size, "cpu", inference_length(config)
        )
        log_.evaluate(0, metrics, time.perf_counter() - started)
    log_.close()
    log_.save(out_dir / "history.json")
    best = log_.history["best"]
    return {
        "steps": 0,
        "total_steps": 0,
        "stopped_by": "no_training",
        "train_seconds": 0.0,
        "pairs_per_second": 0.0,
        "train_pairs": 0,
        "valid_pairs": len(valid_pairs),
        "zero_shot_valid_mrr": best["mrr"] if best else None,
        "final_valid_mrr": None,
        "best_valid_mrr": best["mrr"] if best else None,
        "best_step": 0 if best else None,
        "final_model": "init_from",
        "final_loss": None,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _check_inputs(
    config: TrainEncoderConfig, pairs_dir: Path, tokenizer_dir: str | Path | None, out_dir: Path
) -> None:
    """Fail fast, before DeepSpeed and the model, on inputs that cannot work."""
    train_dir = pairs_dir / "train"
    if not train_dir.is_dir() or not sorted(train_dir.glob("part-*.parquet")):
        hint = f"; did you mean {pairs_dir / 'pairs'}?" if (pairs_dir / "pairs" / "train").is_dir() else ""
        raise FileNotFoundError(f"pairs directory {pairs_dir} has no train/part-*.parquet shards{hint}")
    if config.init_from:
        from semcode.embed import check_encoder_spec

        check_encoder_spec(config.init_from, "init_from")  # missing or truncated files, named
    else:
        if tokenizer_dir is None:
            raise ValueError("a tokenizer directory is required when training from scratch (no init_from)")
        if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
            raise FileNotFoundError(f"tokenizer directory {tokenizer_dir} has no tokenizer.json")
        from semcode.tokenizer import load_tokenizer

        load_tokenizer(tokenizer_dir)  # a corrupt file fails here, named, not after the data is read
    from semcode.train.checkpoints import check_checkpoints_dir
    from semcode.train.distributed import resolve_precision
    from semcode.train.history import check_live_log_prefix

    resolve_precision(config.precision)  # fp16 or bf16 where there is no GPU for it, named
    check_checkpoints_dir(out_dir / "checkpoints", config.resume, config.checkpoint_root, config.resume_from)
    check_live_log_prefix("encoder")


def run(
    config: TrainEncoderConfig,
    pairs_dir: str | Path,
    tokenizer_dir: str | Path | None,
    out_dir: str | Path,
) -> dict:
    """Train an encoder on ``pairs_dir`` and write encoder/, checkpoints/, history and metrics to ``out_dir``.

    ``tokenizer_dir`` may be None when ``config.init_from`` is set (the checkpoint's tokenizer is used).
    The output is written into a partial folder beside ``out_dir`` that replaces it whole when complete; a
    stopped run's partial keeps its checkpoints for ``--resume`` (semcode.train.checkpoints.training_output).
    """
    from semcode.train.checkpoints import save_requests_outside_steps, training_output

    config.validate()
    _check_inputs(config, Path(pairs_dir), tokenizer_dir, Path(out_dir))  # before anything is written
    with (
        training_output(out_dir, config.resume, durable=bool(config.checkpoint_root)) as partial,
        save_requests_outside_steps(),
    ):
        return _train_into(config, Path(pairs_dir), tokenizer_dir, partial)


def _train_into(
    config: TrainEncoderConfig, pairs_dir: Path, tokenizer_dir: str | Path | None, out: Path
) -> dict:
    """``run`` once its inputs are checked: everything it writes goes to ``out`` (the partial folder)."""
    from transformers import AutoTokenizer

    from semcode.models.encoder import build_encoder, load_pretrained, resolve_checkpoint
    from semcode.train.augment import augment_pairs
    from semcode.train.checkpoints import launched_rank
    from semcode.train.data import PairSet, consistency_filter, load_pairs
    from semcode.train.distributed import is_main_process, seed_everything

    # 1. The pairs read (and augmented) before any model loads.
    train_pairs = load_pairs(pairs_dir, "train", config.max_train_pairs, config.seed)
    augmented: dict[str, int] = {}
    if config.web_query_share > 0 or config.docstring_share > 0:
        train_pairs.queries, train_pairs.codes, augmented = augment_pairs(
            train_pairs.queries,
            train_pairs.codes,
            config.web_query_share,
            config.docstring_share,
            config.seed,
        )
        log(TAG, f"augmented train pairs: {augmented}")
    if len(train_pairs) < config.batch_size:
        raise ValueError(
            f"{pairs_dir}/train has {len(train_pairs)} usable pairs (non-empty query and code), fewer than "
            f"batch_size {config.batch_size}"
        )
    valid_pairs = PairSet([], [], [])
    if sorted((pairs_dir / "valid").glob("part-*.parquet")):
        valid_pairs = load_pairs(pairs_dir, "valid", config.max_valid_pairs, config.seed, unique_codes=True)
    if len(valid_pairs) == 0:
        log(TAG, f"warning: {pairs_dir}/valid has no pairs: no validation, the last step is shipped")

    # 2. The starting model: a checkpoint (init_from) or a new encoder of the configured size.
    if launched_rank() == 0:  # the other ranks write only once the process group is up (training_output)
        cfg.save_resolved(config, out)
    seed_everything(config.seed)
    with tempfile.TemporaryDirectory(prefix="semcode-init-") as download_dir:
        if config.init_from:
            local = resolve_checkpoint(config.init_from, download_dir)
            tokenizer = AutoTokenizer.from_pretrained(str(local))
            model = load_pretrained(
                local,
                config.towers,
                config.embedding_dim or None,
                max_length=config.max_length,
                query_prefix=config.query_prefix or None,
                code_prefix=config.code_prefix or None,
            )
            model.source = config.init_from
            tokenizer_source: Any = tokenizer
            if tokenizer_dir is not None:
                log(TAG, f"init_from {config.init_from}: its tokenizer replaces {tokenizer_dir}")
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
            model = build_encoder(
                config.size,
                len(tokenizer),
                tokenizer.pad_token_id,
                config.towers,
                config.embedding_dim or None,
                config.max_length,
                query_prefix=config.query_prefix,
                code_prefix=config.code_prefix,
            )
            tokenizer_source = str(tokenizer_dir)
        if tokenizer.pad_token is None:
            raise ValueError(f"the tokenizer of {config.init_from or tokenizer_dir} has no pad token")
        positions = int(model.tower.transformer.config.max_position_embeddings)
        if inference_length(config) > positions:
            raise ConfigError(
                f"inference_max_length {config.inference_max_length} exceeds the encoder's {positions} "
                "positions (a model built from scratch has max_length positions)"
            )

        # 3. Optionally keep the pairs the starting model agrees with, then train (or pass through).
        teacher_filter: dict[str, Any] = {}
        if config.teacher_filter_top_k:  # the texts as they will be trained on (after augmentation)
            train_pairs, teacher_filter = consistency_filter(
                model,
                tokenizer,
                train_pairs,
                pool_size=config.teacher_filter_pool,
                top_k=config.teacher_filter_top_k,
                seed=config.seed,
                batch_size=config.eval_batch_size,
                max_length=inference_length(config),
                min_kept=config.batch_size,
            )
            log(
                TAG,
                f"teacher filter: kept {teacher_filter['kept']} of {teacher_filter['pool']} pool pairs "
                f"(rank <= {config.teacher_filter_top_k})",
            )
        if config.epochs == 0 and config.max_steps == 0:
            metrics = pass_through(config, model, tokenizer, valid_pairs, out)
        else:
            metrics = train(config, model, tokenizer, train_pairs, valid_pairs, out)
        metrics["init_from"] = config.init_from
        metrics["augmented"] = augmented
        metrics["teacher_filter"] = teacher_filter
        if not is_main_process():  # with several ranks, rank 0 writes the outputs
            return metrics
        # 4. Rank 0 saves the encoder (at its inference length), metrics.json and the resolved config.
        encoder_dir = out / "encoder"
        shutil.rmtree(encoder_dir, ignore_errors=True)
        model.max_length = inference_length(config)  # what everything downstream embeds with
        model.save(encoder_dir, tokenizer_source)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    best = metrics["best_valid_mrr"]
    log(
        TAG,
        f"{metrics['steps']} steps in {metrics['train_seconds']:.0f}s ({metrics['pairs_per_second']:.0f} pairs/s)"
        + (f" | best valid mrr {best:.4f} at step {metrics['best_step']}" if best is not None else "")
        + f" -> {encoder_dir}",
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode train-encoder",
        description="Train the code search encoder (contrastive, DeepSpeed; CPU or GPUs) on ingest pairs.",
        epilog=(
            "examples:\n"
            "  semcode train-encoder --pairs runs/ingest/pairs --tokenizer runs/tokenizer --out runs/encoder \\\n"
            "      --size small --epochs 3 --batch-size 32 --lr 5e-4\n"
            "  semcode train-encoder --pairs runs/ingest/pairs --init-from minilm --lr 3e-5 --out runs/encoder\n"
            "  semcode train-encoder ... --out runs/encoder --resume     # continue from the latest checkpoint\n"
            "  semcode train-encoder ... --out runs/encoder-b --resume-from runs/encoder/checkpoints/step-000400\n"
            "  semcode train-encoder ... --precision fp16 --checkpoint-every-epochs 1   # a V100/T4; per epoch"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pairs", required=True, metavar="DIR", help="ingest pairs/ directory (train, valid)"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="tokenizer directory (train-tokenizer output); not needed with --init-from",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    cfg.add_arguments(parser, TrainEncoderConfig)
    args = parser.parse_args(argv)
    from semcode.train.checkpoints import (
        INTERRUPTED_EXIT_CODE,
        RESUME_HINT,
        DurableCheckpointError,
        Preempted,
    )  # torch: after --help

    try:
        config = cfg.from_args(TrainEncoderConfig, args, section="train_encoder")
        run(config, args.pairs, args.tokenizer, args.out)
    except cfg.BAD_INPUT_ERRORS as error:
        return cfg.bad_input("train-encoder", error)
    except Preempted as error:  # SIGTERM or Ctrl-C: checkpointed; non-zero so that a retry continues
        log(TAG, str(error))
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside the steps (setting up, evaluating, saving) or a second one
        log(TAG, f"interrupted by Ctrl-C: {RESUME_HINT}")
        return INTERRUPTED_EXIT_CODE
    except DurableCheckpointError as error:  # the store went away mid-training: a fault, not bad input
        log(TAG, f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
