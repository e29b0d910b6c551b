"""The promotion gate and publishing to a registry (local folder and a real S3 server).

The candidate is the tiny real run of tests/bundle_fixture.py; "better" and "worse" candidates are the
same run with evaluate's metrics.json rewritten, and a failed int8 parity is export-onnx's metrics.json
as the stage writes it when int8 loses too much MRR.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bundle_fixture import TinyRun, cached_tiny_run

from semcode import bundle as bundles
from semcode import config as cfg
from semcode import storage
from semcode.bundle import BundleError
from semcode.registry import resolve_latest, write_latest
from semcode.stages import gate, publish

METRIC = "test/full/model/mrr"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


def eval_with_mrr(run: TinyRun, folder: Path, value: float) -> Path:
    """evaluate's metrics.json with the primary metric (test/full/model/mrr) set to ``value``."""
    metrics = run.eval_metrics()
    metrics["suites"]["test"]["full"]["model"]["mrr"] = value
    metrics["primary"] = {"name": METRIC, "value": value}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def onnx_with_failed_parity(run: TinyRun, folder: Path) -> Path:
    """export-onnx's output as it is when int8 loses more MRR than allowed: fp32 is the default."""
    shutil.copytree(run.onnx, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["retrieval"]["mrr"] = {"fp32": 0.40, "int8": 0.37}
    metrics["retrieval"]["mrr_loss"] = 0.03
    metrics["max_mrr_loss"] = 0.005
    metrics["default_encoder"] = "fp32"
    metrics["default_encoder_reason"] = "int8 loses 0.0300 MRR (fp32 0.4000, int8 0.3700) > 0.005"
    metrics["default_files"] = metrics["files"]["fp32"]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def run_gate(
    run: TinyRun, out: Path, evaluation: Path, registry: str = "", onnx: Path | None = None, **values
) -> dict:
    # The tiny run's test split has 7 queries: compared with the champion only below the default minimum.
    config = cfg.from_dict(gate.GateConfig, {"registry": registry, "min_comparable_queries": 1, **values})
    return gate.run(config, run.encoder, onnx or run.onnx, run.index, evaluation, out)


def run_publish(bundle_dir: Path, registry: str, out: Path) -> dict:
    return publish.run(publish.PublishConfig(registry=registry), bundle_dir, out)


def published(run: TinyRun, tmp: Path, registry: str, version: str, mrr: float) -> dict:
    """Gate (must pass) and publish one version; returns publish's manifest."""
    decision = run_gate(
        run,
        tmp / f"gate-{version}",
        eval_with_mrr(run, tmp / f"eval-{version}", mrr),
        registry,
        version=version,
    )
    assert decision["passed"], decision["reasons"]
    return run_publish(Path(decision["bundle"]), registry, tmp / f"publish-{version}")


def latest_pointer(registry: str) -> dict:
    return json.loads(storage.read_text(storage.join(registry, "semcode", "latest")))


# ---------------------------------------------------------------------------------------------
# gate


def test_no_champion_passes_and_the_cli_says_so(tiny_run: TinyRun, tmp_path: Path, capsys):
    out = tmp_path / "gate"
    argv = ["--encoder", str(tiny_run.encoder), "--onnx", str(tiny_run.onnx), "--index", str(tiny_run.index)]
    argv += ["--metrics", str(tiny_run.evaluate), "--out", str(out), "--version", "cand-1"]
    argv += ["--stage-metrics", f"ingest={tiny_run.ingest}"]
    assert gate.main(argv) == gate.EXIT_PASSED
    printed = json.loads(capsys.readouterr().out)
    decision = json.loads((out / "decision.json").read_text())
    assert printed["passed"] is decision["passed"] is True and decision["champion"] is None
    assert (
        decision["reasons"][0].startswith(f"{METRIC} ")
        and "no champion to compare with" in decision["reasons"][0]
    )
    assert decision["reasons"][1].startswith("int8 parity held")
    summary = bundles.validate_bundle(out / "bundle")
    assert summary["version"] == "cand-1" and summary["default_encoder"] == "encoder.int8.onnx"
    meta = bundles.read_bundle_json(out / "bundle")
    assert meta["source"]["gate"]["passed"] is True
    assert "TrainTokenizerConfig" not in meta["source"]["stage_configs"]  # only the bundle's own inputs
    assert {"ExportOnnxConfig", "BuildIndexConfig"} <= set(meta["source"]["stage_configs"])
    assert json.loads((out / "bundle" / "metrics.json").read_text())["ingest"]["totals"]["pairs"] > 0


def test_default_version_is_a_timestamp_and_a_weights_hash(tiny_run: TinyRun, tmp_path: Path):
    decision = run_gate(tiny_run, tmp_path / "gate", tiny_run.evaluate)
    version = decision["candidate"]["version"]
    assert bundles.VERSION_PATTERN.fullmatch(version) and version.endswith("Z-" + version[-8:])
    assert version[-8:] == bundles.default_version(tiny_run.encoder)[-8:]


@pytest.mark.parametrize(
    ("candidate", "sign"),
    [(0.5, "+0.0000"), (0.498, "-0.0020"), (0.52, "+0.0200")],
    ids=["equal", "within-tolerance", "better"],
)
def test_a_candidate_not_worse_than_the_champion_passes(tiny_run, tmp_path, candidate, sign):
    registry = str(tmp_path / "registry")
    published(tiny_run, tmp_path, registry, "v1", 0.5)
    decision = run_gate(
        tiny_run, tmp_path / "gate", eval_with_mrr(tiny_run, tmp_path / "eval", candidate), registry
    )
    assert decision["passed"] is True
    assert decision["champion"]["version"] == "v1" and decision["champion"]["value"] == 0.5
    assert decision["reasons"][0] == (
        f"{METRIC} {candidate:.4f} vs champion v1 0.5000 ({sign}): not worse than -0.005"
    )


def test_a_candidate_worse_beyond_tolerance_is_refused_but_its_bundle_is_kept(tiny_run, tmp_path, capsys):
    registry = str(tmp_path / "registry")
    published(tiny_run, tmp_path, registry, "v1", 0.5)
    evaluation = eval_with_mrr(tiny_run, tmp_path / "eval", 0.49)
    out = tmp_path / "gate"
    argv = ["--encoder", str(tiny_run.encoder), "--onnx", str(tiny_run.onnx), "--index", str(tiny_run.index)]
    argv += ["--metrics", str(evaluation), "--out", str(out), "--registry", registry, "--version", "v2"]
    argv += ["--min-comparable-queries", "1"]
    assert gate.main(argv) == gate.EXIT_REFUSED
    decision = json.loads((out / "decision.json").read_text())
    assert decision["passed"] is False
    assert (
        decision["reasons"][0]
        == f"{METRIC} 0.4900 vs champion v1 0.5000 (-0.0100): worse than the tolerance -0.005"
    )
    assert bundles.validate_bundle(out / "bundle")["version"] == "v2"
    assert "REFUSED" not in capsys.readouterr().out  # the verdict goes to stderr, stdout is the decision JSON


def test_failed_int8_parity_is_refused_unless_allowed(tiny_run: TinyRun, tmp_path: Path):
    onnx = onnx_with_failed_parity(tiny_run, tmp_path / "onnx")
    refused = run_gate(tiny_run, tmp_path / "strict", tiny_run.evaluate, onnx=onnx)
    assert refused["passed"] is False
    assert refused["reasons"][1].startswith("int8 parity failed (int8 loses 0.0300 MRR")
    assert "require_int8_parity is on" in refused["reasons"][1]

    allowed = run_gate(
        tiny_run, tmp_path / "lenient", tiny_run.evaluate, onnx=onnx, require_int8_parity=False
    )
    assert allowed["passed"] is True and "require_int8_parity is off" in allowed["reasons"][1]
    meta = bundles.read_bundle_json(tmp_path / "lenient" / "bundle")
    assert meta["default_encoder"] == "encoder.onnx" and meta["default_precision"] == "fp32"
    assert "FAILED" in (tmp_path / "lenient" / "bundle" / "model_card.md").read_text()


def eval_with_zero_shot_gap(run: TinyRun, folder: Path, suite: str, low: float, high: float) -> Path:
    """evaluate's metrics.json with a zero-shot comparison on ``suite`` whose 95% interval is low..high."""
    metrics = run.eval_metrics()
    base = metrics["suites"]["test"]
    metrics["suites"][suite] = (
        {**base, "model_vs": {}} if suite not in metrics["suites"] else metrics["suites"][suite]
    )
    gap = {"mrr_difference": (low + high) / 2, "ci95_low": low, "ci95_high": high}
    metrics["suites"][suite]["model_vs"] = {"full": {"zero_shot": gap}, "csn": {"zero_shot": gap}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_a_candidate_below_zero_shot_on_a_guarded_suite_is_refused(tiny_run: TinyRun, tmp_path: Path):
    evaluation = eval_with_zero_shot_gap(tiny_run, tmp_path / "eval", "cosqa", -0.030, -0.004)
    refused = run_gate(tiny_run, tmp_path / "refused", evaluation)
    assert refused["passed"] is False
    assert (
        "cosqa/full: model - zero-shot MRR -0.0170 (95% -0.0300 .. -0.0040): below zero-shot"
        in refused["reasons"]
    )
    assert any(item["regressed"] for item in refused["zero_shot_comparisons"])
    # the decision and its reasons reach the bundle's model card
    card = (tmp_path / "refused" / "bundle" / "model_card.md").read_text()
    assert "below zero-shot" in card

    # not guarded, or warn: it passes, and the reasons still say so
    unguarded = run_gate(tiny_run, tmp_path / "unguarded", evaluation, guarded_suites=["test", "humaneval"])
    assert unguarded["passed"] is True
    warned = run_gate(tiny_run, tmp_path / "warned", evaluation, zero_shot_regression="warn")
    assert warned["passed"] is True and any("zero_shot_regression is warn" in r for r in warned["reasons"])


def test_a_gap_whose_interval_reaches_zero_is_not_a_regression(tiny_run: TinyRun, tmp_path: Path):
    evaluation = eval_with_zero_shot_gap(tiny_run, tmp_path / "eval", "cosqa", -0.020, 0.003)
    decision = run_gate(tiny_run, tmp_path / "gate", evaluation, guarded_suites=["cos*"])
    assert decision["passed"] is True, decision["reasons"]
    assert [item["suite"] for item in decision["zero_shot_comparisons"]] == ["cosqa", "cosqa"]


def test_a_guarded_suite_without_zero_shot_says_it_was_not_checked(tiny_run: TinyRun, tmp_path: Path):
    decision = run_gate(tiny_run, tmp_path / "gate", tiny_run.evaluate)  # tiny: trained from scratch
    assert decision["passed"] is True
    assert any("no zero-shot baseline evaluated" in reason for reason in decision["reasons"])


def test_gate_rejects_bad_input_before_work(tiny_run: TinyRun, tmp_path: Path, capsys):
    with pytest.raises(cfg.ConfigError, match="tolerance must be >= 0"):
        cfg.from_dict(gate.GateConfig, {"tolerance": -0.1})
    with pytest.raises(ValueError, match="have no test/full/model/ndcg@3"):
        run_gate(tiny_run, tmp_path / "g", tiny_run.evaluate, primary_metric="test/full/model/ndcg@3")
    argv = [
        "--encoder",
        str(tiny_run.encoder),
        "--onnx",
        str(tmp_path / "missing"),
        "--index",
        str(tiny_run.index),
    ]
    argv += ["--metrics", str(tiny_run.evaluate), "--out", str(tmp_path / "g2")]
    assert gate.main(argv) == gate.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "cannot assemble a release bundle from these inputs" in err
    assert f"ONNX export (export-onnx output): {tmp_path / 'missing' / 'metrics.json'} does not exist" in err
    assert not (tmp_path / "g2").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------
# publish


def check_published(registry: str, version: str) -> None:
    folder = resolve_latest(registry, "semcode")
    assert folder == storage.join(registry, "semcode", version)
    assert storage.exists(storage.join(folder, bundles.COMPLETE_MARKER))
    pointer = latest_pointer(registry)
    assert (
        pointer["version"] == version and pointer["path"] == f"semcode/{version}"
    )  # relative to the registry
    assert pointer["primary_metric"]["name"] == METRIC


def test_publish_to_a_local_registry(tiny_run: TinyRun, tmp_path: Path):
    registry = str(tmp_path / "registry")
    assert resolve_latest(registry, "semcode") is None
    manifest = published(tiny_run, tmp_path, registry, "v1", 0.5)
    check_published(registry, "v1")
    assert manifest["previous_latest"] is None and manifest["files"][-1]["file"] == "bundle.json"
    assert json.loads((tmp_path / "publish-v1" / "manifest.json").read_text())["version"] == "v1"
    assert bundles.validate_bundle(Path(registry) / "semcode" / "v1")["version"] == "v1"  # the copy is whole
    assert publish.resolve_latest is resolve_latest

    manifest = published(tiny_run, tmp_path, registry, "v2", 0.51)
    check_published(registry, "v2")
    assert manifest["pointer"]["previous_version"] == "v1"


def test_publish_to_s3_and_gate_against_it(tiny_run: TinyRun, tmp_path: Path, s3_env: str):
    registry = f"{s3_env}/models"
    published(tiny_run, tmp_path, registry, "v1", 0.5)
    check_published(registry, "v1")
    assert bundles.validate_bundle(storage.join(registry, "semcode", "v1"))["version"] == "v1"

    # A worse candidate is refused by the gate; the pipeline does not publish it and latest stays.
    worse = run_gate(
        tiny_run, tmp_path / "gate-v2", eval_with_mrr(tiny_run, tmp_path / "e2", 0.4), registry, version="v2"
    )
    assert worse["passed"] is False and worse["champion"]["path"] == f"{registry}/semcode/v1"
    check_published(registry, "v1")

    # A better one passes and is published: latest flips.
    published(tiny_run, tmp_path, registry, "v3", 0.6)
    check_published(registry, "v3")
    assert latest_pointer(registry)["previous_version"] == "v1"


def test_a_failed_publish_leaves_latest_where_it_was(tiny_run: TinyRun, tmp_path: Path):
    registry = str(tmp_path / "registry")
    published(tiny_run, tmp_path, registry, "v1", 0.5)
    decision = run_gate(
        tiny_run, tmp_path / "gate-v2", eval_with_mrr(tiny_run, tmp_path / "e2", 0.55), registry, version="v2"
    )
    bundle_v2 = Path(decision["bundle"])

    # 1. A bundle that breaks the contract is refused before any copy.
    broken = Path(shutil.copytree(bundle_v2, tmp_path / "broken"))
    (broken / "index.faiss").unlink()
    with pytest.raises(BundleError, match="index.faiss is missing"):
        run_publish(broken, registry, tmp_path / "p-broken")
    assert not (Path(registry) / "semcode" / "v2").exists()
    check_published(registry, "v1")

    # 2. A copy that fails midway (a folder stands where a file must go) leaves no marker and latest alone.
    blocker = Path(registry) / "semcode" / "v2" / "tokenizer.json"
    blocker.mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        run_publish(bundle_v2, registry, tmp_path / "p-midway")
    assert (Path(registry) / "semcode" / "v2" / "encoder.onnx").exists()  # it did get part of the way
    assert not (Path(registry) / "semcode" / "v2" / bundles.COMPLETE_MARKER).exists()
    check_published(registry, "v1")

    # 3. Once the cause is gone, publishing the same version again completes over the debris.
    blocker.rmdir()
    run_publish(bundle_v2, registry, tmp_path / "p-retry")
    check_published(registry, "v2")


def test_a_published_version_is_never_overwritten(tiny_run: TinyRun, tmp_path: Path, capsys):
    registry = str(tmp_path / "registry")
    manifest = published(tiny_run, tmp_path, registry, "v1", 0.5)
    marker_before = (Path(registry) / "semcode" / "v1" / bundles.COMPLETE_MARKER).read_text()
    bundle_v1 = tmp_path / "gate-v1" / "bundle"
    with pytest.raises(FileExistsError, match="semcode v1 is already published"):
        run_publish(bundle_v1, registry, tmp_path / "again")
    argv = ["--bundle", str(bundle_v1), "--registry", registry, "--out", str(tmp_path / "again-cli")]
    assert publish.main(argv) == 2
    assert "already published" in capsys.readouterr().err
    assert (Path(registry) / "semcode" / "v1" / bundles.COMPLETE_MARKER).read_text() == marker_before
    assert latest_pointer(registry) == manifest["pointer"]


def test_publish_needs_a_registry_and_a_matching_name(tiny_run: TinyRun, tmp_path: Path):
    with pytest.raises(cfg.ConfigError, match="registry is required"):
        cfg.from_dict(publish.PublishConfig, {})
    decision = run_gate(tiny_run, tmp_path / "gate", tiny_run.evaluate, version="v1", name="other-model")
    with pytest.raises(ValueError, match="named 'other-model' but publish --name is 'semcode'"):
        run_publish(Path(decision["bundle"]), str(tmp_path / "registry"), tmp_path / "p")


def test_a_latest_pointer_to_an_incomplete_version_is_an_error(tmp_path: Path):
    registry = str(tmp_path / "registry")
    write_latest(registry, "semcode", {"version": "v9", "path": "x"})
    with pytest.raises(ValueError, match="has no _COMPLETE.json: the registry is damaged"):
        resolve_latest(registry, "semcode")
