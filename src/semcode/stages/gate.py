"""Stage gate: assemble the release bundle and decide whether it may replace the published champion.

Reads the candidate's stage outputs (encoder, ONNX export, index, evaluation metrics, optional
decoder) and the champion's metrics from the registry: ``<registry>/<name>/latest`` names the
champion's version folder, whose ``metrics.json`` (or bundle.json's metrics summary) holds its primary
metric. The candidate passes when

1. there is no champion (no registry given, or nothing published under ``name`` yet: the first release), or
   on every suite the two are comparable on, the candidate's primary metric (its protocol, system and
   metric, on that suite) is at most ``tolerance`` (absolute) below the champion's: higher is better. A
   suite is comparable when both were evaluated on it with the same queries (evaluate's ``queries_sha256``
   of the suite: its queries and their gold code) and it has at least ``min_comparable_queries`` of them:
   an MRR on 2 queries of a 32-function repository says nothing against one on 2,811 stdlib queries. When
   no suite is comparable (other data, too few queries, or a champion evaluated before semcode recorded the
   hash), the decision says "no comparable champion" and why, and rests on the baselines: a candidate that
   BM25 beats on its primary metric's suite is refused, unless ``allow_below_bm25``. When evaluate skipped
   the primary metric's suite (too few queries to evaluate: a small repository's empty test split), the
   same protocol, system and metric of the first suite evaluated stands in for it, and the reasons say so; and
2. int8 parity held in the export (export_onnx kept int8 as the default encoder), unless
   ``require_int8_parity`` is off, in which case a bundle that serves the fp32 encoder may pass too; and
3. on no guarded suite (``guarded_suites``: names or shell patterns of the suites evaluate ran) is the
   candidate below its zero-shot starting point beyond the paired interval: for every protocol, the upper
   end of the 95% paired bootstrap interval of MRR(model) - MRR(zero-shot) must be >= 0. A fine-tune that
   loses to the checkpoint it started from is not released (``zero_shot_regression: warn`` records it and
   lets it pass instead). Suites evaluated without a zero-shot baseline are named in the reasons. The
   everyday-queries suite is one of them (``everyday``, its one protocol ``stdlib``, its MRR@10).

Writes, whether it passed or not (a refused candidate can still be inspected)::

    out/bundle/         the release bundle (semcode.bundle has the contract)
    out/decision.json   {passed, reasons[], candidate, champion, primary_metric, tolerance, ...}
    out/config.json     the resolved config

all of it into a partial folder beside ``out`` that replaces ``out`` whole when complete
(semcode.storage.stage_output): a gate run again into the same ``--out`` leaves the earlier decision and
bundle or the new ones, never a mix, and decision.json's ``bundle`` is ``out/bundle``, where the bundle is.

``semcode gate`` prints the decision and exits 0 when the candidate passed, 3 when it was refused and 2
on bad input; the pipeline reads ``passed`` from decision.json (or from ``run``'s return value).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from semcode import bundle as bundles
from semcode import config as cfg
from semcode import storage
from semcode.config import ConfigError, field
from semcode.progress import log
from semcode.registry import resolve_latest

TAG = "gate"
EXIT_PASSED, EXIT_REFUSED = 0, 3  # and cfg.EXIT_BAD_INPUT (2)
EXIT_BAD_INPUT = cfg.EXIT_BAD_INPUT
DECISION_FILE = "decision.json"
ZERO_SHOT_REGRESSION = ("refuse", "warn")
BUNDLE_SUBDIR = "bundle"


@dataclass(frozen=True)
class GateConfig:
    name: str = field("semcode", "model name: the registry folder <registry>/<name>/")
    primary_metric: str = field(
        "test/full/model/mrr",
        "metric compared with the champion, suite/protocol/system/metric (higher is better)",
    )
    tolerance: float = field(
        0.005, "the candidate may be at most this much (absolute) worse than the champion"
    )
    require_int8_parity: bool = field(
        True, "refuse a candidate whose int8 encoder lost too much accuracy (export-onnx fell back to fp32)"
    )
    registry: str = field(
        "", "registry holding the champion: a local folder or s3://bucket/prefix ('' = none)"
    )
    version: str = field(
        "", "version of the candidate bundle ('' = UTC timestamp + short hash of the weights)"
    )
    guarded_suites: tuple[str, ...] = field(
        ("*",),
        "suites (names or shell patterns: test, cosqa, polyglot-*) on which the candidate may not fall below "
        "its zero-shot start beyond the paired interval; () = none",
    )
    zero_shot_regression: str = field(
        "refuse", "what a regression below zero-shot on a guarded suite does: refuse | warn (pass, say so)"
    )
    min_comparable_queries: int = field(
        30,
        "a suite is compared with the champion only when both were evaluated on the same queries (their "
        "hash) and it has at least this many",
    )
    allow_below_bm25: bool = field(
        False,
        "with no comparable champion, pass a candidate that BM25 beats on its primary metric's suite",
    )

    def validate(self) -> None:
        if not bundles.VERSION_PATTERN.fullmatch(self.name) or self.name == bundles.LATEST:
            raise ConfigError(f"name {self.name!r} must be letters, digits, '.', '_' or '-' (a folder name)")
        if len(self.primary_metric.split("/")) != 4:
            raise ConfigError(
                f"primary_metric {self.primary_metric!r} must be suite/protocol/system/metric, "
                "e.g. test/full/model/mrr"
            )
        if self.tolerance < 0:
            raise ConfigError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.min_comparable_queries < 1:
            raise ConfigError(f"min_comparable_queries must be >= 1, got {self.min_comparable_queries}")
        if self.zero_shot_regression not in ZERO_SHOT_REGRESSION:
            raise ConfigError(
                f"zero_shot_regression must be one of {list(ZERO_SHOT_REGRESSION)}, got {self.zero_shot_regression!r}"
            )
        if self.version:
            try:
                bundles.check_version(self.version)
            except ValueError as error:
                raise ConfigError(str(error)) from None


def read_metrics_file(path_or_dir: str | Path, what: str) -> dict:
    """metrics.json given as the file or the stage output folder that holds it."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / bundles.METRICS_FILE
    return bundles.read_json(path, what)


