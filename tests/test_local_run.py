"""`semcode run --preset tiny` end to end on the CPU, and its up-front config checks."""

import json

import pytest

from semcode import cli
from semcode.config import ConfigError
from semcode.local_run import resolve_configs


def test_tiny_preset_runs_end_to_end(tmp_path, capsys):
    code = cli.main(["run", "--preset", "tiny", "--runs-dir", str(tmp_path), "--run-id", "ci"])
    assert code == 0
    run_dir = tmp_path / "ci"
    for path in ("ingest/manifest.json", "tokenizer/tokenizer.json", "train_encoder/encoder/modules.json",
                 "evaluate/metrics.json", "summary.json"):
        assert (run_dir / path).exists(), path
    metrics = json.loads((run_dir / "evaluate/metrics.json").read_text())
    assert 0.0 < metrics["primary"]["value"] <= 1.0
    out = capsys.readouterr().out
    assert "bm25" in out and str(run_dir) in out
    # a second run into the same directory is refused, nothing overwritten
    assert cli.main(["run", "--preset", "tiny", "--runs-dir", str(tmp_path), "--run-id", "ci"]) == 2


def test_preset_typo_fails_before_any_stage():
    with pytest.raises(ConfigError, match="train_encoder.*batchsize|batchsize"):
        resolve_configs({"train_encoder": {"batchsize": 8}}, None, "mine")
    with pytest.raises(ConfigError, match="unknown section"):
        resolve_configs({"trainer": {}}, None, "mine")


def test_source_flag_replaces_preset_sources():
    configs = resolve_configs({"ingest": {"sources": ["python:stdlib"]}}, ["dir:/tmp"], "mine")
    assert configs["ingest"].sources == ("dir:/tmp",)
