"""semcode search and the Searcher, on the tiny real bundle (tests/bundle_fixture.py): local, S3 and registry.

The tiny encoder is untrained, so natural-language queries rank arbitrarily; what it can do reliably is
find a function from its own code (the query encoder and the indexed code vectors embed the same text),
which is what the ranking tests ask for. They fail if the query path mixes up ids, rows, prefixes or
towers. The bundle holds a few Go, Rust and Java functions beside the Python ones (POLYGLOT_FUNCTIONS),
for the language filter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bundle_fixture import (
    POLYGLOT_FUNCTIONS,
    TinyRun,
    assemble_tiny_bundle,
    cached_tiny_run,
    own_document,
    restamp,
)

from semcode import bundle as bundles
from semcode import config as cfg
from semcode import storage
from semcode.contract import META_COLUMNS_ADDED
from semcode.index import save_index
from semcode.serve.search import format_hit, main, shown_lines
from semcode.serve.searcher import OLD_BUNDLE_DEFAULTS, Hit, Searcher, resolve_bundle
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
    """A copy of the bundle with bundle.json keys changed (a test that then edits a file calls restamp)."""
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
    restamp(separate)
    assert Searcher(separate, threads=1).encoder_file == "query_encoder.int8.onnx"


@pytest.mark.parametrize("precision", [None, "fp32"])
def test_a_functions_own_code_finds_it_first(tiny_bundle: Path, corpus: list[dict], precision: str | None):
    searcher = Searcher(tiny_bundle, precision, threads=1)
    results = searcher.search_batch([own_document(row) for row in corpus], 3)
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
        assert (h.language, h.repo, h.path, h.start_line, h.func_name, h.url, h.code) == (
            row["language"],
            row["repo"],
            row["path"],
            row["start_line"],
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
    # A key of the wrong type is named with what was expected, not an "invalid literal for int()".
    for value, message in (("128", "'max_length' is str '128', expected int"), (0, "expected a positive")):
        with pytest.raises(bundles.BundleError, match=message):
            Searcher(edited_copy(tiny_bundle, tmp_path / f"max_length_{value}", max_length=value))


@pytest.mark.parametrize("tampered", ["index_meta.parquet", "encoder.int8.onnx", "bm25/params.index.json"])
def test_a_local_bundle_whose_files_changed_is_refused_naming_them(
    tiny_bundle: Path, tmp_path: Path, capsys, tampered: str
):
    copy = edited_copy(tiny_bundle, tmp_path / "bundle")
    path = copy / tampered
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the same size, another sha256
    path.write_bytes(bytes(data))
    with pytest.raises(bundles.BundleError, match="failed its integrity check") as caught:
        Searcher(copy, threads=1)
    assert caught.value.problems == [
        f"{tampered}: size or sha256 does not match bundle.json (changed after assembly)"
    ]
    code, _, err = run_cli([str(copy), "read a file"], capsys)
    assert code == 2 and tampered in err and "integrity check" in err
    # A file the query path reads but bundle.json does not list cannot be verified either.
    bundle = json.loads((copy / "bundle.json").read_text())
    del bundle["files"][tampered]
    (copy / "bundle.json").write_text(json.dumps(bundle))
    with pytest.raises(bundles.BundleError, match=f"{tampered} is not listed in bundle.json files"):
        Searcher(copy, threads=1)


# ---------------------------------------------------------------------------------------------
# Languages


def ids_of(corpus: list[dict], *languages: str) -> list[int]:
    return [i for i, row in enumerate(corpus) if row["language"] in languages]


def test_language_filter_ranks_only_that_languages_functions(searcher: Searcher, corpus: list[dict]):
    go, rust_java = ids_of(corpus, "go"), ids_of(corpus, "rust", "java")
    assert len(go) == 3 and len(rust_java) == 3
    assert searcher.language_counts() == {"python": len(corpus) - 6, "go": 3, "rust": 2, "java": 1}
    for gold in go:
        hits = searcher.search(own_document(corpus[gold]), 10, "go")
        assert [h.id for h in hits][0] == gold and sorted(h.id for h in hits) == go  # k capped at 3
        assert {h.language for h in hits} == {"go"}
        assert hits[0].location() == f"{corpus[gold]['path']}:{corpus[gold]['start_line']}"  # relative
    # A list, a comma list, any case: the same filter.
    gold = rust_java[0]
    for language in (["rust", "java"], "Rust, JAVA", ["rust,java", "rust"]):
        hits = searcher.search_batch([own_document(corpus[gold]), own_document(corpus[go[0]])], 2, language)
        assert hits[0][0].id == gold, language
        assert all(h.language in ("rust", "java") for query_hits in hits for h in query_hits)
    # Another language's code finds the best of the chosen language, never itself.
    python_hits = searcher.search(corpus[go[1]]["code"], 5, "python")
    assert len(python_hits) == 5 and {h.language for h in python_hits} == {"python"}
    assert [h.id for h in python_hits] == [
        h.id for h in searcher.search(corpus[go[1]]["code"], 20) if h.language == "python"
    ][:5]
    # Every language named: the same as no filter.
    everything = ["python", "go", "rust", "java"]
    assert [h.id for h in searcher.search("x", 7, everything)] == [h.id for h in searcher.search("x", 7)]


def test_an_unknown_or_absent_language_is_a_clear_error(searcher: Searcher, tiny_bundle: Path, capsys):
    present = f"python ({searcher.size - 6}), go (3), rust (2), java (1)"
    with pytest.raises(
        ValueError,
        match=rf"unknown language 'cobol'; this bundle has: {re.escape(present)} \(semcode supports: python, go, java",
    ):
        searcher.search("x", 3, "cobol")
    with pytest.raises(ValueError, match="this bundle has no ruby functions; it has: python"):
        searcher.search("x", 3, ["go", "ruby"])
    with pytest.raises(ValueError, match="language is empty"):
        searcher.search("x", 3, " , ")
    with pytest.raises(ValueError, match="a string or a list of strings, got 3"):
        searcher.search("x", 3, ["go", 3])
    code, _, err = run_cli([str(tiny_bundle), "q", "--language", "go", "--language", "klingon"], capsys)
    assert code == 2 and "unknown language 'klingon'" in err and "go (3)" in err


@pytest.mark.parametrize("factory", ["HNSW8,Flat", "IVF4,Flat", "IVF4,PQ8x4,RFlat", "L2norm,Flat"])
def test_the_filter_works_in_every_index_kind(
    searcher: Searcher, tiny_bundle: Path, corpus: list[dict], tmp_path: Path, factory: str
):
    """HNSW (a rare language: the exact scan of its vectors; Python: the graph), IVF (all lists probed
    for a rare one), IVF-PQ re-ranked, and a pre-transformed index that takes no selector (over-fetch)."""
    vectors = faiss.downcast_index(searcher.index).reconstruct_n(0, searcher.size)
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    copy = edited_copy(tiny_bundle, tmp_path / "bundle")
    save_index(index, copy / "index.faiss")
    other = Searcher(restamp(copy), threads=1)
    queries = [corpus[i]["code"] for i in ids_of(corpus, "go", "rust", "java")]
    for language in ("go", ["rust", "java"]):
        wanted = set(ids_of(corpus, *([language] if isinstance(language, str) else language)))
        expected = [[h.id for h in hits] for hits in searcher.search_batch(queries, 3, language)]  # Flat
        found = [[h.id for h in hits] for hits in other.search_batch(queries, 3, language)]
        assert found == expected, (factory, language)
        assert all(set(ids) <= wanted for ids in found)
    python = other.search_batch(queries, 5, "python")
    assert all(len(hits) == 5 and {h.language for h in hits} == {"python"} for hits in python)


def test_an_on_disk_ivf_index_ships_in_the_bundle_and_is_searched_mapped(
    tiny_run: TinyRun, searcher: Searcher, corpus: list[dict], tmp_path: Path
):
    """build-index --ivf-on-disk writes index.faiss + index.ivfdata: the bundle carries both (checksummed),
    the Searcher maps the inverted lists from wherever the bundle lies, and (all lists probed) finds what
    the Flat index finds."""
    from semcode.index import build_ivf_on_disk, set_search_params

    index_dir = Path(shutil.copytree(tiny_run.index, tmp_path / "index"))
    vectors = faiss.downcast_index(searcher.index).reconstruct_n(0, searcher.size)
    index = build_ivf_on_disk(
        [vectors[:50], vectors[50:]], "IVF4,Flat", index_dir / "index.faiss", use_gpu="no"
    )
    set_search_params(index, nprobe=4)
    save_index(index, index_dir / "index.faiss")
    bundle = bundles.assemble_bundle(
        tmp_path / "bundle",
        name="semcode",
        version="v1",
        encoder_dir=tiny_run.encoder,
        onnx_dir=tiny_run.onnx,
        index_dir=index_dir,
        metrics=tiny_run.eval_metrics(),
    )
    assert bundle["index"]["ivfdata"] == "index.ivfdata" and "index.ivfdata" in bundle["files"]
    moved = Path(shutil.move(tmp_path / "bundle", tmp_path / "elsewhere"))
    shutil.rmtree(index_dir)  # the bundle's index refers to its own copy of the lists, not to these
    bundles.validate_bundle(moved)
    mapped = Searcher(moved, threads=1)
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(mapped.index).invlists)
    assert isinstance(invlists, faiss.OnDiskInvertedLists)
    queries = [row["code"] for row in corpus[:20]]
    expected = [[hit.id for hit in hits] for hits in searcher.search_batch(queries, 3, mode="dense")]
    assert [[hit.id for hit in hits] for hits in mapped.search_batch(queries, 3, mode="dense")] == expected
    truncated = Path(shutil.copytree(moved, tmp_path / "truncated"))  # not the mapped copy: SIGBUS
    (truncated / "index.ivfdata").write_bytes(b"")  # a bundle whose lists were truncated is refused
    with pytest.raises(bundles.BundleError, match="index.ivfdata"):
        bundles.validate_bundle(truncated)


def test_an_old_bundle_without_language_repo_or_start_line_still_searches(
    tiny_bundle: Path, corpus: list[dict], tmp_path: Path, capsys
):
    assert set(OLD_BUNDLE_DEFAULTS) == set(META_COLUMNS_ADDED)
    # An old bundle.json: no index coverage, no lexical index.
    index = json.loads((tiny_bundle / "bundle.json").read_text())["index"]
    index = {key: value for key, value in index.items() if key != "coverage"}
    old = edited_copy(tiny_bundle, tmp_path / "old", index=index, lexical=None)
    python_rows = len(corpus) - len(POLYGLOT_FUNCTIONS)  # an old bundle indexed Python only
    # The bundle's index is Flat: keep its Python rows (the first ones) and drop the new columns.
    vectors = faiss.read_index(str(old / "index.faiss")).reconstruct_n(0, python_rows)
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    save_index(flat, old / "index.faiss")
    meta = (
        pq.read_table(old / "index_meta.parquet").slice(0, python_rows).select(["code", "path", "func_name"])
    )
    urls = [f"python://stdlib/{path}" for path in meta["path"].to_pylist()]  # what old bundles had
    pq.write_table(meta.append_column("url", pa.array(urls)), old / "index_meta.parquet")
    restamp(old)

    searcher = Searcher(old, threads=1)
    assert searcher.language_counts() == {"python": python_rows}
    gold = corpus[7]
    hit = searcher.search(gold["code"], 3)[0]
    assert (hit.id, hit.language, hit.repo, hit.start_line, hit.func_name) == (
        7,
        "python",
        "",
        None,
        gold["func_name"],
    )
    assert hit.location() == gold["path"]  # no line known
    assert (hit.signature, hit.doc) == ("", "")
    assert [h.id for h in searcher.search(gold["code"], 3, "python")][0] == 7
    with pytest.raises(ValueError, match=r"no go functions; it has: python \(\d+\)"):
        searcher.search("x", 3, "go")
    code, out, err = run_cli([str(old), gold["code"], "-k", "1", "--json"], capsys)
    assert code == 0, err
    answer = json.loads(out)
    result = answer["results"][0]
    assert (result["language"], result["start_line"], result["repo"]) == ("python", None, "")
    assert (result["signature"], result["doc"], answer["coverage"]) == ("", "", None)
    code, out, err = run_cli([str(old), gold["code"], "-k", "1"], capsys)
    assert code == 0 and out.splitlines()[0] == (
        f"searching {python_rows:,} functions (the bundle does not say of how many)"
    )


def test_cli_language_option_and_output(tiny_bundle: Path, corpus: list[dict], capsys):
    go = ids_of(corpus, "go")
    gold = corpus[go[1]]
    code, out, _ = run_cli(
        [str(tiny_bundle), own_document(gold), "--language", "go,rust", "-k", "4", "--max-lines", "1"], capsys
    )
    assert code == 0
    lines = out.splitlines()
    local = gold["path"]
    assert re.fullmatch(rf" 1\. {re.escape(local)}:{gold['start_line']}  go  -?\d\.\d{{4}}", lines[2])
    assert lines[3:5] == [f"    {gold['signature']}", f"    {gold['doc']}"]
    assert gold["signature"] == "func ReadLines(path string) ([]string, error)"
    headers = [line for line in out.splitlines() if line[:4].strip().endswith(".")]
    assert len(headers) == 4 and all(("  go  " in h) or ("  rust  " in h) for h in headers)
    assert "4 results from semcode v1" in out and ", 5 in go,rust," in out

    code, out, _ = run_cli([str(tiny_bundle), own_document(gold), "--language", "go", "--json"], capsys)
    answer = json.loads(out)
    assert answer["language"] == ["go"] and len(answer["results"]) == 3
    top = answer["results"][0]
    assert (top["language"], top["path"], top["start_line"], top["url"]) == (
        "go",
        gold["path"],
        gold["start_line"],
        gold["url"],
    )
    assert top["location"] == f"{local}:{gold['start_line']}"


# ---------------------------------------------------------------------------------------------
# semcode search


def test_cli_prints_ranked_hits_with_code(tiny_bundle: Path, corpus: list[dict], capsys):
    gold = next(row for row in corpus[12:] if row["doc"])  # a function with a docstring
    code, out, _ = run_cli([str(tiny_bundle), own_document(gold), "-k", "3", "--max-lines", "2"], capsys)
    assert code == 0
    lines = out.splitlines()
    coverage = json.loads((tiny_bundle / "bundle.json").read_text())["index"]["coverage"]
    assert lines[0] == f"searching {len(corpus):,} of {coverage['corpus_rows']:,} functions (all)"
    assert gold["language"] == "python" and gold["start_line"] > 0
    # The location: the path relative to its source root and the first line, never this machine's path.
    local = gold["path"]
    assert gold["url"].startswith(("python://stdlib/", "python://site-packages/")), gold["url"]
    licence = f"  {gold['license']}" if gold["license"] else ""  # the SPDX licence after the score
    assert re.fullmatch(
        rf" 1\. {re.escape(local)}:{gold['start_line']}  python  \d\.\d{{4}}{licence}", lines[2]
    )
    assert gold["signature"].startswith("def ") and gold["doc"]  # a function with a docstring
    assert lines[3:5] == [f"    {gold['signature']}", f"    {gold['doc']}"]
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
    assert set(results[0]) >= {
        "rank",
        "score",
        "language",
        "repo",
        "path",
        "start_line",
        "location",
        "func_name",
        "url",
        "code",
        "signature",
        "doc",
    }
    gold = corpus[3]
    assert (results[0]["signature"], results[0]["doc"]) == (gold["signature"], gold["doc"])
    assert results[0]["signature"].startswith("def ")
    assert answer["coverage"]["sampled_by"] == "all" and answer["coverage"]["indexed"] == len(corpus)
    assert results[0]["func_name"] == gold["func_name"]
    assert (results[0]["language"], results[0]["path"], results[0]["start_line"], results[0]["url"]) == (
        "python",
        gold["path"],
        gold["start_line"],
        gold["url"],
    )
    local = gold["path"]
    assert results[0]["location"] == f"{local}:{gold['start_line']}"
    assert answer["language"] is None
    assert answer["bundle"]["languages"] == {
        "python": len(corpus) - len(POLYGLOT_FUNCTIONS),
        "go": 3,
        "rust": 2,
        "java": 1,
    }
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_search_never_imports_torch(tiny_bundle: Path):
    script = (
        "import sys, io, contextlib\n"
        "from semcode.cli import main as semcode_main\n"
        "from semcode.serve.search import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    assert main([{str(tiny_bundle)!r}, 'read a file line by line', '--json', '--language', 'python']) == 0\n"
        "import json; assert len(json.loads(out.getvalue())['results']) == 5\n"
        f"heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout, done.stdout


@pytest.mark.parametrize("output", [[], ["--json"]])
def test_a_reader_that_goes_away_ends_the_search_quietly(tiny_bundle: Path, output: list[str]):
    """`semcode search ... | head`: the pipe closes before semcode writes; no traceback, 128 + SIGPIPE."""
    argv = [
        sys.executable,
        "-m",
        "semcode.cli",
        "search",
        str(tiny_bundle),
        "read a file",
        "-k",
        "5",
        *output,
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone long before the bundle has loaded
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGPIPE, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


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
    # Only what a query needs came down: no encoder/ weights, report or model card (bm25/: the lexical index).
    assert sorted(p.name for p in local.iterdir()) == sorted(
        ["bundle.json", "tokenizer.json", "encoder.int8.onnx", "index.faiss", "index_meta.parquet", "bm25"]
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


def test_an_s3_bundle_that_names_a_file_outside_the_cache_writes_nothing(
    tiny_bundle: Path, s3_env: str, tmp_path: Path, capsys
):
    """A bundle.json on S3 that lists its tokenizer as an absolute path (with the attacker's sha256) is
    refused before any download: nothing is written there, nor in the cache."""
    uri = f"{s3_env}/planted/bundle"
    storage.copy_tree(tiny_bundle, uri)
    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    target = tmp_path / "outside" / "planted.txt"
    meta["index"]["meta"] = str(target)
    meta["files"][str(target)] = meta["files"]["index_meta.parquet"]
    storage.write_text(f"{uri}/bundle.json", json.dumps(meta))
    code, _, err = run_cli([uri, "q", "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 2 and "bundle.json index.meta" in err and "not a relative name" in err
    assert not target.exists() and not (tmp_path / "cache").exists()


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


def test_locations_are_relative_and_links_follow_the_template():
    commit = "3f2c1e0b9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
    hit = Hit(
        1,
        0.9,
        0,
        "go",
        "api",
        "pkg/server.go",
        12,
        "Server.Serve",
        f"dir://api@{commit}/pkg/server.go#L12-L30",
        "",
    )
    assert hit.location() == "pkg/server.go:12" and hit.commit() == commit
    template = "https://git.example.com/org/{repo}/blob/{commit}/{path}#L{line}"
    assert hit.link(template) == f"https://git.example.com/org/api/blob/{commit}/pkg/server.go#L12"
    stdlib = Hit(
        1, 0.9, 0, "python", "json", "json/decoder.py", None, "f", "python://stdlib/json/decoder.py", ""
    )
    assert stdlib.location() == "json/decoder.py" and stdlib.commit() == ""
    assert stdlib.link("{path}@{commit}:{line}") == "json/decoder.py@HEAD:1"
    with pytest.raises(ValueError, match="branch"):
        hit.link("https://host/{branch}/{path}")
