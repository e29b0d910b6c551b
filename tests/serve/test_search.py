"""semcode search and the Searcher, on the tiny real bundle (tests/bundle_fixture.py): local, S3 and registry.

The tiny encoder is untrained, so natural-language queries rank arbitrarily; what it can do reliably is
find a function from its own code (the query encoder and the indexed code vectors embed the same text),
which is what the ranking tests ask for. They fail if the query path mixes up ids, rows, prefixes or
towers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from bundle_fixture import TinyRun, assemble_tiny_bundle, cached_tiny_run

from semcode import bundle as bundles
from semcode import config as cfg
from semcode import storage
from semcode.serve.search import format_hit, main, shown_lines
from semcode.serve.searcher import Searcher, resolve_bundle
from semcode.stages import publish

HEAVY_MODULES = ("torch", "transformers", "sentence_transformers", "deepspeed")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_tiny_bundle(tiny_run, tmp_path_factory.mktemp("search_bundle") / "bundle")


@pytest.fixture(scope="session")
def searcher(tiny_bundle: Path) -> Searcher:
    return Searcher(tiny_bundle, threads=1)


@pytest.fixture(scope="session")
def corpus(tiny_bundle: Path) -> list[dict]:
    """index_meta.parquet rows: row i is FAISS id i."""
    return pq.read_table(tiny_bundle / "index_meta.parquet").to_pylist()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# The Searcher


def test_searcher_uses_the_bundles_default_query_encoder(searcher: Searcher, tiny_bundle: Path):
    bundle = json.loads((tiny_bundle / "bundle.json").read_text())
    assert searcher.encoder_file == bundle["default_files"]["query"] == "encoder.int8.onnx"
    assert searcher.encoder.max_length == bundle["max_length"]
    assert searcher.encoder.prefix == bundle["query_prefix"]
    assert searcher.size == bundle["index"]["ntotal"] > 100


def edited_copy(tiny_bundle: Path, out: Path, **changes) -> Path:
    """A copy of the bundle with bundle.json keys changed (its checksums no longer match: the query path
    does not check them; validate_bundle does)."""
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns("encoder", "report.html"))
    bundle = json.loads((out / "bundle.json").read_text())
    bundle.update(changes)
    (out / "bundle.json").write_text(json.dumps(bundle))
    return out


def test_searcher_follows_bundle_json(searcher: Searcher, tiny_bundle: Path, tmp_path: Path):
    # The query prefix is prepended to every query.
    prefixed = Searcher(edited_copy(tiny_bundle, tmp_path / "prefixed", query_prefix="query: "), threads=1)
    np.testing.assert_allclose(
        prefixed.encode(["read a file"]), searcher.encode(["query: read a file"]), rtol=0, atol=1e-6
    )
    # fp32 when export_onnx found int8 too lossy.
    fp32_files = bundles.encoder_files("shared")["fp32"]
    fp32 = edited_copy(tiny_bundle, tmp_path / "fp32", default_precision="fp32", default_files=fp32_files)
    assert Searcher(fp32, threads=1).encoder_file == "encoder.onnx"
    # Separate towers: the query tower encodes queries.
    files = bundles.encoder_files("separate")
    separate = edited_copy(
        tiny_bundle, tmp_path / "separate", towers="separate", encoders=files, default_files=files["int8"]
    )
    (separate / "encoder.int8.onnx").rename(separate / "query_encoder.int8.onnx")
    assert Searcher(separate, threads=1).encoder_file == "query_encoder.int8.onnx"


@pytest.mark.parametrize("precision", [None, "fp32"])
def test_a_functions_own_code_finds_it_first(tiny_bundle: Path, corpus: list[dict], precision: str | None):
    searcher = Searcher(tiny_bundle, precision, threads=1)
    results = searcher.search_batch([row["code"] for row in corpus], 3)
    top1 = [hits[0].id for hits in results]
    found_first = sum(found == gold for gold, found in enumerate(top1))
    assert found_first >= 0.95 * len(corpus), f"only {found_first}/{len(corpus)} functions found first"
    gold = 7
    hit = results[gold][0]
    assert hit.id == gold and hit.score > 0.95
    assert (hit.func_name, hit.path, hit.code) == (
        corpus[gold]["func_name"],
        corpus[gold]["path"],
        corpus[gold]["code"],
    )


def test_results_are_ranked_by_descending_score(searcher: Searcher, corpus: list[dict]):
    hits = searcher.search("read a file line by line", 7)
    assert [h.rank for h in hits] == list(range(1, 8))
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h.id for h in hits}) == 7
    for h in hits:
        row = corpus[h.id]
        assert (h.repo, h.path, h.func_name, h.url, h.code) == (
            row["repo"],
            row["path"],
            row["func_name"],
            row["url"],
            row["code"],
        )
    # k beyond the corpus: every function once, no padding ids.
    everything = searcher.search("x", searcher.size + 50)
    assert sorted(h.id for h in everything) == list(range(searcher.size))


def test_searcher_rejects_bad_k_and_broken_bundles(searcher: Searcher, tiny_bundle: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="k must be >= 1"):
        searcher.search("x", 0)
    with pytest.raises(FileNotFoundError, match="has no bundle.json"):
        resolve_bundle(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text((tiny_bundle / "bundle.json").read_text())
    with pytest.raises(FileNotFoundError, match="lacks tokenizer.json, encoder.int8.onnx"):
        Searcher(broken)


# ---------------------------------------------------------------------------------------------
# semcode search


def test_cli_prints_ranked_hits_with_code(tiny_bundle: Path, corpus: list[dict], capsys):
    gold = corpus[12]
    code, out, _ = run_cli([str(tiny_bundle), gold["code"], "-k", "3", "--max-lines", "2"], capsys)
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith(" 1. ") and first.endswith(f"{gold['repo']}/{gold['path']}:{gold['func_name']}")
    assert gold["url"] in out
    assert gold["code"].splitlines()[0] in out
    assert " 3. " in out and " 4. " not in out
    assert "\x1b[" not in out  # stdout is not a terminal: plain text
    assert out.rstrip().splitlines()[-1].startswith("3 results from semcode v1")


def test_max_lines_and_highlighting(searcher: Searcher):
    hit = next(h for h in searcher.search("x", searcher.size) if len(h.code.splitlines()) >= 5)
    assert shown_lines("a\nb\nc\n", 2) == ("a\nb", 1)
    assert shown_lines("a\nb\nc\n", 0) == ("a\nb\nc", 0)
    plain = format_hit(hit, 2, color=False)
    hidden = len(hit.code.rstrip("\n").splitlines()) - 2
    assert plain.endswith(f"... ({hidden} more lines)")
    assert "\x1b[" not in plain
    colored = format_hit(hit, 2, color=True)
    assert "\x1b[" in colored  # pygments' terminal formatter
    assert hit.code.splitlines()[0].split("(")[0].split()[-1] in colored


def test_cli_json_output(tiny_bundle: Path, corpus: list[dict], capsys):
    code, out, _ = run_cli([str(tiny_bundle), corpus[3]["code"], "-k", "4", "--json"], capsys)
    assert code == 0
    answer = json.loads(out)
    assert answer["k"] == 4 and answer["bundle"]["name"] == "semcode" and answer["bundle"]["version"] == "v1"
    assert answer["took_ms"] > 0
    results = answer["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert set(results[0]) >= {"rank", "score", "repo", "path", "func_name", "url", "code"}
    assert results[0]["func_name"] == corpus[3]["func_name"]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_search_never_imports_torch(tiny_bundle: Path):
    script = (
        "import sys, io, contextlib\n"
        "from semcode.cli import main as semcode_main\n"
        "from semcode.serve.search import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    assert main([{str(tiny_bundle)!r}, 'read a file line by line', '--json']) == 0\n"
        "import json; assert len(json.loads(out.getvalue())['results']) == 5\n"
        f"heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout, done.stdout


def test_cli_reports_bad_input(tiny_bundle: Path, tmp_path: Path, capsys):
    code, _, err = run_cli([str(tmp_path / "nope"), "query"], capsys)
    assert code == 2 and "bundle directory not found" in err
    code, _, err = run_cli([str(tmp_path / "registry" / "semcode" / "latest"), "query"], capsys)
    assert code == 2 and "nothing named 'semcode' is published" in err
    for argv, message in (
        ([str(tiny_bundle), "  "], "QUERY is empty"),
        ([str(tiny_bundle), "q", "-k", "0"], "-k"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# S3 and the registry


def test_search_an_s3_bundle_downloads_it_once(
    tiny_bundle: Path, corpus: list[dict], s3_env: str, tmp_path, capsys
):
    uri = f"{s3_env}/runs/r1/bundle"
    storage.copy_tree(tiny_bundle, uri)
    cache = tmp_path / "cache"
    code, out, err = run_cli([uri, corpus[5]["code"], "--json", "--cache-dir", str(cache)], capsys)
    assert code == 0, err
    answer = json.loads(out)
    assert answer["results"][0]["func_name"] == corpus[5]["func_name"]
    local = cache / "semcode" / "v1"
    assert Path(answer["bundle"]["path"]) == local
    # Only what a query needs came down: no encoder/ weights, report or model card.
    assert sorted(p.name for p in local.iterdir()) == sorted(
        ["bundle.json", "tokenizer.json", "encoder.int8.onnx", "index.faiss", "index_meta.parquet"]
    )
    assert "downloaded" in err
    before = {p.name: p.stat().st_mtime_ns for p in local.iterdir()}

    code, _, err = run_cli([uri, "anything", "--cache-dir", str(cache), "--precision", "fp32"], capsys)
    assert code == 0, err
    assert "downloaded encoder.onnx" in err  # the fp32 tower was not in the cache yet; the rest was
    for name, mtime in before.items():
        if name != "bundle.json":
            assert (local / name).stat().st_mtime_ns == mtime, f"{name} was downloaded again"

    # A file on S3 that does not match bundle.json's checksum is refused.
    storage.write_text(f"{uri}/tokenizer.json", "{}")
    code, _, err = run_cli([uri, "q", "--cache-dir", str(tmp_path / "other")], capsys)
    assert code == 2 and "does not match bundle.json's sha256" in err


def test_registry_latest_resolves_to_the_newest_version(
    tiny_run: TinyRun, tiny_bundle: Path, corpus: list[dict], s3_env: str, tmp_path: Path, capsys
):
    v2 = assemble_tiny_bundle(tiny_run, tmp_path / "v2", version="v2")
    for registry in (str(tmp_path / "registry"), f"{s3_env}/registry"):
        config = cfg.from_dict(publish.PublishConfig, {"registry": registry})
        publish.run(config, tiny_bundle, tmp_path / "publish-v1")
        latest = storage.join(registry, "semcode", "latest")
        assert resolve_bundle(latest, tmp_path / "cache").name == "v1"
        publish.run(config, v2, tmp_path / "publish-v2")
        code, out, err = run_cli(
            [latest, corpus[9]["code"], "--json", "--cache-dir", str(tmp_path / "cache")], capsys
        )
        assert code == 0, err
        answer = json.loads(out)
        assert answer["bundle"]["version"] == "v2", registry
        assert answer["results"][0]["func_name"] == corpus[9]["func_name"]
        if not storage.is_s3(registry):  # a local registry is searched in place
            assert answer["bundle"]["path"] == os.path.join(registry, "semcode", "v2")
