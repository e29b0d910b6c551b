"""Encoder training throughput: semcode (DeepSpeed engine) vs sentence-transformers (MNRL), same everything;
or semcode with its live logging (TensorBoard event files) on vs off.

    .venv/bin/python bench/bench_train.py --pairs runs/local-2/artifacts/.../pairs      # CPU, 2 rounds
    .venv/bin/python bench/bench_train.py --pairs DIR --steps 30 --batch-size 16 --max-length 128 --rounds 3
    .venv/bin/python bench/bench_train.py --pairs DIR --compare live-logging --rounds 3  # on / off ratio

``--compare live-logging`` runs the semcode side twice per round: as it trains by default (event files
under tensorboard/, docs/observability.md) and with ``SEMCODE_TENSORBOARD=0`` (none), and reports
the ratio on / off.

Both sides train all-MiniLM-L6-v2 on the same training pairs (the first ``steps x batch_size`` rows of
the train split, same order: no shuffling), with the same batch size, max length, learning rate,
temperature (MNRL's scale 20 = 1 / 0.05) and AdamW, on the same device:

- semcode: ``semcode.stages.train_encoder.run`` (DeepSpeed engine, in-batch InfoNCE, symmetric);
- sentence-transformers: ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` (its
  recommended path; it needs ``datasets`` and ``accelerate``, which semcode does not:
  ``.venv/bin/pip install datasets accelerate`` before running this benchmark).

Note the two losses differ in one respect: semcode's is symmetric (query->code and code->query), MNRL
is query->code only; semcode does that extra work in the same step.

Each (system, round) runs in its own process, alternating (the order flips every round), so both see
the same machine load; the first ``--skip`` steps of each run (allocations, warm caches) are left out of
its pairs/s. Prints one JSON object with each run's pairs/s, the medians, the ratio of the medians
(semcode / sentence-transformers, or on / off) and each round's own ratio ("paired_ratios", the two runs
of a round back to back) with their median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def training_rows(pairs_dir: str, n: int) -> tuple[list[str], list[str]]:
    from semcode.data.pairs import read_split

    table = read_split(Path(pairs_dir), "train", columns=["query", "code"])
    queries, codes = table.column("query").to_pylist()[:n], table.column("code").to_pylist()[:n]
    if len(queries) < n:
        raise SystemExit(f"{pairs_dir}/train has {len(queries)} pairs, the benchmark needs {n}")
    return queries, codes


def steady_rate(step_seconds: list[float], batch_size: int, skip: int) -> float:
    kept = step_seconds[skip:]
    return batch_size * len(kept) / sum(kept)


def run_semcode(args: argparse.Namespace, work: Path) -> list[float]:
    """Per-step seconds of semcode's train_encoder on a pairs dir holding only the benchmark rows."""
    from semcode.data.pairs import write_shards
    from semcode.stages.train_encoder import TrainEncoderConfig, run

    queries, codes = training_rows(args.pairs, args.steps * args.batch_size)
    pairs_dir = work / "pairs"
    rows = [{"query": q, "code": c, "split": "train"} for q, c in zip(queries, codes, strict=True)]
    write_shards(rows, pairs_dir / "train")  # no valid split: no evaluation inside the timed run
    config = TrainEncoderConfig(
        init_from="minilm",
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        warmup_ratio=0.0,
        temperature=0.05,
        eval_every=0,
        checkpoint_every=0,
        keep_checkpoints=1,
        seed=0,
        log_every=10,
    )
    run(config, pairs_dir, None, work / "out")
    history = json.loads((work / "out" / "history.json").read_text())
    return [entry["seconds"] for entry in history["steps"]]


