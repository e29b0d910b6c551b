"""A tiny but real release bundle, built once per test session by the real stages.

``make_tiny_run(root)`` runs ingest (a sample of the stdlib), train-tokenizer, a freshly initialised tiny
encoder (seeded; training is not what these tests are about, and DeepSpeed would cost ~40 s), evaluate,
build-index and export-onnx, into ``root``; ``make_tiny_bundle(root)`` also assembles the bundle from
them. About 10 s on one core. In a test module::

    from bundle_fixture import TinyRun, cached_tiny_run

    @pytest.fixture(scope="session")
    def tiny_run(tmp_path_factory) -> TinyRun:
        return cached_tiny_run(tmp_path_factory)

``cached_tiny_run`` builds the run once per session even when several modules ask for it.
``make_tiny_decoder(run, out)`` trains a tiny decoder on the run with the real train-decoder stage (a few
steps, DeepSpeed on CPU); ``assemble_tiny_bundle(run, out, decoder_dir=...)`` puts it in the bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from semcode import bundle as bundles
from semcode import config as cfg

# export-onnx's max_mrr_loss: a random encoder's int8 copy may lose a few hundredths of MRR on a handful
# of test queries; the fixture wants int8 to be the default (parity held), the tests change that by hand.
FIXTURE_MAX_MRR_LOSS = 1.0

# Functions in other languages, added to the corpus build-index indexes (not to ingest's: the tokenizer
# and the pairs stay Python), so the tiny bundle holds several languages as a polyglot one does. They come
# after the Python rows: FAISS ids (language, repo, path, func_name, start_line, docstring, code).
POLYGLOT_FUNCTIONS = [
    (
        "go",
        "demo-go",
        "strutil/strutil.go",
        "Reverse",
        8,
        "Reverse returns s with its runes in reverse order.",
        "func Reverse(s string) string {\n\trunes := []rune(s)\n"
        "\tfor i, j := 0, len(runes)-1; i < j; i, j = i+1, j-1 {\n"
        "\t\trunes[i], runes[j] = runes[j], runes[i]\n\t}\n\treturn string(runes)\n}",
    ),
    (
        "go",
        "demo-go",
        "fileutil/lines.go",
        "ReadLines",
        12,
        "ReadLines reads a whole file and returns its lines.",
        "func ReadLines(path string) ([]string, error) {\n\tfile, err := os.Open(path)\n"
        "\tif err != nil {\n\t\treturn nil, err\n\t}\n\tdefer file.Close()\n\tvar lines []string\n"
        "\tscanner := bufio.NewScanner(file)\n\tfor scanner.Scan() {\n"
        "\t\tlines = append(lines, scanner.Text())\n\t}\n\treturn lines, scanner.Err()\n}",
    ),
    (
        "go",
        "demo-go",
        "mathutil/max.go",
        "MaxInt",
        3,
        "MaxInt returns the largest of the values, or 0 for none.",
        "func MaxInt(values ...int) int {\n\tbest := 0\n\tfor i, v := range values {\n"
        "\t\tif i == 0 || v > best {\n\t\t\tbest = v\n\t\t}\n\t}\n\treturn best\n}",
    ),
    (
        "rust",
        "demo-rs",
        "src/num.rs",
        "gcd",
        21,
        "The greatest common divisor of two numbers.",
        "pub fn gcd(mut a: u64, mut b: u64) -> u64 {\n    while b != 0 {\n        let t = a % b;\n"
        "        a = b;\n        b = t;\n    }\n    a\n}",
    ),
    (
        "rust",
        "demo-rs",
        "src/text.rs",
        "word_counts",
        40,
        "Counts how often each word occurs in a text.",
        "pub fn word_counts(text: &str) -> HashMap<String, usize> {\n"
        "    let mut counts = HashMap::new();\n    for word in text.split_whitespace() {\n"
        "        *counts.entry(word.to_lowercase()).or_insert(0) += 1;\n    }\n    counts\n}",
    ),
    (
        "java",
        "demo-java",
        "src/main/java/demo/Text.java",
        "Text.capitalize",
        17,
        "Returns the text with its first letter in upper case.",
        "public static String capitalize(String text) {\n"
        "    if (text == null || text.isEmpty()) {\n        return text;\n    }\n"
        "    return Character.toUpperCase(text.charAt(0)) + text.substring(1);\n}",
    ),
]


@dataclass(frozen=True)
class TinyRun:
    root: Path
    ingest: Path  # manifest.json, pairs/, corpus/
    encoder: Path  # the encoder directory (semcode_encoder.json, sentence-transformers layout)
    evaluate: Path  # metrics.json
    index: Path  # index.faiss, index_meta.parquet, metrics.json
    onnx: Path  # encoder.onnx, encoder.int8.onnx, tokenizer.json, metrics.json

    @property
    def tokenizer(self) -> Path:  # train-tokenizer's output: tokenizer.json
        return self.root / "tokenizer"

    def eval_metrics(self) -> dict:
        return json.loads((self.evaluate / "metrics.json").read_text())

    def stage_metrics(self) -> dict:
        return {"ingest": json.loads((self.ingest / "manifest.json").read_text())}


def polyglot_corpus(ingest_corpus: Path, out: Path) -> Path:
    """``out``: ingest's corpus shards and, last, one shard of POLYGLOT_FUNCTIONS (the corpus build-index
    indexes); their urls are file:// URIs ending in #L<start>-L<end>, as dir: sources write them."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from semcode.data.pairs import PAIR_SCHEMA, normalise_row

    out.mkdir(parents=True, exist_ok=True)
    for shard in sorted(ingest_corpus.glob("part-*.parquet")):
        shutil.copyfile(shard, out / shard.name)
    rows = [
        {
            "query": doc,
            "code": code,
            "language": language,
            "repo": repo,
            "path": path,
            "func_name": func_name,
            "url": f"file:///srv/{repo}/{path}#L{start}-L{start + code.count(chr(10))}",
            "source": f"dir:/srv/{repo}",
            "signature": code.split("{", 1)[0].strip(),  # as extraction writes it: the header, one line
        }
        for language, repo, path, func_name, start, doc, code in POLYGLOT_FUNCTIONS
    ]
    table = pa.Table.from_pylist([normalise_row(row) for row in rows], schema=PAIR_SCHEMA)
    pq.write_table(table, out / "part-99999.parquet")
    return out