def champion_metrics(registry: str, name: str) -> tuple[str, dict] | None:
    """(version folder, metrics) of the published champion, or None when there is none."""
    if not registry:
        return None
    folder = resolve_latest(registry, name)
    if folder is None:
        return None
    metrics_uri = storage.join(folder, bundles.METRICS_FILE)
    if storage.exists(metrics_uri):
        return folder, bundles.read_json(metrics_uri, "champion metrics")
    return folder, bundles.read_json(storage.join(folder, bundles.BUNDLE_JSON), "champion bundle.json")[
        "metrics"
    ]


def evaluated_suites(metrics: dict) -> dict[str, dict]:
    """{suite: evaluate's record of it} from evaluate's metrics.json or a bundle's metrics.json."""
    suites = metrics.get("suites") or (metrics.get("evaluate") or {}).get("suites") or {}
    return {name: suite for name, suite in suites.items() if isinstance(suite, dict)}


def comparability(config: GateConfig, mine: dict | None, theirs: dict | None, champion: str) -> str | None:
    """None when a suite may be compared with the champion's evaluation of it, else why not."""
    if mine is None:
        return "the candidate was not evaluated on it"
    if theirs is None:
        return f"the champion {champion} was not evaluated on it"
    if not theirs.get("queries_sha256"):
        return (
            f"the champion {champion}'s metrics record no hash of its queries (evaluated before semcode did)"
        )
    if not mine.get("queries_sha256"):
        return "the candidate's metrics record no hash of its queries"
    if mine["queries_sha256"] != theirs["queries_sha256"]:
        return (
            f"other queries: the candidate's {mine.get('n_queries')} (sha256 {mine['queries_sha256'][:12]}) "
            f"vs the champion's {theirs.get('n_queries')} (sha256 {theirs['queries_sha256'][:12]})"
        )
    if int(mine.get("n_queries") or 0) < config.min_comparable_queries:
        return f"{mine.get('n_queries')} queries, fewer than min_comparable_queries {config.min_comparable_queries}"
    return None


