"""Stage train_decoder: a decoder that writes code from the frozen encoder's embeddings, with DeepSpeed.

Reads the encoder (train_encoder's output, frozen: it only embeds), the ingest ``pairs/`` (train; test
for the metrics; valid for evaluations during training) and our BPE tokenizer (train_tokenizer's
output; the decoder's vocabulary). Writes::

    out/decoder/                 the decoder (semcode.models.decoder: transformers checkpoint + prefix MLP +
                                 semcode_decoder.json + tokenizer), what the release bundle carries
    out/checkpoints/step-NNNNNN/ resumable checkpoints (semcode.train.checkpoints), and `latest`
    out/best/model.safetensors   the weights of the best validation loss so far (+ best.json)
    out/history.json             per step: loss, lr, tokens; evaluations on the valid split
    out/metrics.json             test metrics (below), training throughput, seconds per phase
    out/samples.jsonl            the generated test samples beside their references
    out/config.json, out/deepspeed_config.json

The output appears whole or not at all: it grows in ``.OUT.partial`` beside ``out`` (checkpoints and
TensorBoard logs included) and replaces ``out`` when complete; a run stopped before its end keeps that
partial, and the same command with ``--resume`` continues it (semcode.train.checkpoints.training_output).

How it trains: every training function is embedded once, up front, by the frozen encoder (code side);
a seeded ``query_share`` of the functions is embedded from its docstring (query side) instead, so the
decoder also learns to write code for a description (``semcode generate BUNDLE "docstring"``). The
decoder turns the embedding into ``prefix_tokens`` virtual tokens and learns to write the function's
tokens after them (teacher forcing, loss on the code tokens only). With ``skip_long_functions`` it trains
only on functions that fit in ``max_length`` tokens, so every example ends with ``</s>`` and the
decoder learns to finish what it starts. Every language of the train split is trained on, each function
with its language's token after the embedding's virtual tokens (semcode.models.decoder), so that
``semcode generate --language go`` writes Go; test and valid rows of a language the train split lacks are
left out (counted in ``test_functions_untrained_language``). The loop is the encoder's (semcode.train.loop): DeepSpeed,
warmup + cosine LR, checkpoints (by steps and by epochs), ``--resume`` and ``--resume-from`` a checkpoint
of a run of the same shape, ``--precision`` (auto: bf16 on a GPU, fp32 on the CPU; fp16 with loss
scaling), a time budget, progress lines. The decoder shipped is the one of the best validation loss (``eval_every``
and the end; ``keep_best``), not the last step's: ``best_step``, ``best_valid_loss`` and, when they
differ, ``last_test_loss`` (the last step's test loss) say which and by how much.

Metrics on the test split (up to ``max_eval_pairs`` distinct functions, a seeded sample), each decoded
from its own code embedding: reconstruction loss, perplexity and token accuracy (teacher forcing); for
``generate_samples`` of them, greedy generation and the share that parses as a function of its row's
language, corpus BLEU-4 against the reference, and round-trip retrieval: the generated code's embedding
(same encoder, code side) ranks its source among all the eval functions (recall@1, recall@10, MRR).
Each row is generated and checked in its own ``language`` (the pairs' column; ``python`` where it is
empty): the stop rule and the parse check are that language's (semcode.decoding). Beside the overall
values, ``parse_rate_by_language``, ``bleu_by_language`` and ``round_trip_recall@10_by_language`` give
``{language: value}``, and ``generated_samples_by_language`` the rows of each. The same for generation
from the docstring's embedding (``query_*`` metrics, the gold being the function). With
``rerank_candidates`` > 1, the same metrics again (``reranked_*``) for best-of-N decoding: the greedy code
plus N - 1 samples, the one that parses whose embedding is closest to the target kept
(semcode.decoding.generate_reranked); the decoder saves N as ``semcode generate``'s default.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semcode import config as cfg
from semcode.config import ConfigError, field
from semcode.contract import (
    DECODER_SIZE_NAMES,
    ONNX_HELP,
    PRECISION_HELP,
    RESUME_FROM_HELP,
    RUNTIME_HELP,
    SAMPLES_FILE,
    TRAINING_PRECISIONS,
)
from semcode.embed import check_runtime
from semcode.progress import log

TAG = "train-decoder"
SIZES = DECODER_SIZE_NAMES


@dataclass(frozen=True)
class TrainDecoderConfig:
    size: str = field("small", f"decoder size: {'|'.join(SIZES)}")
    prefix_tokens: int = field(8, "virtual tokens the embedding becomes, ahead of the code tokens")
    token_bias: bool = field(
        True,
        "also map the embedding to a logit bias over the vocabulary, added at every step (a "
        "bag-of-tokens prior: which identifiers the function uses)",
    )
    max_length: int = field(128, "code tokens per function, <s> and </s> included")
    skip_long_functions: bool = field(
        True, "train only on functions that fit in max_length (else on their truncated start)"
    )
    query_share: float = field(
        0.2, "share of training functions conditioned on their docstring's embedding, not the code's"
    )
    epochs: int = field(1, "passes over the training functions (ignored when max_steps > 0)")
    max_steps: int = field(0, "optimizer steps to train (0 = as many as `epochs` gives)")
    batch_size: int = field(16, "functions per micro-batch (per GPU)")
    grad_accum: int = field(1, "micro-batches per optimizer step")
    lr: float = field(1e-3, "peak learning rate")
    weight_decay: float = field(0.01, "AdamW weight decay (not applied to biases and norms)")
    warmup_steps: int = field(0, "linear warmup steps (0 = warmup_ratio of the total steps)")
    warmup_ratio: float = field(0.05, "warmup as a fraction of the total steps when warmup_steps is 0")
    min_lr_ratio: float = field(0.1, "the cosine decay ends at lr * min_lr_ratio")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0 = no clipping)")
    zero_stage: int = field(0, "DeepSpeed ZeRO stage: 0, 1 or 2 (1/2 partition optimizer state over GPUs)")
    seed: int = field(0, "seed for initialisation, the samples and the data order")
    eval_every: int = field(
        200, "evaluate on the valid split every this many steps (0 = only at the end); see keep_best"
    )
    keep_best: bool = field(
        True, "ship the weights of the best validation loss (evaluations: eval_every, the end), not the last"
    )
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
    max_train_pairs: int = field(0, "train on a seeded sample of this many functions (0 = all)")
    max_valid_pairs: int = field(200, "evaluate during training on this many valid functions (0 = none)")
    max_eval_pairs: int = field(1000, "test functions for the metrics and the round-trip corpus (0 = all)")
    generate_samples: int = field(100, "test functions generated for parse rate, BLEU and round-trip")
    generate_max_tokens: int = field(256, "tokens generated per sample at most")
    repetition_penalty: float = field(
        1.2, "generation divides the logits of tokens already written by this (1 = off); saved as the default"
    )
    rerank_candidates: int = field(
        8,
        "also write this many candidates per sample (greedy + samples) and keep the parseable one closest "
        "to the target embedding (reranked_* metrics; 1 = off); saved as generate's default",
    )
    rerank_temperature: float = field(0.5, "sampling temperature of the reranked candidates")
    rerank_top_p: float = field(0.95, "nucleus sampling mass of the reranked candidates")
    generate_from_queries: bool = field(True, "also generate from the samples' docstrings (query_* metrics)")
    embed_batch_size: int = field(64, "texts per batch when the encoder embeds")
    runtime: str = field("torch", RUNTIME_HELP)
    threads: int = field(
        0, "torch CPU threads (0 = as set, torch's default: every core); 1 helps on a busy CPU"
    )
    time_budget_minutes: float = field(
        0.0, "stop training after this much, with a final checkpoint (0 = none)"
    )
    log_every: int = field(10, "print a progress line every this many steps (when not on a terminal)")

    def validate(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"size must be one of {SIZES}, got {self.size!r}")
        check_runtime(self.runtime)
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.precision not in TRAINING_PRECISIONS:
            raise ConfigError(f"precision must be one of {TRAINING_PRECISIONS}, got {self.precision!r}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8, got {self.max_length}")
        if self.rerank_temperature <= 0 or not 0 < self.rerank_top_p <= 1:
            raise ConfigError(
                f"need rerank_temperature > 0 and 0 < rerank_top_p <= 1, got {self.rerank_temperature}, "
                f"{self.rerank_top_p}"
            )
        if self.lr <= 0 or self.repetition_penalty <= 0:
            raise ConfigError(
                f"lr and repetition_penalty must be > 0, got {self.lr}, {self.repetition_penalty}"
            )
        if not 0.0 <= self.query_share <= 1.0:
            raise ConfigError(f"query_share must be in [0, 1], got {self.query_share}")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(
                f"min_lr_ratio must be in [0, 1] and warmup_ratio in [0, 1), got {self.min_lr_ratio}, "
                f"{self.warmup_ratio}"
            )
        for name in (
            "prefix_tokens",
            "epochs",
            "batch_size",
            "grad_accum",
            "generate_max_tokens",
            "embed_batch_size",
            "log_every",
            "rerank_candidates",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "max_steps",
            "weight_decay",
            "warmup_steps",
            "grad_clip",
            "eval_every",
            "checkpoint_every",
            "checkpoint_every_epochs",
            "threads",
            "keep_checkpoints",
            "max_train_pairs",
            "max_valid_pairs",
            "max_eval_pairs",
            "generate_samples",
            "time_budget_minutes",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class Examples:
    """Functions to decode: ``token_ids[i]`` (``<s> code </s>``) is decoded from ``embeddings[i]``."""

    token_ids: list[list[int]]
    embeddings: np.ndarray  # float32 [N, D]
    language_ids: np.ndarray  # int64 [N]: each function's language token (the decoder's ``languages``)

    def __len__(self) -> int:
        return len(self.token_ids)


def train(
    config: TrainDecoderConfig,
    model: Any,
    train_set: Examples,
    valid_set: Examples,
    out_dir: Path,
    vocabulary: str = "",
) -> dict:
    """The training loop: DeepSpeed set-up, optional resume, steps, evaluations, checkpoints.

    ``vocabulary``: the tokenizer's digest (semcode.train.checkpoints.vocabulary_digest), part of the run's
    shape. Leaves the last step's weights in ``model`` (float32), the best validation loss's in
    ``out_dir/best`` (``keep_best``), and returns the run's metrics.
    """
    import torch

    from semcode.decoding import reconstruction_metrics
    from semcode.models.decoder import make_batch
    from semcode.train.checkpoints import (
        WEIGHTS_FILE,
        full_state_dict,
        restore_durable,
        resume_state,
        save_weights,
    )
    from semcode.train.data import epoch_batches
    from semcode.train.distributed import (
        adamw,
        deepspeed_config,
        initialize,
        is_main_process,
        resolve_precision,
        save_deepspeed_config,
        setup_distributed,
        warmup_cosine_schedule,
    )
    from semcode.train.history import TrainingLog, run_name
    from semcode.train.loop import LoopSchedule, StepOutput, plan_steps, run_steps

    checkpoints_dir, best_dir = out_dir / "checkpoints", out_dir / "best"
    setup_distributed()
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    precision = resolve_precision(config.precision)
    plan = plan_steps(
        len(train_set),
        config.batch_size,
        config.grad_accum,
        world_size,
        config.epochs,
        config.max_steps,
        config.warmup_steps,
        config.warmup_ratio,
        unit="training functions",
    )
    run_shape = {  # a resumed run must have the same shape, or it would not continue the same run
        "total_steps": plan.total_steps,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "seed": config.seed,
        "train_functions": len(train_set),
        "warmup_steps": plan.warmup_steps,
        "world_size": world_size,
        "size": config.size,
        "prefix_tokens": config.prefix_tokens,
        "max_length": config.max_length,
        "query_share": config.query_share,
        "token_bias": config.token_bias,
        "embedding_dim": int(train_set.embeddings.shape[1]),
        "vocabulary": vocabulary,
        "precision": precision,
        "languages": list(model.languages),
    }

    optimizer = adamw(model, config.lr, config.weight_decay)
    scheduler = warmup_cosine_schedule(optimizer, plan.warmup_steps, plan.total_steps, config.min_lr_ratio)
    ds_config = deepspeed_config(
        config.batch_size, config.grad_accum, config.grad_clip, config.zero_stage, precision
    )
    if is_main_process():
        save_deepspeed_config(ds_config, out_dir)
    started = time.perf_counter()
    engine = initialize(model, optimizer, scheduler, ds_config)
    init_seconds = time.perf_counter() - started

    durable, resume = restore_durable(config, checkpoints_dir, (best_dir,))
    state = resume_state(checkpoints_dir, engine, resume, run_shape, config.resume_from)
    step = state["step"] if state else 0
    log_ = TrainingLog(
        "decoder",
        "tok",
        plan.total_steps,
        plan.epochs,
        config.log_every,
        metric="loss",
        lower_is_better=True,
        history=state["history"] if state else None,
        run=run_name("decoder", out_dir),
        config=cfg.to_dict(config),  # TensorBoard's config text and hparams
    )
    log_.announce_start(state, resume, checkpoints_dir)
    log_.message(
        f"{len(train_set)} train / {len(valid_set)} valid functions | {plan.total_steps} steps x "
        f"{config.batch_size * config.grad_accum * world_size} functions | {plan.epochs} epoch(s) | "
        f"device {engine.device} | deepspeed init {init_seconds:.1f}s"
    )

    def evaluate(at_step: int) -> None:
        if len(valid_set) == 0:
            return
        eval_started = time.perf_counter()
        metrics = reconstruction_metrics(
            engine.module, valid_set.token_ids, valid_set.embeddings, language_ids=valid_set.language_ids
        )
        if log_.evaluate(at_step, metrics, time.perf_counter() - eval_started) and config.keep_best:
            save_weights(engine, best_dir / WEIGHTS_FILE)  # every rank calls: a collective under ZeRO
            if is_main_process():
                (best_dir / "best.json").write_text(json.dumps({"step": at_step, **metrics}, indent=2) + "\n")

    def micro_batches(epoch: int, position: int, count: int) -> Any:
        batches = epoch_batches(len(train_set), config.batch_size, config.seed, epoch, rank, world_size)
        return (
            make_batch(train_set.token_ids, train_set.embeddings, rows, train_set.language_ids)
            for rows in batches[position:][:count]
        )

    def forward(batch: dict[str, torch.Tensor]) -> StepOutput:
        output = engine(**{name: tensor.to(engine.device) for name, tensor in batch.items()})
        return StepOutput(output.loss, {"loss": output.loss}, int(batch["attention_mask"].sum()), {})

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
    )
    rank_table = log_.rank_table()  # a collective: every rank takes part
    log_.close()
    log_.save(out_dir / "history.json")

    final_state = full_state_dict(engine)  # fp32 master weights; a collective under ZeRO
    model.float()
    model.load_state_dict(final_state)
    evals = log_.history["evals"]
    best = log_.history["best"]
    return {
        "steps": step,
        "total_steps": plan.total_steps,
        "steps_this_run": log_.steps_this_run,
        **rank_table,  # ranks: each rank's steps, items/s, mean loss, data wait; their spread
        "epochs": plan.epochs,
        "stopped_by": stopped_by if step < plan.total_steps else "steps",
        "train_seconds": round(log_.train_seconds, 3),
        "tokens_per_second": round(log_.items_per_second(), 1),
        "deepspeed_init_seconds": round(init_seconds, 3),
        "world_size": world_size,
        "device": str(engine.device),
        "precision": precision,
        "bf16": bool(ds_config["bf16"]["enabled"]),
        "skipped_steps": int(getattr(engine, "skipped_steps", 0)),  # fp16: steps whose gradients overflowed
        "warmup_steps": plan.warmup_steps,
        "final_loss": log_.history["steps"][-1]["loss"] if log_.history["steps"] else None,
        "valid_loss": evals[-1]["loss"] if evals else None,
        "valid_token_accuracy": evals[-1]["token_accuracy"] if evals else None,
        "best_step": best["step"] if best else None,
        "best_valid_loss": best["loss"] if best else None,
    }


def measure_on_test(
    config: TrainDecoderConfig,
    model: Any,
    tokenizer: Any,
    embed: Any,
    test: Any,
    test_set: Examples,
    languages: list[str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reconstruction and generation metrics on the test functions (module docstring); also the samples.

    ``languages[i]`` is test function i's language: its row is generated and checked in it.
    """
    from semcode.decoding import generate_code, generate_reranked, generation_metrics, reconstruction_metrics

    started = time.perf_counter()
    metrics: dict[str, Any] = {"eval_functions": len(test_set)}
    teacher_forced = reconstruction_metrics(
        model, test_set.token_ids, test_set.embeddings, language_ids=test_set.language_ids
    )
    metrics.update({f"test_{name}": value for name, value in teacher_forced.items()})
    count = min(config.generate_samples, len(test_set))
    samples: list[dict[str, Any]] = []
    if count == 0:
        return metrics, samples
    references = test.codes[:count]
    sample_languages = languages[:count]
    sources = {"": test_set.embeddings[:count]}  # decode each function from its own code embedding
    if config.generate_from_queries:
        sources["query_"] = embed(test.queries[:count], "query")  # and from its docstring's
    import torch

    torch.manual_seed(config.seed)  # the reranked candidates are samples
    for prefix, embeddings in sources.items():
        decodings = {
            "greedy": generate_code(
                model,
                tokenizer,
                embeddings,
                config.generate_max_tokens,
                repetition_penalty=config.repetition_penalty,
                language=sample_languages,
            ),
        }
        if config.rerank_candidates > 1:
            decodings["reranked"] = generate_reranked(
                model,
                tokenizer,
                embeddings,
                lambda codes: embed(codes, "code"),
                config.rerank_candidates,
                config.generate_max_tokens,
                config.rerank_temperature,
                config.rerank_top_p,
                config.repetition_penalty,
                greedy=decodings["greedy"],
                language=sample_languages,
            )
        for decoding, generated in decodings.items():
            generated_embeddings = embed([g.code for g in generated], "code")
            values = generation_metrics(generated, references, generated_embeddings, test_set.embeddings)
            infix = "" if decoding == "greedy" else "reranked_"
            metrics.update({f"{prefix}{infix}{name}": value for name, value in values.items()})
            for i, g in enumerate(generated):
                samples.append(
                    {
                        "from": "query" if prefix else "code",
                        "decoding": decoding,
                        "language": g.language,
                        "query": test.queries[i],
                        "reference": references[i],
                        "generated": g.code,
                        "parses": g.parses,
                        "tokens": g.tokens,
                        "stopped_by": g.stopped_by,
                    }
                )
    metrics["generated_samples"] = count
    metrics["generated_samples_by_language"] = dict(Counter(sample_languages))
    metrics["rerank_candidates"] = config.rerank_candidates
    metrics["metrics_seconds"] = round(time.perf_counter() - started, 3)
    return metrics, samples


