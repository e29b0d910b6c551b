"""The build_index stage end to end on a tiny real corpus: all-MiniLM-L6-v2, and a hashing embedder for the rest.

The hashing embedder (character trigrams hashed into 64 buckets, L2-normalised) is a real, deterministic
embedding function: it lets most tests cover the stage without loading a model.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semcode.contract import META_COLUMNS
from semcode.corpus import DOCUMENT_VIEWS, search_documents
from semcode.data.pairs import write_shards
from semcode.index import omp_threads
from semcode.stages import build_index as stage

HASH_DIM = 64

# (query, code, func_name); the query of some rows is empty, as in a real corpus.
FUNCTIONS = [
    (
        "Read a JSON file and return the parsed object.",
        "def read_json(path):\n    with open(path) as f:\n        return json.load(f)",
        "read_json",
    ),
    (
        "Sort a list of words by their length.",
        "def sort_by_length(words):\n    return sorted(words, key=len)",
        "sort_by_length",
    ),
    (
        "Download a web page over HTTP.",
        "def fetch_page(url):\n    return urllib.request.urlopen(url).read()",
        "fetch_page",
    ),
    (
        "Compute the factorial of n.",
        "def factorial(n):\n    return 1 if n <= 1 else n * factorial(n - 1)",
        "factorial",
    ),
    ("Reverse a string.", "def reverse(text):\n    return text[::-1]", "reverse"),
    (
        "Count the lines of a text file.",
        "def count_lines(path):\n    with open(path) as f:\n        return sum(1 for _ in f)",
        "count_lines",
    ),
    ("Return the largest value in a list.", "def maximum(values):\n    return max(values)", "maximum"),
    (
        "Check whether a number is prime.",
        "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, n))",
        "is_prime",
    ),
    (
        "Remove duplicate items while keeping order.",
        "def unique(items):\n    return list(dict.fromkeys(items))",
        "unique",
    ),
    (
        "Convert degrees Celsius to Fahrenheit.",
        "def to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 32",
        "to_fahrenheit",
    ),
    ("", "def backwards(s):\n    return ''.join(reversed(s))", "backwards"),
    (
        "Write text to a file.",
        "def write_text(path, text):\n    with open(path, 'w') as f:\n        f.write(text)",
        "write_text",
    ),
    (
        "Compute the mean of a list of numbers.",
        "def mean(values):\n    return sum(values) / len(values)",
        "mean",
    ),
    ("", "def flatten(lists):\n    return [x for sub in lists for x in sub]", "flatten"),
    ("Split a sentence into words.", "def words(sentence):\n    return sentence.split()", "words"),
    (
        "Return the n-th Fibonacci number.",
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        "fib",
    ),
    (
        "Check that a string is a palindrome.",
        "def is_palindrome(s):\n    return s == s[::-1]",
        "is_palindrome",
    ),
    ("Merge two dictionaries.", "def merge(a, b):\n    return {**a, **b}", "merge"),
    (
        "Compute the greatest common divisor.",
        "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
        "gcd",
    ),
    ("Clamp a value to a range.", "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))", "clamp"),
    ("", "", "empty_function"),  # no code: skipped, and not in the index
    ("Count the words of a text.", "def count_words(text):\n    return len(text.split())", "count_words"),
    (
        "Return the current time as an ISO string.",
        "def now_iso():\n    return datetime.datetime.now().isoformat()",
        "now_iso",
    ),
    ("Square every number of a list.", "def squares(values):\n    return [v * v for v in values]", "squares"),
    ("Join paths into one.", "def join_paths(*parts):\n    return os.path.join(*parts)", "join_paths"),
    (
        "Parse an integer, or return a default.",
        "def to_int(text, default=0):\n    try:\n        return int(text)\n    except ValueError:\n        return default",
        "to_int",
    ),
]
N_WITH_CODE = sum(1 for _, code, _ in FUNCTIONS if code)
METRIC_FIELDS = {
    "factory",
    "index_type",
    "ntotal",
    "dim",
    "recall@10",
    "recall_queries",
    "recall_query_source",
    "search_latency",
    "embed_seconds",
    "index_seconds",
    "index_file_bytes",
    "index_memory_mb",
    "faiss_gpu",
    "search_params",
}


def hash_embed(texts: list[str], kind: str) -> np.ndarray:
    """Character trigrams hashed into HASH_DIM buckets, L2-normalised."""
    out = np.zeros((len(texts), HASH_DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f"  {text.lower()} "
        for i in range(len(padded) - 2):
            bucket = int.from_bytes(
                hashlib.blake2b(padded[i : i + 3].encode(), digest_size=4).digest(), "little"
            )
            out[row, bucket % HASH_DIM] += 1.0
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Iterator[None]:
    """One OpenMP thread: on this tiny data, waking FAISS' workers costs more than they save, ~10x more
    on a busy shared machine (k-means of the PQ training especially)."""
    with omp_threads(1):
        yield


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {
            "query": query,
            "code": code,
            "language": "python",
            "repo": f"repo{i % 3}",
            "path": f"pkg/mod{i}.py",
            "func_name": name,
            "url": f"python://repo{i % 3}/pkg/mod{i}.py#L{i + 1}-L{i + 3}",
        }
        for i, (query, code, name) in enumerate(FUNCTIONS)
    ]
    root = tmp_path_factory.mktemp("corpus")
    write_shards(rows, root, rows_per_shard=10)  # three shards: ids must follow the shard order
    return root


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    queries = [
        "Reverse the characters of a string.",
        "Load JSON from a file.",
        "Greatest common divisor of two ints.",
    ]
    write_shards([{"query": q, "code": "pass", "split": "test"} for q in queries], root / "test")
    return root


@pytest.fixture(scope="module")
def minilm_run(corpus_dir: Path, pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run through the CLI entry point with all-MiniLM-L6-v2, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("index_minilm")
    argv = ["--encoder", "minilm", "--corpus", str(corpus_dir), "--out", str(out), "--pairs", str(pairs_dir)]
    assert stage.main([*argv, "--device", "cpu", "--encode-batch-size", "16"]) == 0
    return out


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_main_with_minilm_writes_index_metadata_metrics_and_config(minilm_run: Path) -> None:
    out = minilm_run
    metrics = read_metrics(out)
    assert METRIC_FIELDS <= set(metrics)
    assert metrics["factory"] == "Flat" and metrics["index_type"] == "IndexFlat"
    assert metrics["ntotal"] == N_WITH_CODE and metrics["dim"] == 384
    assert metrics["recall@10"] == 1.0  # exact search against exact search
    assert metrics["recall_queries"] == 3 and "test query column" in metrics["recall_query_source"]
    assert metrics["rows_skipped_empty_code"] == 1 and metrics["corpus_rows"] == len(FUNCTIONS)
    assert metrics["search_latency"]["p50_ms"] > 0 and metrics["search_latency"]["qps_batched"] > 0
    assert metrics["index_file_bytes"] == (out / "index.faiss").stat().st_size
    assert json.loads((out / "config.json").read_text())["config_class"] == "BuildIndexConfig"


def test_minilm_index_finds_the_function_a_query_describes(minilm_run: Path) -> None:
    from semcode.index import load_index, search
    from semcode.models.encoder import encode_texts, load_hf_tokenizer, load_pretrained

    model, tokenizer = load_pretrained("minilm"), load_hf_tokenizer("minilm")
    meta = pq.read_table(minilm_run / "index_meta.parquet")
    assert tuple(meta.column_names) == META_COLUMNS  # code, language, ..., doc, license: the contract
    assert meta.num_rows == N_WITH_CODE
    index = load_index(minilm_run / "index.faiss")
    queries = ["greatest common divisor of two integers", "read a json file"]
    _, ids = search(index, encode_texts(model, tokenizer, queries, "query"), 1)
    assert [meta["func_name"][int(i)].as_py() for i in ids[:, 0]] == ["gcd", "read_json"]


def test_metadata_rows_align_with_faiss_ids(corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    stage.index_corpus(stage.BuildIndexConfig(), hash_embed, HASH_DIM, corpus_dir, out)
    meta = pq.read_table(out / "index_meta.parquet").to_pylist()
    expected = [(code, name) for _, code, name in FUNCTIONS if code]
    assert [(row["code"], row["func_name"]) for row in meta] == expected  # corpus order, empty code dropped
    lines = [i + 1 for i, (_, code, _) in enumerate(FUNCTIONS) if code]  # each url's #L<start>
    assert [row["start_line"] for row in meta] == lines
    assert {row["language"] for row in meta} == {"python"}
    index = stage.faiss_index.load_index(out / "index.faiss")
    stored = index.reconstruct_n(0, index.ntotal)
    documents = search_documents(pa.Table.from_pylist(meta), DOCUMENT_VIEWS[0])  # name, doc, code
    location = meta[0]["path"].removesuffix(".py").replace("/", ".") + "." + meta[0]["func_name"]
    assert documents[0] == f"{location}\n{meta[0]['doc']}\n{meta[0]['code']}"
    np.testing.assert_allclose(stored, hash_embed(documents, "code"), atol=1e-6)
    assert [row["doc"] for row in meta] == [query for query, code, _ in FUNCTIONS if code]
    metrics = read_metrics(out)
    assert metrics["recall_queries"] == sum(1 for q, code, _ in FUNCTIONS if q and code)
    assert "corpus query column" in metrics["recall_query_source"]
    # No cap: every row of all three shards; these rows name no source.
    assert metrics["coverage"] == {
        "indexed": N_WITH_CODE,
        "corpus_rows": len(FUNCTIONS),
        "sampled_by": "all",
        "per_source": {"(unknown)": [N_WITH_CODE, len(FUNCTIONS)]},
    }


def test_auto_choice_follows_the_thresholds(corpus_dir: Path, tmp_path: Path) -> None:
    config = stage.BuildIndexConfig(flat_max=10, hnsw_max=100, hnsw_m=8, ef_search=32)
    metrics = stage.index_corpus(config, hash_embed, HASH_DIM, corpus_dir, tmp_path / "hnsw")
    assert metrics["factory"] == "HNSW8,Flat" and metrics["index_type"] == "IndexHNSWFlat"
    assert metrics["search_params"] == {"efSearch": 32} and metrics["recall@10"] >= 0.9


def test_factory_override_builds_ivf_pq_with_refine(corpus_dir: Path, tmp_path: Path) -> None:
    config = stage.BuildIndexConfig(factory="IVF2,PQ8x4,RFlat", nprobe=2, max_corpus=20)
    metrics = stage.index_corpus(config, hash_embed, HASH_DIM, corpus_dir, tmp_path / "ivf")
    assert metrics["index_type"] == "IndexRefineFlat(IndexIVFPQ)"
    assert metrics["rows_read"] == 20  # max_corpus: 20 sampled rows, less those with empty code
    assert metrics["ntotal"] == 20 - metrics["rows_skipped_empty_code"]
    assert metrics["search_params"] == {"nprobe": 2, "k_factor_rf": 16.0}
    assert metrics["recall@10"] == 1.0  # both lists probed, every candidate re-ranked exactly


def test_metadata_carries_language_repo_and_start_line(tmp_path: Path) -> None:
    rows = [
        ("go", "shop", "cmd/main.go", "main", "file:///src/shop/cmd/main.go#L12-L30", "func main() {}"),
        ("rust", "num", "src/lib.rs", "gcd", "https://github.com/o/num/blob/v1/src/lib.rs#L7", "fn gcd() {}"),
        ("python", "", "", "HumanEval/3", "humaneval://HumanEval/3", "def below_zero(ops): ..."),
        ("java", "", "Text.java", "Text.trim", "", "String trim() { return s; }"),
    ]
    corpus = [
        {"code": code, "language": language, "repo": repo, "path": path, "func_name": name, "url": url}
        for language, repo, path, name, url, code in rows
    ]
    corpus[0]["signature"] = "func main()"
    write_shards(corpus, tmp_path / "corpus")
    stage.index_corpus(stage.BuildIndexConfig(), hash_embed, HASH_DIM, tmp_path / "corpus", tmp_path / "a")
    meta = pq.read_table(tmp_path / "a" / "index_meta.parquet")
    assert meta.schema.field("start_line").type == pa.int32()
    assert meta["start_line"].to_pylist() == [12, 7, None, None]  # no #L<start>: unknown
    assert meta["language"].to_pylist() == ["go", "rust", "python", "java"]
    assert meta["repo"].to_pylist() == ["shop", "num", "", ""]
    assert meta["signature"].to_pylist() == ["func main()", "", "", ""]  # as the corpus has them

    # A corpus with its own start_line column: that one is used. Written before the signature and
    # source columns: signatures are "", the rows' source unknown.
    table = pq.read_table(tmp_path / "corpus" / "part-00000.parquet").drop_columns(["signature", "source"])
    table = table.append_column("start_line", pa.array([1, 2, 3, 4], type=pa.int64()))
    (tmp_path / "with_lines").mkdir()
    pq.write_table(table, tmp_path / "with_lines" / "part-00000.parquet")
    metrics = stage.index_corpus(
        stage.BuildIndexConfig(), hash_embed, HASH_DIM, tmp_path / "with_lines", tmp_path / "b"
    )
    meta = pq.read_table(tmp_path / "b" / "index_meta.parquet")
    assert meta["start_line"].to_pylist() == [1, 2, 3, 4]
    assert meta["signature"].to_pylist() == ["", "", "", ""]
    assert metrics["coverage"]["per_source"] == {"(unknown)": [4, 4]}


SOURCE_SIZES = {"python:stdlib": 10, "python:site-packages": 40, "dir:/srv/go": 6}


@pytest.fixture(scope="module")
def sourced_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """56 rows of three sources in ingest's order (source after source), over six shards."""
    rows = []
    for source, size in SOURCE_SIZES.items():
        for i in range(size):
            name = f"{source.split(':')[-1].strip('/').replace('/', '_').replace('-', '_')}_{i}"
            rows.append({"code": f"def {name}(x):\n    return x + {i}", "func_name": name, "source": source})
    root = tmp_path_factory.mktemp("sourced_corpus")
    write_shards(rows, root, rows_per_shard=10)
    return root


