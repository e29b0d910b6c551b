"""The gate compares like with like (issue 31): a candidate is compared with the champion only on suites both
were evaluated on with the same queries (evaluate's queries_sha256) and at least min_comparable_queries of
them; otherwise "no comparable champion", and BM25 decides.

The champion and candidates are the tiny real run (tests/bundle_fixture.py: its test split has 7 queries,
HumanEval 30), with evaluate's metrics.json edited the way another run's would differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_fixture import TinyRun, cached_tiny_run

from semcode import config as cfg
from semcode.stages import evaluate, gate, publish
from semcode.suites import pairs_suite

METRIC = "test/full/model/mrr"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


def metrics_file(folder: Path, metrics: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def run_gate(run: TinyRun, out: Path, evaluation: Path, registry: str, **values) -> dict:
    config = cfg.from_dict(gate.GateConfig, {"registry": registry, **values})
    return gate.run(config, run.encoder, run.onnx, run.index, evaluation, out)


def champion(run: TinyRun, tmp: Path, metrics: dict | None = None) -> str:
    """A registry whose latest is v1, gated and published from ``metrics`` (default: the tiny run's)."""
    registry = str(tmp / "registry")
    evaluation = metrics_file(tmp / "eval-v1", metrics or run.eval_metrics())
    decision = run_gate(run, tmp / "gate-v1", evaluation, registry, version="v1")
    assert decision["passed"], decision["reasons"]
    publish.run(publish.PublishConfig(registry=registry), decision["bundle"], tmp / "publish-v1")
    return registry


def other_data(run: TinyRun, mrr: float, bm25: float) -> dict:
    """The candidate of the issue: evaluated on another, tiny test split (2 queries), no HumanEval."""
    metrics = run.eval_metrics()
    test = metrics["suites"]["test"]
    test["n_queries"], test["queries_sha256"] = 2, "0" * 64
    test["full"]["model"]["mrr"], test["full"]["bm25"]["mrr"] = mrr, bm25
    metrics["suites"] = {"test": test}
    metrics["primary"] = {"name": METRIC, "value": mrr}
    return metrics


def test_evaluate_records_a_hash_of_each_suites_queries(tiny_run: TinyRun):
    suites = tiny_run.eval_metrics()["suites"]
    assert set(suites) == {"test", "humaneval"}
    assert all(len(suite["queries_sha256"]) == 64 for suite in suites.values())
    a = pairs_suite("s", ["read a file", "parse a date"], ["def r(): ...", "def p(): ..."], source="x")
    b = pairs_suite("s", ["read a file", "parse a date!"], ["def r(): ...", "def p(): ..."], source="x")
    assert evaluate.query_set_sha256(a) == evaluate.query_set_sha256(a) != evaluate.query_set_sha256(b)


def test_a_candidate_evaluated_on_other_queries_is_not_compared_and_bm25_decides(
    tiny_run: TinyRun, tmp_path: Path
):
    registry = champion(tiny_run, tmp_path)
    beaten = metrics_file(tmp_path / "beaten", other_data(tiny_run, mrr=0.75, bm25=0.9))
    decision = run_gate(tiny_run, tmp_path / "g1", beaten, registry, version="v2")
    assert decision["passed"] is False
    assert decision["champion"]["version"] == "v1" and decision["champion"]["comparable"] is False
    assert decision["reasons"][0].startswith(f"{METRIC} 0.7500: no comparable champion (v1: other queries")
    assert "the candidate's 2 (sha256 000000000000)" in decision["reasons"][0]
    assert decision["reasons"][-1] == (
        "test/full/model/mrr 0.7500 vs test/full/bm25/mrr 0.9000: BM25 beats the candidate, refused "
        "(allow_below_bm25 would pass it)"
    )

    allowed = run_gate(tiny_run, tmp_path / "g2", beaten, registry, version="v2", allow_below_bm25=True)
    assert allowed["passed"] is True and "allow_below_bm25 is on" in allowed["reasons"][-1]

    above = metrics_file(tmp_path / "above", other_data(tiny_run, mrr=0.75, bm25=0.5))
    passed = run_gate(tiny_run, tmp_path / "g3", above, registry, version="v3")
    assert passed["passed"] is True and passed["reasons"][-1].endswith("not below BM25")


def test_too_few_queries_are_not_compared_but_a_comparable_suite_is(tiny_run: TinyRun, tmp_path: Path):
    registry = champion(tiny_run, tmp_path)
    metrics = tiny_run.eval_metrics()
    metrics["suites"]["humaneval"]["full"]["model"]["mrr"] -= 0.05  # worse where the two can be compared
    worse = metrics_file(tmp_path / "worse", metrics)
    decision = run_gate(tiny_run, tmp_path / "g", worse, registry, version="v2")  # default minimum: 30
    assert decision["passed"] is False and decision["champion"]["comparable"] is True
    assert decision["reasons"][0] == (
        f"{METRIC} {metrics['primary']['value']:.4f}: not comparable with champion v1 (7 queries, fewer than "
        "min_comparable_queries 30)"
    )
    assert any(
        reason.startswith("humaneval/full/model/mrr") and "worse than the tolerance" in reason
        for reason in decision["reasons"]
    )
    suites = {entry["suite"]: entry for entry in decision["champion"]["suites"]}
    assert suites["test"]["comparable"] is False and suites["humaneval"]["comparable"] is True


def test_a_champion_evaluated_before_the_hash_is_not_comparable(tiny_run: TinyRun, tmp_path: Path):
    old = tiny_run.eval_metrics()
    for suite in old["suites"].values():
        del suite["queries_sha256"]
    registry = champion(tiny_run, tmp_path, old)
    decision = run_gate(tiny_run, tmp_path / "g", tiny_run.evaluate, registry, version="v2")
    assert decision["champion"]["comparable"] is False
    assert (
        "v1's metrics record no hash of its queries (evaluated before semcode did)" in decision["reasons"][0]
    )
    assert "no comparable champion" in decision["reasons"][0]
    assert decision["passed"] is False  # the untrained tiny encoder is below BM25: refused by default


def test_a_gate_run_again_into_its_out_replaces_it_whole_and_names_the_bundle_there(
    tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Issue 31: the gate writes into a partial folder beside --out, swapped in whole; decision.json's bundle
    is the path under --out (not the partial's), and a failed re-run leaves the earlier gate output whole."""
    out = tmp_path / "gate"
    evaluation = metrics_file(tmp_path / "eval", tiny_run.eval_metrics())
    first = run_gate(tiny_run, out, evaluation, "", version="v1")
    assert first["bundle"] == str(out / gate.BUNDLE_SUBDIR)
    assert json.loads((out / "bundle" / "bundle.json").read_text())["version"] == "v1"
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    assemble = gate.bundles.assemble_bundle

    def dies_midway(bundle_dir: Path, **kwargs) -> None:  # the bundle written, decision.json not yet
        assemble(bundle_dir, **kwargs)
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(gate.bundles, "assemble_bundle", dies_midway)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        run_gate(tiny_run, out, evaluation, "", version="v2")
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # v1, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "gate"]  # the partial is gone

    second = run_gate(tiny_run, out, evaluation, "", version="v2")
    decision = json.loads((out / gate.DECISION_FILE).read_text())
    assert decision["bundle"] == second["bundle"] == str(out / gate.BUNDLE_SUBDIR)
    assert json.loads((Path(decision["bundle"]) / "bundle.json").read_text())["version"] == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "gate"]


def test_a_primary_suite_too_few_to_evaluate_is_judged_on_the_suites_there_are(
    tiny_run: TinyRun, tmp_path: Path
):
    """A small repository's test split gave evaluate too few queries: the gate judges on HumanEval, says so."""
    metrics = tiny_run.eval_metrics()
    del metrics["suites"]["test"]
    metrics["skipped"] = {"test": "too few queries to evaluate: 0 queries in pairs/test, min_queries 1"}
    metrics["primary"] = evaluate.primary_metric(metrics["suites"])  # as evaluate writes it
    evaluation = metrics_file(tmp_path / "eval", metrics)
    first = run_gate(tiny_run, tmp_path / "g1", evaluation, "")
    assert first["passed"] is True and first["primary_metric"] == "humaneval/full/model/mrr"
    assert first["reasons"][0] == (
        f"{METRIC}: not evaluated (too few queries to evaluate: 0 queries in pairs/test, min_queries 1); "
        "judged on humaneval/full/model/mrr instead"
    )
    assert (
        first["reasons"][1].startswith("humaneval/full/model/mrr ") and "no champion" in first["reasons"][1]
    )

    registry = champion(tiny_run, tmp_path)  # evaluated on test and HumanEval: compared on HumanEval alone
    decision = run_gate(tiny_run, tmp_path / "g2", evaluation, registry, version="v2")
    assert decision["passed"] is True and decision["champion"]["comparable"] is True
    assert [entry["suite"] for entry in decision["champion"]["suites"]] == ["humaneval"]

    metrics["skipped"] = {}  # not skipped but missing: still bad input, named
    with pytest.raises(ValueError, match="have no test/full/model/mrr"):
        run_gate(tiny_run, tmp_path / "g3", metrics_file(tmp_path / "eval2", metrics), "")


def test_the_gate_component_gives_kfp_metrics_and_the_model_card_as_markdown(
    tiny_run: TinyRun, tmp_path: Path
):
    """The KFP component, called as the launcher calls it (artifacts with local URIs): its Metrics hold the
    decision's comparisons with the champion, its Markdown artifact is the bundle's model card."""
    from kfp import dsl

    from semcode.components.gate import gate as gate_component

    registry = champion(tiny_run, tmp_path)
    metrics = tiny_run.eval_metrics()
    metrics["suites"]["humaneval"]["full"]["model"]["mrr"] -= 0.05
    evaluation = metrics_file(tmp_path / "worse", metrics)
    encoder = tmp_path / "train-encoder"
    metrics_file(encoder, {"steps": 3})
    (encoder / "encoder").symlink_to(tiny_run.encoder)
    tokenizer = metrics_file(tmp_path / "tokenizer", {"vocab_size": 512})

    def artifact(kind, path):
        return kind(uri=str(path))

    outputs = {
        "bundle": artifact(dsl.Model, tmp_path / "out" / "bundle"),
        "report": artifact(dsl.HTML, tmp_path / "out" / "report.html"),
        "decision": artifact(dsl.Artifact, tmp_path / "out" / "decision"),
        "metrics": artifact(dsl.Metrics, tmp_path / "out" / "metrics.json"),
        "model_card": artifact(dsl.Markdown, tmp_path / "out" / "model_card.md"),
    }
    (tmp_path / "out").mkdir()
    passed = gate_component.python_func(
        encoder=artifact(dsl.Model, encoder),
        onnx=artifact(dsl.Model, tiny_run.onnx),
        index=artifact(dsl.Artifact, tiny_run.index),
        evaluation=artifact(dsl.Artifact, evaluation),
        pairs=artifact(dsl.Dataset, tiny_run.ingest),
        tokenizer=artifact(dsl.Model, tokenizer),
        name="semcode",
        registry=registry,
        primary_metric=METRIC,
        tolerance=0.01,
        require_int8_parity=True,
        version="v2",
        guarded_suites=[],
        zero_shot_regression="refuse",
        **outputs,
    )
    assert passed is False
    scalars = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert scalars == outputs["metrics"].metadata and scalars["passed"] == 0.0
    assert scalars["humaneval.delta"] == pytest.approx(-0.05, abs=1e-6)
    assert scalars["humaneval.candidate"] == pytest.approx(scalars["humaneval.champion"] - 0.05, abs=1e-6)
    assert scalars["candidate"] == metrics["primary"]["value"] and "champion" in scalars
    assert "int8_mrr_loss" in scalars
    card = (tmp_path / "out" / "model_card.md").read_text()
    assert card == (tmp_path / "out" / "bundle" / "model_card.md").read_text()
    assert card.startswith("# semcode v2") and "The promotion gate **REFUSED** this bundle" in card