def _check_inputs(
    config: TrainDecoderConfig, encoder_dir: str | Path, pairs_dir: Path, tokenizer_dir: Path, out_dir: Path
) -> None:
    """Fail fast, before any model is loaded, on inputs that cannot work."""
    from semcode.embed import check_encoder_spec
    from semcode.train.checkpoints import check_checkpoints_dir
    from semcode.train.distributed import resolve_precision
    from semcode.train.history import check_live_log_prefix

    for split in ("train", "test"):
        if not sorted((pairs_dir / split).glob("part-*.parquet")):
            hint = f"; did you mean {pairs_dir / 'pairs'}?" if (pairs_dir / "pairs" / split).is_dir() else ""
            raise FileNotFoundError(f"pairs directory {pairs_dir} has no {split}/part-*.parquet shards{hint}")
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer directory {tokenizer_dir} has no tokenizer.json")
    from semcode.tokenizer import load_tokenizer

    load_tokenizer(tokenizer_dir)  # a corrupt file fails here, named
    check_encoder_spec(str(encoder_dir))
    resolve_precision(config.precision)  # fp16 or bf16 where there is no GPU for it, named
    check_checkpoints_dir(out_dir / "checkpoints", config.resume, config.checkpoint_root, config.resume_from)
    check_live_log_prefix("decoder")