def indexed_names(corpus: Path, out: Path, **config: object) -> tuple[list[str], dict]:
    metrics = stage.index_corpus(stage.BuildIndexConfig(**config), hash_embed, HASH_DIM, corpus, out)
    return pq.read_table(out / "index_meta.parquet")["func_name"].to_pylist(), metrics


def test_a_capped_index_is_a_seeded_sample_spread_over_sources(sourced_corpus: Path, tmp_path: Path) -> None:
    names, metrics = indexed_names(sourced_corpus, tmp_path / "a", max_corpus=24, seed=1)
    assert metrics["coverage"] == {
        "indexed": 24,
        "corpus_rows": 56,
        "sampled_by": "seeded sample (seed 1), even share per source",
        "per_source": {"python:stdlib": [9, 10], "python:site-packages": [9, 40], "dir:/srv/go": [6, 6]},
    }
    all_names = pq.read_table(sourced_corpus, columns=["func_name"])["func_name"].to_pylist()
    assert names != all_names[:24]  # not a prefix
    assert names == [name for name in all_names if name in set(names)]  # in corpus order, ids = rows
    assert sum(name.startswith("site_packages_") for name in names) == 9
    # The sample is drawn from all of site-packages' four shards, not from its first rows.
    assert max(int(name.rsplit("_", 1)[1]) for name in names if name.startswith("site_packages_")) >= 20

    same, _ = indexed_names(sourced_corpus, tmp_path / "b", max_corpus=24, seed=1)
    other, _ = indexed_names(sourced_corpus, tmp_path / "c", max_corpus=24, seed=2)
    assert same == names  # same seed, same rows
    assert other != names and len(other) == 24  # another seed, other rows
    meta = pq.read_table(tmp_path / "a" / "index_meta.parquet")
    index = stage.faiss_index.load_index(tmp_path / "a" / "index.faiss")
    np.testing.assert_allclose(
        index.reconstruct_n(0, index.ntotal),
        hash_embed(search_documents(meta, DOCUMENT_VIEWS[0]), "code"),
        atol=1e-6,
    )