def run_sentence_transformers(args: argparse.Namespace, work: Path) -> list[float]:
    """Per-step seconds of SentenceTransformerTrainer + MultipleNegativesRankingLoss on the same rows."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from semcode.models.encoder import resolve_checkpoint

    queries, codes = training_rows(args.pairs, args.steps * args.batch_size)
    model = SentenceTransformer(str(resolve_checkpoint("minilm")), device=args.device)
    model.max_seq_length = args.max_length
    dataset = Dataset.from_dict({"anchor": queries, "positive": codes})

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._last = 0.0

        def on_step_begin(self, *_args, **_kwargs) -> None:
            if not self._last:
                self._last = time.perf_counter()

        def on_step_end(self, *_args, **_kwargs) -> None:
            now = time.perf_counter()
            self.seconds.append(now - self._last)
            self._last = now

    clock = StepClock()
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=0,
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=0,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        dataloader_drop_last=True,
        use_cpu=args.device == "cpu",
        bf16=args.device != "cpu",
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model, scale=20.0),
        callbacks=[clock],
    )
    trainer.train()
    return clock.seconds


def one_run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="semcode-bench-train-") as work:
        runner = run_semcode if args.system == "semcode" else run_sentence_transformers
        seconds = runner(args, Path(work))
    print(json.dumps({"system": args.system, "step_seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", required=True, help="an ingest pairs/ directory (its train split is used)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=3, help="first steps of each run left out of pairs/s")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--rounds", type=int, default=2, help="runs per system, alternating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compare",
        choices=("sentence-transformers", "live-logging"),
        default="sentence-transformers",
        help="what semcode is measured against (default: sentence-transformers)",
    )
    parser.add_argument("--system", choices=("semcode", "sentence-transformers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.system:  # a child process: one run
        one_run(args)
        return

    # each compared side: (the child's --system, environment changes)
    if args.compare == "live-logging":
        sides = {
            "semcode-live-logging-on": ("semcode", {"SEMCODE_TENSORBOARD": "1"}),
            "semcode-live-logging-off": ("semcode", {"SEMCODE_TENSORBOARD": "0"}),
        }
    else:
        sides = {"semcode": ("semcode", {}), "sentence-transformers": ("sentence-transformers", {})}
    rates: dict[str, list[float]] = {side: [] for side in sides}
    for round_index in range(args.rounds):
        # The order alternates between rounds, so a machine getting slower or faster favours neither side.
        order = list(sides.items()) if round_index % 2 == 0 else list(sides.items())[::-1]
        for side, (system, env_changes) in order:
            command = [sys.executable, __file__, "--system", system] + [
                f"--{name.replace('_', '-')}={getattr(args, name)}"
                for name in ("pairs", "steps", "skip", "batch_size", "max_length", "lr", "device")
            ]
            print(f"[bench-train] round {round_index + 1}/{args.rounds}: {side}", file=sys.stderr)
            done = subprocess.run(
                command, stdout=subprocess.PIPE, text=True, check=True, env={**os.environ, **env_changes}
            )
            seconds = json.loads(done.stdout.strip().splitlines()[-1])["step_seconds"]
            rates[side].append(round(steady_rate(seconds, args.batch_size, args.skip), 2))
            print(f"[bench-train] {side}: {rates[side][-1]} pairs/s", file=sys.stderr)
    medians = {side: round(statistics.median(values), 2) for side, values in rates.items()}
    first, second = list(sides)
    # Each round's two runs ran back to back under the same load: their ratio is the paired measurement.
    paired = [round(a / b, 4) for a, b in zip(rates[first], rates[second], strict=True)]
    print(
        json.dumps(
            {
                "pairs_per_second": rates,
                "median": medians,
                f"ratio_{first}_over_{second}".replace("-", "_"): round(medians[first] / medians[second], 3),
                "paired_ratios": paired,
                "median_paired_ratio": round(statistics.median(paired), 4),
                "setup": {
                    "compare": args.compare,
                    "steps": args.steps,
                    "skip": args.skip,
                    "batch_size": args.batch_size,
                    "max_length": args.max_length,
                    "lr": args.lr,
                    "device": args.device,
                    "rounds": args.rounds,
                    "torch_threads": __import__("torch").get_num_threads(),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