def make_tiny_run(root: str | Path) -> TinyRun:
    import torch
    from tokenizers import Tokenizer

    from semcode.models.encoder import build_encoder
    from semcode.stages import build_index, evaluate, export_onnx, ingest, train_tokenizer

    root = Path(root)
    ingest_dir = root / "ingest"
    ingest.run(
        cfg.from_dict(
            ingest.IngestConfig,
            {"sources": ["python:stdlib"], "max_files_per_source": 40, "corpus_near_dup": False},
        ),
        ingest_dir,
    )
    pairs, corpus = ingest_dir / "pairs", ingest_dir / "corpus"
    train_tokenizer.run(
        cfg.from_dict(train_tokenizer.TrainTokenizerConfig, {"vocab_size": 600, "fertility_rows": 50}),
        corpus,
        root / "tokenizer",
    )
    tokenizer = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json"))
    torch.manual_seed(0)
    model = build_encoder("tiny", tokenizer.get_vocab_size(), tokenizer.token_to_id("<pad>"), max_length=64)
    encoder = model.save(root / "train_encoder" / "encoder", root / "tokenizer")
    evaluate.run(
        cfg.from_dict(
            evaluate.EvaluateConfig,
            {"suites": ["test", "humaneval"], "max_queries": 30, "n_distractors": 20, "device": "cpu"},
        ),
        encoder,
        pairs,
        root / "evaluate",
    )
    build_index.run(
        cfg.from_dict(build_index.BuildIndexConfig, {"recall_queries": 20, "device": "cpu", "use_gpu": "no"}),
        encoder,
        polyglot_corpus(corpus, root / "index_corpus"),
        root / "index",
    )
    export_onnx.run(
        cfg.from_dict(
            export_onnx.ExportOnnxConfig,
            {
                "parity_texts": 16,
                "latency_shapes": ["1x16"],
                "latency_repeats": 1,
                "latency_warmup": 0,
                "threads": 1,
                "max_mrr_loss": FIXTURE_MAX_MRR_LOSS,
            },
        ),
        encoder,
        root / "onnx",
        pairs_dir=pairs,
    )
    return TinyRun(root, ingest_dir, encoder, root / "evaluate", root / "index", root / "onnx")