def test_a_cap_at_or_over_the_corpus_indexes_all_of_it(sourced_corpus: Path, tmp_path: Path) -> None:
    names, metrics = indexed_names(sourced_corpus, tmp_path / "a", max_corpus=56)
    assert len(names) == 56 and metrics["coverage"]["sampled_by"] == "all"
    assert metrics["coverage"]["per_source"]["python:site-packages"] == [40, 40]


def refuse_to_embed(texts: list[str], kind: str) -> np.ndarray:
    raise AssertionError("the input should have been rejected before any embedding")


def test_whole_sources_are_indexed_whole_and_the_others_share_the_rest(
    sourced_corpus: Path, tmp_path: Path
) -> None:
    names, metrics = indexed_names(
        sourced_corpus, tmp_path / "a", max_corpus=24, seed=1, whole_sources=("python:stdlib",)
    )
    assert metrics["coverage"]["per_source"] == {
        "python:stdlib": [10, 10],
        "python:site-packages": [8, 40],
        "dir:/srv/go": [6, 6],
    }
    assert metrics["coverage"]["sampled_by"] == (
        "seeded sample (seed 1): python:stdlib whole, an even share per other source"
    )
    assert sum(name.startswith("stdlib_") for name in names) == 10
    # A name the corpus lacks, or whole sources over the cap, fail before anything is embedded.
    for whole, message in [
        (
            ("python:stdlb",),
            r"whole_sources \['python:stdlb'\] are not in the corpus; its sources: \['dir:/srv/go'",
        ),
        (("python:site-packages",), "hold 40 rows, more than max_corpus 24"),
    ]:
        config = stage.BuildIndexConfig(max_corpus=24, whole_sources=whole)
        with pytest.raises(ValueError, match=message):
            stage.index_corpus(config, refuse_to_embed, HASH_DIM, sourced_corpus, tmp_path / "x")