def champion_comparisons(config: GateConfig, candidate: dict, champion: dict, version: str) -> list[dict]:
    """One entry per suite the candidate was evaluated on, the primary metric's suite first: ``{"suite",
    "metric", "comparable", "why_not"}`` and, where comparable (``comparability``), ``"candidate",
    "champion", "delta", "passed"``: the primary metric's protocol, system and metric on that suite."""
    primary_suite, rest = config.primary_metric.split("/", 1)
    mine, theirs = evaluated_suites(candidate), evaluated_suites(champion)
    entries = []
    for suite in sorted(mine, key=lambda name: (name != primary_suite, name)):
        metric = f"{suite}/{rest}"
        why_not = comparability(config, mine[suite], theirs.get(suite), version)
        values = bundles.metric_value(candidate, metric), bundles.metric_value(champion, metric)
        if why_not is None and None in values:
            why_not = f"{metric} is missing from the " + ("candidate" if values[0] is None else "champion")
        entry = {"suite": suite, "metric": metric, "comparable": why_not is None, "why_not": why_not}
        if why_not is None:
            delta = values[0] - values[1]
            entry.update(candidate=values[0], champion=values[1], delta=delta)
            entry["passed"] = delta >= -config.tolerance
        entries.append(entry)
    return entries


def compare(
    config: GateConfig, candidate: float, comparisons: list[dict], champion_version: str | None
) -> tuple[bool, list[str], bool]:
    """(passed, the reasons, whether a comparable champion decided) of the champion check: the candidate
    may be at most ``tolerance`` worse on every comparable suite. The first reason is about the primary
    metric; with a champion but no comparable suite, passed is False and the baselines decide."""
    metric = config.primary_metric
    if champion_version is None:
        where = f"registry {config.registry}" if config.registry else "no registry given"
        return True, [f"{metric} {candidate:.4f}: no champion to compare with ({where})"], False
    compared = [entry for entry in comparisons if entry["comparable"]]
    primary = next((entry for entry in comparisons if entry["metric"] == metric), None)
    why_not = "the candidate was not evaluated on it" if primary is None else primary["why_not"]
    if not compared:
        reason = (
            f"{metric} {candidate:.4f}: no comparable champion ({champion_version}: {why_not}; nor on any other "
            "suite), so the decision rests on the baselines"
        )
        return False, [reason], False
    lines = []
    for entry in compared:
        comparison = (
            f"{entry['metric']} {entry['candidate']:.4f} vs champion {champion_version} "
            f"{entry['champion']:.4f} ({entry['delta']:+.4f})"
        )
        verdict = "not worse than" if entry["passed"] else "worse than the tolerance"
        lines.append(f"{comparison}: {verdict} -{config.tolerance}")
    if primary is None or not primary["comparable"]:
        lines.insert(
            0, f"{metric} {candidate:.4f}: not comparable with champion {champion_version} ({why_not})"
        )
    return all(entry["passed"] for entry in compared), lines, True


def on_the_suites_there_are(config: GateConfig, metrics: dict) -> tuple[GateConfig, str | None]:
    """When evaluate skipped the primary metric's suite (too few queries: a small repository's test split;
    not present), the config judging on the same protocol, system and metric of the first suite evaluated,
    and the sentence that says so; else the config as it is and None."""
    suite, rest = config.primary_metric.split("/", 1)
    why = (metrics.get("skipped") or {}).get(suite)
    if bundles.metric_value(metrics, config.primary_metric) is not None or not why:
        return config, None
    for other in evaluated_suites(metrics):
        if bundles.metric_value(metrics, f"{other}/{rest}") is not None:
            judged = dataclasses.replace(config, primary_metric=f"{other}/{rest}")
            return judged, f"{config.primary_metric}: not evaluated ({why}); judged on {other}/{rest} instead"
    return config, None


def bm25_reason(config: GateConfig, metrics: dict) -> tuple[bool, str]:
    """(passed, the reason) of the baseline check made when no champion is comparable: BM25 may not beat the
    candidate on its primary metric's suite (same protocol and metric), unless allow_below_bm25."""
    suite, protocol, _, name = config.primary_metric.split("/")
    baseline = f"{suite}/{protocol}/bm25/{name}"
    model, bm25 = (
        bundles.metric_value(metrics, config.primary_metric),
        bundles.metric_value(metrics, baseline),
    )
    if bm25 is None:
        return True, f"{baseline} was not evaluated: no baseline to hold the candidate to"
    comparison = f"{config.primary_metric} {model:.4f} vs {baseline} {bm25:.4f}"
    if model >= bm25:
        return True, f"{comparison}: not below BM25"
    if config.allow_below_bm25:
        return True, f"{comparison}: BM25 beats the candidate, but allow_below_bm25 is on: not refused"
    return False, f"{comparison}: BM25 beats the candidate, refused (allow_below_bm25 would pass it)"