def code_languages(pairs_dir: Path, split: str) -> dict[str, str]:
    """Each code's language in one split of ``pairs/``: the first row's among those load_pairs keeps
    (non-empty query and code), ``python`` where the column is empty. ValueError names a language
    the decoder cannot check, and the supported ones."""
    from semcode.data.languages import check_languages
    from semcode.data.pairs import read_split

    table = read_split(pairs_dir, split, columns=["query", "code", "language"])
    queries = table.column("query").to_pylist()
    codes = table.column("code").to_pylist()
    names = table.column("language").to_pylist()
    languages: dict[str, str] = {}
    for query, code, name in zip(queries, codes, names, strict=True):
        if query and code and code not in languages:
            languages[code] = (name or "python").strip().lower()
    try:
        check_languages(set(languages.values()))
    except ValueError as error:
        raise ValueError(f"{pairs_dir}/{split}: {error}") from None
    return languages


def _trained_languages_only(
    pairs_dir: Path, split: str, pairs: Any, languages: tuple[str, ...]
) -> tuple[Any, list[str], dict[str, int]]:
    """``pairs`` of ``split`` without the rows of a language the train split lacks (the decoder has no
    token for it): the rows kept, their languages, and how many of each other language were left out."""
    language_of = code_languages(pairs_dir, split)
    names = [language_of[code] for code in pairs.codes]
    kept = [i for i, name in enumerate(names) if name in languages]
    untrained = dict(Counter(name for name in names if name not in languages))
    if untrained:
        log(TAG, f"{pairs_dir}/{split}: left out {untrained}: no such language in the train split")
    return pairs.subset(kept), [names[i] for i in kept], untrained


