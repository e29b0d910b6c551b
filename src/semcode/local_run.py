"""``semcode run``: the whole job on this machine, artifacts under ./runs/<run-id>/.

Reads a preset (configs/<name>.yaml: one section per stage, keys = that stage's config fields),
runs the stages in pipeline order on the CPU, then prints the evaluation's summary table (model vs
BM25 vs zero-shot per suite) and where everything is. Every stage's config is validated before the first
stage starts, so a typo in a preset fails in a second, not after the ingest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from semcode import config as cfg
from semcode.progress import format_seconds, log
from semcode.stages import evaluate, ingest, train_encoder, train_tokenizer

TAG = "run"
STAGE_CONFIGS = {
    "ingest": ingest.IngestConfig,
    "train_tokenizer": train_tokenizer.TrainTokenizerConfig,
    "train_encoder": train_encoder.TrainEncoderConfig,
    "evaluate": evaluate.EvaluateConfig,
}


def resolve_configs(preset: dict, sources: list[str] | None, preset_name: str) -> dict:
    """One validated config per stage from a preset's sections; --source replaces ingest.sources."""
    unknown = sorted(set(preset) - set(STAGE_CONFIGS))
    if unknown:
        raise cfg.ConfigError(f"preset {preset_name}: unknown section(s) {unknown}; known: {list(STAGE_CONFIGS)}")
    configs = {}
    for section, cls in STAGE_CONFIGS.items():
        values = dict(preset.get(section) or {})
        if section == "ingest" and sources:
            values["sources"] = list(sources)
        configs[section] = cfg.from_dict(cls, values, source=f"preset {preset_name}, section {section}")
    return configs


def run(preset_name: str, sources: list[str] | None, runs_dir: str | Path, run_id: str | None) -> dict:
    configs = resolve_configs(cfg.load_yaml(preset_name), sources, preset_name)
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_dir) / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} already holds a run; pick another --run-id")
    run_dir.mkdir(parents=True)
    log(TAG, f"preset {preset_name} -> {run_dir}")
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def timed(stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        log(TAG, f"step {len(seconds) + 1}/{len(STAGE_CONFIGS)}: {stage}")
        result = fn(*args, **kwargs)
        seconds[stage] = round(time.perf_counter() - t0, 1)
        return result

    # 1. ingest: sources -> pairs/ + corpus/
    timed("ingest", ingest.run, configs["ingest"], run_dir / "ingest")
    pairs_dir, corpus_dir = run_dir / "ingest" / "pairs", run_dir / "ingest" / "corpus"
    # 2. train_tokenizer: corpus -> tokenizer (used when training from scratch)
    timed("train_tokenizer", train_tokenizer.run, configs["train_tokenizer"], corpus_dir,
          run_dir / "tokenizer", pairs_dir=pairs_dir)
    # 3. train_encoder: pairs + tokenizer (or init_from's) -> encoder/
    encoder_config = configs["train_encoder"]
    timed("train_encoder", train_encoder.run, encoder_config, pairs_dir, run_dir / "tokenizer",
          run_dir / "train_encoder")
    encoder_dir = run_dir / "train_encoder" / "encoder"
    # 4. evaluate: model vs BM25 (vs the initial checkpoint zero-shot when fine-tuning)
    metrics = timed("evaluate", evaluate.run, configs["evaluate"], encoder_dir, pairs_dir,
                    run_dir / "evaluate", baseline_encoder=encoder_config.init_from or None)

    total = time.perf_counter() - started
    summary = {"run_dir": str(run_dir), "preset": preset_name, "seconds": round(total, 1),
               "stage_seconds": seconds, "primary": metrics["primary"], "encoder": str(encoder_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(evaluate.summary_table(metrics["suites"]))
    print(f"\nrun {run_id} done in {format_seconds(total)}: {run_dir}")
    print(f"encoder: {encoder_dir}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode run",
        description="Run the whole job locally (CPU): ingest, tokenizer, encoder training, evaluation.",
        epilog="examples:\n  semcode run\n  semcode run --preset tiny --source dir:./myrepo --run-id try1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="local", help="preset name in configs/ or a YAML path (default: local)")
    parser.add_argument("--source", action="append", default=None, metavar="SPEC",
                        help="source spec, repeatable; replaces the preset's ingest sources")
    parser.add_argument("--runs-dir", default="runs", help="where run directories go (default: ./runs)")
    parser.add_argument("--run-id", default=None, help="name of this run's directory (default: a timestamp)")
    args = parser.parse_args(argv)
    try:
        run(args.preset, args.source, args.runs_dir, args.run_id)
    except (cfg.ConfigError, ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"semcode run: error: {error}", file=sys.stderr)
        return 2
    return 0