def parity_reason(config: GateConfig, parity: dict) -> tuple[bool, str]:
    """(passed, the reason) for the int8 encoder's accuracy."""
    loss = parity.get("mrr_loss")
    detail = parity.get("reason") or (
        f"int8 MRR loss {loss:.4f}" if isinstance(loss, float) else "no MRR check"
    )
    if parity["held"]:
        return True, f"int8 parity held ({detail}): the default encoder is int8"
    if config.require_int8_parity:
        return False, (
            f"int8 parity failed ({detail}); require_int8_parity is on (turn it off to release with the "
            "fp32 default encoder)"
        )
    return True, f"int8 parity failed ({detail}), but require_int8_parity is off: the bundle serves fp32"


def zero_shot_comparisons(config: GateConfig, metrics: dict) -> list[dict]:
    """One entry per guarded suite and protocol: the paired MRR gap of the model over zero-shot and whether
    it regresses (the whole 95% interval below 0); a guarded suite without a zero-shot baseline gets one
    entry with ``gap`` None."""
    comparisons = []
    for suite_name, suite in sorted((metrics.get("suites") or {}).items()):
        if not any(fnmatch.fnmatchcase(suite_name, pattern) for pattern in config.guarded_suites):
            continue
        gaps = {
            protocol: baselines["zero_shot"]
            for protocol, baselines in sorted((suite.get("model_vs") or {}).items())
            if "zero_shot" in baselines
        }
        if not gaps:
            comparisons.append({"suite": suite_name, "protocol": None, "gap": None, "regressed": False})
        for protocol, gap in gaps.items():
            regressed = gap["ci95_high"] < 0
            comparisons.append(
                {"suite": suite_name, "protocol": protocol, "gap": gap, "regressed": regressed}
            )
    return comparisons


def zero_shot_reason(config: GateConfig, comparisons: list[dict]) -> tuple[bool, list[str]]:
    """(passed, one sentence per comparison) for the guard against falling below the zero-shot start."""
    if not config.guarded_suites:
        return True, ["no suite is guarded against zero-shot regressions (guarded_suites is empty)"]
    if not comparisons:
        return True, [f"no evaluated suite matches guarded_suites {list(config.guarded_suites)}"]
    reasons, regressed = [], False
    for item in comparisons:
        if item["gap"] is None:
            reasons.append(f"{item['suite']}: no zero-shot baseline evaluated, so no regression check")
            continue
        gap = item["gap"]
        interval = f"{gap['mrr_difference']:+.4f} (95% {gap['ci95_low']:+.4f} .. {gap['ci95_high']:+.4f})"
        if item["regressed"]:
            regressed = True
            reasons.append(
                f"{item['suite']}/{item['protocol']}: model - zero-shot MRR {interval}: below zero-shot"
            )
        else:
            reasons.append(f"{item['suite']}/{item['protocol']}: model - zero-shot MRR {interval}: not below")
    if regressed and config.zero_shot_regression == "warn":
        reasons.append("a guarded suite fell below zero-shot, but zero_shot_regression is warn: not refused")
        return True, reasons
    return not regressed, reasons