def _indices(names: list[str], languages: tuple[str, ...]) -> np.ndarray:
    """Each name's language-token index (int64 [N])."""
    return np.array([languages.index(name) for name in names], dtype=np.int64)


def _keep_best(
    config: TrainDecoderConfig, model: Any, out: Path, metrics: dict[str, Any], test_set: Examples
) -> dict[str, Any]:
    """Load the best validation loss's weights (``out/best``) into ``model``, which holds the last step's,
    unless ``keep_best`` is off or the best is the last; the last step's test loss goes beside."""
    from semcode.decoding import reconstruction_metrics
    from semcode.train.checkpoints import WEIGHTS_FILE, load_weights

    best_file = out / "best" / WEIGHTS_FILE
    if not config.keep_best or metrics["best_step"] in (None, metrics["steps"]) or not best_file.exists():
        return {"final_model": "last"}
    last = reconstruction_metrics(
        model, test_set.token_ids, test_set.embeddings, language_ids=test_set.language_ids
    )
    load_weights(model, best_file)
    best_loss, steps = metrics["best_valid_loss"], metrics["steps"]
    log(TAG, f"shipping step {metrics['best_step']} (best valid loss {best_loss:.4f}), not step {steps}")
    return {
        "final_model": "best",
        "last_test_loss": last["loss"],
        "last_test_token_accuracy": last["token_accuracy"],
    }