def test_invalid_factory_fails_before_embedding(corpus_dir: Path, tmp_path: Path) -> None:
    for factory, message in [("HNSW,,Flat", "'HNSW,,Flat'"), ("IVF64,Flat", "64 inverted lists")]:
        with pytest.raises(ValueError, match=message):
            stage.index_corpus(
                stage.BuildIndexConfig(factory=factory), refuse_to_embed, HASH_DIM, corpus_dir, tmp_path / "x"
            )


def test_dimension_mismatch_is_a_clear_error(corpus_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \(\d+, 64\), expected \(\d+, 32\)"):
        stage.index_corpus(stage.BuildIndexConfig(), hash_embed, 32, corpus_dir, tmp_path / "x")


def test_bad_corpus_inputs(tmp_path: Path) -> None:
    write_shards([], tmp_path / "empty")
    with pytest.raises(ValueError, match="is empty"):
        stage.index_corpus(
            stage.BuildIndexConfig(), refuse_to_embed, HASH_DIM, tmp_path / "empty", tmp_path / "o"
        )
    write_shards([{"query": "q", "code": ""}], tmp_path / "no_code")
    with pytest.raises(ValueError, match="empty code; nothing to index"):
        stage.index_corpus(
            stage.BuildIndexConfig(), hash_embed, HASH_DIM, tmp_path / "no_code", tmp_path / "o"
        )


def test_main_reports_bad_input_without_a_traceback(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    cases = [
        (["--encoder", str(tmp_path / "no_encoder"), "--corpus", str(corpus_dir)], "not a directory"),
        (["--encoder", "minilm", "--corpus", str(tmp_path / "no_corpus")], "does not exist"),
        (["--encoder", "minilm", "--corpus", str(corpus_dir), "--pairs", str(tmp_path)], "no test/part"),
        (
            ["--encoder", "minilm", "--corpus", str(corpus_dir), "--flat-max", "10", "--hnsw-max", "5"],
            "hnsw_max",
        ),
    ]
    for argv, message in cases:
        assert stage.main([*argv, "--out", out]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_full_disk_leaves_no_truncated_index_and_names_the_path(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "index"
    stage.index_corpus(stage.BuildIndexConfig(), hash_embed, HASH_DIM, corpus_dir, out)
    real_save = stage.faiss_index.save_index

    def save_half_then_fill_the_disk(index, path):
        real_save(index, path)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # what a full disk leaves behind
        raise RuntimeError(f"fwrite to {path} failed (No space left on device)")  # FAISS's own words

    monkeypatch.setattr(stage.faiss_index, "save_index", save_half_then_fill_the_disk)
    with pytest.raises(OSError, match=r"No space left on device while writing .*index\.faiss") as caught:
        stage.index_corpus(stage.BuildIndexConfig(), hash_embed, HASH_DIM, corpus_dir, out)
    assert caught.value.errno == errno.ENOSPC
    # The earlier run's outputs were removed first, the truncated file never took the real name, nothing
    # partial is left, and no metrics.json says the stage finished.
    assert sorted(path.name for path in out.iterdir()) == ["index_meta.parquet"]