def run(
    config: GateConfig,
    encoder_dir: str | Path,
    onnx_dir: str | Path,
    index_dir: str | Path,
    eval_metrics: str | Path,
    out_dir: str | Path,
    decoder_dir: str | Path | None = None,
    extra_metrics: dict | None = None,
) -> dict:
    """Assemble ``out_dir/bundle`` and decide; returns the decision (also ``out_dir/decision.json``).

    ``eval_metrics``: evaluate's metrics.json or its output folder. ``extra_metrics``: more stages'
    metrics for the bundle's metrics.json and model card, e.g. {"ingest": manifest, "train_encoder": ...}.
    """
    config.validate()
    started = time.perf_counter()
    out = Path(out_dir)
    bundle_dir = out / BUNDLE_SUBDIR  # where the bundle is once the output is swapped in (step 4)

    # 1. The candidate's metrics and its int8 parity, checked before anything is copied.
    candidate_metrics = read_metrics_file(eval_metrics, "evaluation metrics (evaluate output)")
    config, not_evaluated = on_the_suites_there_are(config, candidate_metrics)
    candidate_value = bundles.metric_value(candidate_metrics, config.primary_metric)
    if candidate_value is None:
        known = sorted(bundles.flat_metrics(candidate_metrics.get("suites") or {}))
        raise ValueError(
            f"evaluation metrics {eval_metrics} have no {config.primary_metric}; they have {known[:12]}"
            + (" ..." if len(known) > 12 else "")
        )
    _, export_metrics, _ = bundles.check_bundle_inputs(
        encoder_dir, onnx_dir, index_dir, candidate_metrics, decoder_dir
    )
    parity = bundles.int8_parity(export_metrics)

    # 2. The champion, from the registry's latest pointer; compared only on the suites both were evaluated on
    # with the same queries.
    champion = champion_metrics(config.registry, config.name)
    champion_folder, champion_version, champion_value, compared = None, None, None, []
    if champion is not None:
        champion_folder, metrics = champion
        champion_version = champion_folder.rstrip("/").rsplit("/", 1)[-1]
        champion_value = bundles.metric_value(metrics, config.primary_metric)
        compared = champion_comparisons(config, candidate_metrics, metrics, champion_version)

    # 3. The decision.
    metric_passed, metric_why, comparable = compare(config, candidate_value, compared, champion_version)
    if champion is not None and not comparable:  # no comparable champion: the baselines decide
        metric_passed, bm25_why = bm25_reason(config, candidate_metrics)
        metric_why.append(bm25_why)
    parity_passed, parity_why = parity_reason(config, parity)
    comparisons = zero_shot_comparisons(config, candidate_metrics)
    zero_shot_passed, zero_shot_why = zero_shot_reason(config, comparisons)
    passed = metric_passed and parity_passed and zero_shot_passed
    version = config.version or bundles.default_version(
        bundles.model_dir(encoder_dir, bundles.ENCODER_DIR, bundles.ENCODER_CONFIG_FILE)
    )
    reasons = [metric_why[0], parity_why, *zero_shot_why, *metric_why[1:]]
    decision = {
        "passed": passed,
        "reasons": [not_evaluated, *reasons] if not_evaluated else reasons,
        "name": config.name,
        "primary_metric": config.primary_metric,
        "tolerance": config.tolerance,
        "require_int8_parity": config.require_int8_parity,
        "guarded_suites": list(config.guarded_suites),
        "zero_shot_regression": config.zero_shot_regression,
        "zero_shot_comparisons": comparisons,
        "candidate": {"version": version, "value": candidate_value, "int8_parity": parity},
        # the champion compared against (publish moves latest only while it is still this version)
        "champion": None
        if champion is None
        else {
            "version": champion_version,
            "path": champion_folder,
            "value": champion_value,
            "comparable": comparable,
            "suites": compared,
        },
        "registry": config.registry,
        "bundle": str(bundle_dir),
    }

    # 4. The bundle, passed or not, and decision.json (last): written into a partial folder beside out_dir
    #    that replaces it whole when complete (an earlier gate's output there is never mixed with this one).
    gate_summary = {
        key: decision[key]
        for key in ("passed", "reasons", "champion", "primary_metric", "tolerance", "zero_shot_comparisons")
    }
    with storage.stage_output(out) as partial:
        bundles.assemble_bundle(
            partial / BUNDLE_SUBDIR,
            name=config.name,
            version=version,
            encoder_dir=encoder_dir,
            onnx_dir=onnx_dir,
            index_dir=index_dir,
            metrics=candidate_metrics,
            decoder_dir=decoder_dir,
            extra={"gate": gate_summary},
            stage_metrics=extra_metrics,
        )
        cfg.save_resolved(config, partial)
        decision["seconds"] = round(time.perf_counter() - started, 3)
        (partial / DECISION_FILE).write_text(json.dumps(decision, indent=2) + "\n")
    verdict = "PASSED" if passed else "REFUSED"
    for reason in decision["reasons"]:
        log(TAG, reason)
    log(TAG, f"{verdict}: {config.name} {version} -> {bundle_dir}")
    return decision