def _sample(count: int, limit: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of ``limit`` out of ``count`` (all when limit is 0 or more)."""
    if 0 < limit < count:
        return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))
    return np.arange(count)


def run(
    config: TrainDecoderConfig,
    encoder_dir: str | Path,
    pairs_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    onnx_dir: str | Path | None = None,
) -> dict:
    """Train a decoder against the frozen ``encoder_dir``: decoder/, metrics and history in ``out_dir``;
    ``onnx_dir``: export_onnx's output of ``encoder_dir``, whose files an onnx runtime runs as they are. The
    output is written into a partial folder beside ``out_dir`` that replaces it whole when complete; a stopped
    run's partial keeps its checkpoints for ``--resume`` (semcode.train.checkpoints.training_output)."""
    from semcode.embed import check_exported
    from semcode.train.checkpoints import save_requests_outside_steps, training_output

    config.validate()
    _check_inputs(config, encoder_dir, Path(pairs_dir), Path(tokenizer_dir), Path(out_dir))
    if onnx_dir is not None and config.runtime != "torch":
        check_exported(onnx_dir, config.runtime.removeprefix("onnx-"), encoder_dir)
    with (
        training_output(out_dir, config.resume, durable=bool(config.checkpoint_root)) as partial,
        save_requests_outside_steps(),
    ):
        return _train_into(config, encoder_dir, Path(pairs_dir), Path(tokenizer_dir), partial, onnx_dir)


def _train_into(
    config: TrainDecoderConfig,
    encoder_dir: str | Path,
    pairs_dir: Path,
    tokenizer_dir: Path,
    out: Path,
    onnx_dir: str | Path | None,
) -> dict:
    """``run`` once its inputs are checked: everything it writes goes to ``out`` (the partial folder)."""
    from semcode.embed import load_embed_fn, resolve_device
    from semcode.export import torch_threads
    from semcode.models.decoder import EOS_ID, build_decoder, code_token_ids
    from semcode.tokenizer import load_tokenizer
    from semcode.train.checkpoints import launched_rank, vocabulary_digest
    from semcode.train.data import load_pairs
    from semcode.train.distributed import is_main_process, seed_everything

    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_dir)

    # 1. The functions. Train: those that fit, a seeded sample. Test: distinct codes, shuffled, so the first
    #    ones are a random sample to generate. Valid: distinct codes.
    train_pairs = load_pairs(pairs_dir, "train")
    available = len(train_pairs)
    train_tokens = code_token_ids(tokenizer, train_pairs.codes, config.max_length)
    fitting = [i for i, ids in enumerate(train_tokens) if not config.skip_long_functions or ids[-1] == EOS_ID]
    chosen = [fitting[i] for i in _sample(len(fitting), config.max_train_pairs, config.seed)]
    if len(chosen) < config.batch_size:  # a small repository's: batches of what there is, down to 2
        usable = (
            f"{pairs_dir}/train has {len(chosen)} usable functions (non-empty docstring and code"
            + (f", at most {config.max_length} tokens" if config.skip_long_functions else "")
            + f"), fewer than batch_size {config.batch_size}"
        )
        if len(chosen) < 2:
            raise ValueError(usable)
        log(TAG, f"{usable}: batches of {len(chosen)}")
        config = dataclasses.replace(config, batch_size=len(chosen))
    train_pairs = train_pairs.subset(chosen)
    train_tokens = [train_tokens[i] for i in chosen]
    # Every language of the train split, the most frequent first: one language token each.
    train_language_of = code_languages(pairs_dir, "train")
    train_languages = [train_language_of[code] for code in train_pairs.codes]
    train_counts = Counter(train_languages)
    languages = tuple(sorted(train_counts, key=lambda name: (-train_counts[name], name)))
    test_split = "test"  # what the generations are made and scored on: the valid split when test is empty
    test_pairs = load_pairs(pairs_dir, "test", config.max_eval_pairs, config.seed, unique_codes=True)
    if len(test_pairs) == 0:
        log(TAG, f"{pairs_dir}/test has no usable pairs: the decoder is scored on the valid split instead")
        test_split = "valid"
        test_pairs = load_pairs(pairs_dir, "valid", config.max_eval_pairs, config.seed, unique_codes=True)
    if len(test_pairs) == 0:
        raise ValueError(f"{pairs_dir}/test and valid have no usable pairs (non-empty docstring and code)")
    test_pairs = test_pairs.subset(np.random.default_rng(config.seed).permutation(len(test_pairs)))
    test_pairs, test_languages, untrained = _trained_languages_only(
        pairs_dir, test_split, test_pairs, languages
    )
    if len(test_pairs) == 0:
        raise ValueError(
            f"{pairs_dir}/{test_split} has no functions in the languages of the train split ({', '.join(languages)})"
        )
    valid_pairs, valid_languages = test_pairs.subset([]), []
    if config.max_valid_pairs > 0 and sorted((pairs_dir / "valid").glob("part-*.parquet")):
        valid_pairs = load_pairs(pairs_dir, "valid", config.max_valid_pairs, config.seed, unique_codes=True)
        valid_pairs, valid_languages, _ = _trained_languages_only(pairs_dir, "valid", valid_pairs, languages)

    if launched_rank() == 0:  # the other ranks write only once the process group is up (training_output)
        cfg.save_resolved(config, out)
    # torch's CPU threads for everything below (the ONNX runtime takes the same number).
    with torch_threads(config.threads) if config.threads else contextlib.nullcontext():
        # 2. Embed everything once with the frozen encoder; a seeded query_share of the train functions from
        #    their docstring.
        embed_started = time.perf_counter()
        device = resolve_device("auto")
        embed, dim = load_embed_fn(
            str(encoder_dir),
            config.embed_batch_size,
            device=device,
            show_progress=True,
            runtime=config.runtime,
            exported=onnx_dir,
        )
        order = np.random.default_rng([config.seed, 1]).permutation(len(train_pairs))
        from_query = np.zeros(len(train_pairs), dtype=bool)
        from_query[order[: round(config.query_share * len(train_pairs))]] = True
        code_rows, query_rows = np.flatnonzero(~from_query), np.flatnonzero(from_query)
        log(
            TAG,
            f"embedding {len(code_rows)} train codes, {len(query_rows)} train docstrings, "
            f"{len(test_pairs)} test and {len(valid_pairs)} valid codes with {encoder_dir} "
            f"({config.runtime}, {device})",
        )
        train_embeddings = np.zeros((len(train_pairs), dim), dtype=np.float32)
        train_embeddings[code_rows] = embed([train_pairs.codes[i] for i in code_rows], "code")
        if len(query_rows):
            train_embeddings[query_rows] = embed([train_pairs.queries[i] for i in query_rows], "query")
        test_tokens = code_token_ids(tokenizer, test_pairs.codes, config.max_length)
        test_set = Examples(test_tokens, embed(test_pairs.codes, "code"), _indices(test_languages, languages))
        valid_tokens = code_token_ids(tokenizer, valid_pairs.codes, config.max_length)
        valid_embeddings = (
            embed(valid_pairs.codes, "code") if len(valid_pairs) else np.zeros((0, dim), np.float32)
        )
        valid_set = Examples(valid_tokens, valid_embeddings, _indices(valid_languages, languages))
        embed_seconds = time.perf_counter() - embed_started

        # 3. Train.
        seed_everything(config.seed)
        model = build_decoder(
            config.size,
            tokenizer.get_vocab_size(),
            dim,
            config.prefix_tokens,
            token_bias=config.token_bias,
            languages=languages,
        )
        metrics: dict[str, Any] = {
            "train_functions": len(train_pairs),
            "train_from_docstring": len(query_rows),
            "train_functions_available": available,  # usable pairs in the train split
            "train_functions_fitting": len(
                fitting
            ),  # of which fit in max_length (all: skip_long_functions off)
            "valid_functions": len(valid_set),
            "languages": list(languages),
            "train_functions_by_language": {name: train_counts[name] for name in languages},
            "test_functions_untrained_language": untrained,
            "parameters": sum(p.numel() for p in model.parameters()),
            "embed_seconds": round(embed_seconds, 3),
        }
        train_set = Examples(train_tokens, train_embeddings, _indices(train_languages, languages))
        metrics.update(train(config, model, train_set, valid_set, out, vocabulary_digest(tokenizer)))
        if not is_main_process():  # with several ranks, rank 0 measures and writes the outputs
            return metrics

        # 4. Keep the best validation loss's weights (the last step's test loss beside), measure on the test
        #    split, write the decoder.
        model.to(device)
        metrics.update(_keep_best(config, model, out, metrics, test_set))
        values, samples = measure_on_test(
            config, model, tokenizer, embed, test_pairs, test_set, test_languages
        )
        metrics.update(values)
        decoder_dir = out / "decoder"
        shutil.rmtree(decoder_dir, ignore_errors=True)
        model.save(
            decoder_dir,
            tokenizer_dir,
            max_length=config.max_length,
            query_share=config.query_share,
            encoder={"path": str(encoder_dir), "embedding_dim": dim},
            generation={
                "repetition_penalty": config.repetition_penalty,
                "candidates": config.rerank_candidates,
                "temperature": config.rerank_temperature,
                "top_p": config.rerank_top_p,
            },
        )
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        with open(out / SAMPLES_FILE, "w") as handle:
            for sample in samples:
                handle.write(json.dumps(sample) + "\n")
        log(TAG, f"{summary_line(metrics)} -> {decoder_dir}")
        return metrics