def assemble_tiny_bundle(
    run: TinyRun,
    out: str | Path,
    version: str = "v1",
    name: str = "semcode",
    decoder_dir: str | Path | None = None,
) -> Path:
    bundles.assemble_bundle(
        out,
        name=name,
        version=version,
        encoder_dir=run.encoder,
        onnx_dir=run.onnx,
        index_dir=run.index,
        metrics=run.eval_metrics(),
        decoder_dir=decoder_dir,
        stage_metrics=run.stage_metrics(),
        extra={"run": "tiny-fixture"},
    )
    return Path(out)


def make_tiny_decoder(run: TinyRun, out: str | Path, steps: int = 4) -> Path:
    """Train a tiny decoder for ``steps`` steps on the run's pairs against its encoder (train-decoder's
    output in ``out``: decoder/, metrics.json, ...); a few seconds. Returns ``out``."""
    from semcode.stages import train_decoder

    config = cfg.from_dict(
        train_decoder.TrainDecoderConfig,
        {
            "size": "tiny",
            "prefix_tokens": 2,
            "max_length": 64,
            "batch_size": 8,
            "max_steps": steps,
            "checkpoint_every": 0,
            "max_train_pairs": 64,
            "max_valid_pairs": 0,
            "max_eval_pairs": 16,
            "generate_samples": 2,
            "generate_max_tokens": 8,
            "generate_from_queries": False,
            "rerank_candidates": 2,
        },
    )
    train_decoder.run(config, run.encoder, run.ingest / "pairs", run.tokenizer, out)
    return Path(out)


def make_tiny_bundle(tmp_root: str | Path) -> Path:
    """Run the tiny stages into ``tmp_root`` and assemble ``tmp_root/bundle``; returns the bundle folder."""
    run = make_tiny_run(Path(tmp_root) / "run")
    return assemble_tiny_bundle(run, Path(tmp_root) / "bundle")


_RUNS: dict[int, TinyRun] = {}


def cached_tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """One TinyRun per test session, whichever module asks first."""
    key = id(tmp_path_factory)
    if key not in _RUNS:
        _RUNS[key] = make_tiny_run(tmp_path_factory.mktemp("tiny_run"))
    return _RUNS[key]


def restamp(bundle_dir: Path) -> Path:
    """Re-make bundle.json's ``files`` checksums after a test edited a bundle's files on purpose (a Searcher
    refuses files that no longer match them)."""
    bundle = json.loads((bundle_dir / "bundle.json").read_text())
    bundle["files"] = bundles.file_checksums(bundle_dir)
    (bundle_dir / "bundle.json").write_text(json.dumps(bundle))
    return bundle_dir


def own_document(row: dict) -> str:
    """An index_meta row's search document, as build_index embedded it: a query that should find the row."""
    from semcode.corpus import DOCUMENT_VIEWS, search_document

    return search_document(DOCUMENT_VIEWS[0], row["code"], row["doc"], row["path"], row["func_name"])


TEXT_SUFFIXES = (".json", ".md", ".html", ".txt", ".yaml", ".yml", ".jsonl")


def machine_paths(tmp_root: Path) -> list[str]:
    """The build machine's folders no bundle file may name: the test's tmp folder, the working directory,
    $HOME and the Python environment."""
    import os
    import sys

    folders = {str(tmp_root), os.getcwd(), os.path.expanduser("~"), sys.prefix}
    return sorted({f for folder in folders for f in (folder, os.path.realpath(folder)) if f.strip("/")})


def files_naming(folder: Path, forbidden: list[str]) -> list[str]:
    """'file: path' for every text-like file under ``folder`` (and every string column of its .parquet
    files, and the files named ``latest``) that holds one of ``forbidden``; binary files are skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix in TEXT_SUFFIXES or path.name == "latest":
            texts = [path.read_text(errors="replace")]
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            texts = [
                str(value)
                for field in table.schema
                if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
                for value in table[field.name].to_pylist()
            ]
        else:
            continue  # ONNX, safetensors, FAISS: binary
        found += [f"{path.relative_to(folder)}: {f}" for f in forbidden for text in texts if f in text][:1]
    return found