def decision_scalars(decision: dict) -> dict[str, float]:
    """decision.json as flat numbers for KFP's Metrics (the run comparison view puts candidate and champion
    side by side): ``passed`` (1 or 0), the candidate's and champion's primary metric, and per compared suite
    ``<suite>.candidate``, ``<suite>.champion`` and ``<suite>.delta``; the int8 MRR loss; per guarded suite
    and protocol the zero-shot gap's upper interval end (``<suite>.<protocol>.zero_shot_gap_high``)."""
    scalars = {"passed": 1.0 if decision["passed"] else 0.0}
    candidate = decision.get("candidate") or {}
    if isinstance(candidate.get("value"), int | float):
        scalars["candidate"] = float(candidate["value"])
    champion = decision.get("champion") or {}
    if isinstance(champion.get("value"), int | float):
        scalars["champion"] = float(champion["value"])
    for entry in champion.get("suites") or []:
        if entry.get("comparable"):
            for key in ("candidate", "champion", "delta"):
                scalars[f"{entry['suite']}.{key}"] = float(entry[key])
    parity = candidate.get("int8_parity") or {}
    if isinstance(parity.get("mrr_loss"), int | float):
        scalars["int8_mrr_loss"] = float(parity["mrr_loss"])
    for item in decision.get("zero_shot_comparisons") or []:
        gap = item.get("gap") or {}
        if isinstance(gap.get("ci95_high"), int | float):
            scalars[f"{item['suite']}.{item['protocol']}.zero_shot_gap_high"] = float(gap["ci95_high"])
    return scalars


def parse_stage_metrics(specs: list[str] | None) -> dict[str, dict]:
    """``["ingest=runs/x/ingest", ...]`` -> {"ingest": its manifest.json or metrics.json}."""
    result: dict[str, dict] = {}
    for spec in specs or []:
        stage, sep, path = spec.partition("=")
        if not sep or not stage or not path:
            raise ValueError(f"--stage-metrics {spec!r}: expected STAGE=PATH, e.g. ingest=runs/x/ingest")
        location = Path(path)
        if location.is_dir():
            found = [location / n for n in ("metrics.json", "manifest.json") if (location / n).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"--stage-metrics {spec}: {location} has no metrics.json or manifest.json"
                )
            location = found[0]
        result[stage] = bundles.read_json(location, f"--stage-metrics {stage}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode gate",
        description="Assemble the release bundle (model card, report) and compare the candidate with the "
        "champion in the registry. Exit code 0: passed, 3: refused, 2: bad input; decision.json says why.",
        epilog=(
            "examples:\n"
            "  semcode gate --encoder runs/r1/train_encoder/encoder --onnx runs/r1/onnx --index runs/r1/index \\\n"
            "      --metrics runs/r1/evaluate --out runs/r1/gate --registry s3://models/registry \\\n"
            "      --stage-metrics ingest=runs/r1/ingest --stage-metrics train_encoder=runs/r1/train_encoder"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--encoder", required=True, metavar="DIR", help="encoder directory (train-encoder output)"
    )
    parser.add_argument("--onnx", required=True, metavar="DIR", help="export-onnx output directory")
    parser.add_argument("--index", required=True, metavar="DIR", help="build-index output directory")
    parser.add_argument(
        "--metrics", required=True, metavar="DIR|FILE", help="evaluate output directory or its metrics.json"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output directory: bundle/ and decision.json"
    )
    parser.add_argument(
        "--decoder", default=None, metavar="DIR", help="train-decoder output directory (optional)"
    )
    parser.add_argument(
        "--stage-metrics",
        action="append",
        default=None,
        metavar="STAGE=PATH",
        help="more metrics for the bundle and model card, e.g. ingest=runs/r1/ingest (repeatable)",
    )
    cfg.add_arguments(parser, GateConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(GateConfig, args, section="gate")
        decision = run(
            config,
            args.encoder,
            args.onnx,
            args.index,
            args.metrics,
            args.out,
            decoder_dir=args.decoder,
            extra_metrics=parse_stage_metrics(args.stage_metrics),
        )
    except (*cfg.BAD_INPUT_ERRORS, storage.StorageError) as error:
        return cfg.bad_input("gate", error)
    print(json.dumps({k: decision[k] for k in ("passed", "reasons", "candidate", "champion")}, indent=2))
    return EXIT_PASSED if decision["passed"] else EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