def summary_line(metrics: dict[str, Any]) -> str:
    line = (
        f"{metrics['steps']} steps in {metrics['train_seconds']:.0f}s "
        f"({metrics['tokens_per_second']:.0f} tok/s)"
        f" | test ppl {metrics['test_perplexity']:.2f} token acc {metrics['test_token_accuracy']:.3f}"
    )
    if "parse_rate" in metrics:
        line += (
            f" | parse {metrics['parse_rate']:.2f} bleu {metrics['bleu']:.3f} round-trip "
            f"R@1 {metrics['round_trip_recall@1']:.2f} R@10 {metrics['round_trip_recall@10']:.2f}"
        )
    by_language = metrics.get("parse_rate_by_language") or {}
    if len(by_language) > 1:
        line += " | parse by language " + " ".join(f"{name} {rate:.2f}" for name, rate in by_language.items())
    if "reranked_parse_rate" in metrics:
        line += (
            f" | best of {metrics['rerank_candidates']}: parse {metrics['reranked_parse_rate']:.2f} "
            f"R@1 {metrics['reranked_round_trip_recall@1']:.2f} R@10 {metrics['reranked_round_trip_recall@10']:.2f}"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode train-decoder",
        description=(
            "Train a decoder that writes code from the frozen encoder's embeddings (DeepSpeed; CPU or GPUs), "
            "and measure it on the test split."
        ),
        epilog=(
            "examples:\n"
            "  semcode train-decoder --encoder runs/encoder/encoder --pairs runs/ingest/pairs \\\n"
            "      --tokenizer runs/tokenizer --out runs/decoder --size tiny --max-train-pairs 2000\n"
            "  semcode train-decoder ... --out runs/decoder --resume   # go on from the latest checkpoint\n"
            "  semcode train-decoder ... --out runs/decoder-b --resume-from runs/decoder/checkpoints/step-000200\n"
            "  semcode train-decoder ... --precision fp32 --checkpoint-every-epochs 1\n"
            '  semcode generate runs/decoder --encoder runs/encoder/encoder "parse an ISO date"'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--encoder", required=True, metavar="DIR", help="the frozen encoder: a directory, or 'minilm'"
    )
    parser.add_argument(
        "--pairs", required=True, metavar="DIR", help="ingest pairs/ directory (train, test; valid)"
    )
    parser.add_argument(
        "--tokenizer", required=True, metavar="DIR", help="our BPE tokenizer (train-tokenizer output)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--onnx", default=None, metavar="DIR", help=ONNX_HELP)
    cfg.add_arguments(parser, TrainDecoderConfig)
    args = parser.parse_args(argv)
    from semcode.train.checkpoints import (
        INTERRUPTED_EXIT_CODE,
        RESUME_HINT,
        DurableCheckpointError,
        Preempted,
    )  # torch: after --help

    try:
        config = cfg.from_args(TrainDecoderConfig, args, section="train_decoder")
        run(config, args.encoder, args.pairs, args.tokenizer, args.out, onnx_dir=args.onnx)
    except cfg.BAD_INPUT_ERRORS as error:
        return cfg.bad_input("train-decoder", error)
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
