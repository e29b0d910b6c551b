"""The tokenizer library and the train_tokenizer stage, on a tiny real corpus: stdlib functions.

``write_tiny_ingest`` and ``train_tiny_tokenizer`` are reusable builders for other test files
(encoder, decoder, export) via the session fixtures ``tiny_ingest_dir`` and ``tiny_tokenizer_dir``.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from semcode.config import ConfigError
from semcode.data.pairs import iter_column, write_shards
from semcode.stages import train_tokenizer as stage
from semcode.tokenizer import SPECIAL_IDS, SPECIAL_TOKENS, fertility, load_tokenizer, train_bpe

# module -> split; splits by module, as ingest splits by package
TINY_MODULES = {
    "textwrap.py": "train",
    "shlex.py": "train",
    "heapq.py": "train",
    "bisect.py": "train",
    "fractions.py": "train",
    "calendar.py": "train",
    "difflib.py": "train",
    "json/decoder.py": "valid",
    "json/encoder.py": "valid",
    "statistics.py": "test",
    "colorsys.py": "test",
}
TINY_VOCAB_SIZE = 800

# Text the decoder must get back byte for byte.
ROUND_TRIP_CASES = [
    "def f(x):\n    return x + 1\n",
    "class A:\n\tdef m(self):\n\t\treturn 'tabs'\n",
    "if x:\r\n    y = 1\r\n",
    "s = 'héllo wörld ✓ 日本語 😀'  # unicode\n",
    "   leading spaces and trailing spaces   \n\n\n",
    "x=1;y=2\n\n\n\n        \tmixed  \t indent\n",
    "MixedCase CONSTANT snake_case camelCase",
    "\n",
    " ",
]


def stdlib_function_rows() -> list[dict]:
    """A few hundred real functions (source with indentation; docstring as query) from stdlib modules."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for module, split in TINY_MODULES.items():
        source = (stdlib / module).read_text(encoding="utf-8")
        lines = source.splitlines(keepends=True)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                docstring = ast.get_docstring(node) or ""
                rows.append(
                    {
                        "query": docstring.split("\n\n")[0],
                        # whole lines: methods keep their indentation, as extracted code does
                        "code": "".join(lines[node.lineno - 1 : node.end_lineno]),
                        "language": "python",
                        "repo": f"stdlib/{module}",
                        "path": module,
                        "func_name": node.name,
                        "split": split,
                    }
                )
    return rows


def write_tiny_ingest(root: Path, rows_per_shard: int = 100) -> Path:
    """An ingest-shaped directory: ``root/corpus`` (several shards) and ``root/pairs/{train,valid,test}``."""
    rows = stdlib_function_rows()
    write_shards(rows, root / "corpus", rows_per_shard=rows_per_shard)
    for split in ("train", "valid", "test"):
        write_shards([r for r in rows if r["split"] == split], root / "pairs" / split)
    return root


def train_tiny_tokenizer(ingest_dir: Path, out_dir: Path, vocab_size: int = TINY_VOCAB_SIZE) -> Path:
    """Run the stage on a tiny ingest directory; returns the tokenizer directory."""
    config = stage.TrainTokenizerConfig(vocab_size=vocab_size, model_max_length=256)
    stage.run(config, ingest_dir / "corpus", out_dir, pairs_dir=ingest_dir / "pairs")
    return out_dir


@pytest.fixture(scope="session")
def tiny_ingest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_ingest(tmp_path_factory.mktemp("tiny_ingest"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_ingest_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tokenizer(tiny_ingest_dir, tmp_path_factory.mktemp("tiny_tokenizer"))


def read_metrics(out_dir: Path) -> dict:
    return json.loads((out_dir / "metrics.json").read_text())


def test_special_tokens_have_fixed_ids(tiny_tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    assert list(SPECIAL_TOKENS.values()) == ["<pad>", "<s>", "</s>", "<mask>", "<unk>"]
    for role, token in SPECIAL_TOKENS.items():
        assert tokenizer.token_to_id(token) == SPECIAL_IDS[role]
    assert tokenizer.get_vocab_size() == TINY_VOCAB_SIZE
    ids = tokenizer.encode("return x").ids
    assert ids[0] == SPECIAL_IDS["bos"] and ids[-1] == SPECIAL_IDS["eos"]
    assert SPECIAL_IDS["unk"] not in tokenizer.encode("😀 ∑ \x00 \x7f").ids  # every byte is in the vocab


def test_decode_encode_is_exact(tiny_tokenizer_dir: Path, tiny_ingest_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    corpus_code = list(iter_column(tiny_ingest_dir / "corpus", "code"))
    assert len(corpus_code) > 200
    for text in ROUND_TRIP_CASES + corpus_code:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids) == text
    # Indentation of real methods survives (padded source starts with spaces).
    assert any(code.startswith("    def ") for code in corpus_code)


def test_transformers_loads_it_with_the_same_ids(tiny_tokenizer_dir: Path) -> None:
    reference = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    for loader in (AutoTokenizer, PreTrainedTokenizerFast):
        hf = loader.from_pretrained(str(tiny_tokenizer_dir))
        assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.mask_token_id, hf.unk_token_id) == (
            SPECIAL_IDS["pad"],
            SPECIAL_IDS["bos"],
            SPECIAL_IDS["eos"],
            SPECIAL_IDS["mask"],
            SPECIAL_IDS["unk"],
        )
        assert hf.model_max_length == 256
        for text in ROUND_TRIP_CASES:
            ids = hf(text)["input_ids"]
            assert ids == reference.encode(text).ids
            assert hf.decode(ids, skip_special_tokens=True) == text
        batch = hf(ROUND_TRIP_CASES[:2], padding=True, truncation=True, max_length=8)
        assert all(len(ids) == 8 for ids in batch["input_ids"])
        assert batch["input_ids"][0][-1] == SPECIAL_IDS["eos"]


def test_metrics_and_fertility_are_sane(tiny_tokenizer_dir: Path) -> None:
    metrics = read_metrics(tiny_tokenizer_dir)
    assert metrics["vocab_size"] == TINY_VOCAB_SIZE
    assert metrics["stopped_by"] == "end of corpus" and metrics["held_out_rows"] == 0
    assert metrics["bytes_consumed"] > 100_000 and metrics["rows_consumed"] > 200
    assert metrics["files_read"] == metrics["files_total"] > 1
    assert metrics["seconds"] > 0 and metrics["mb_per_s"] > 0
    code = metrics["fertility"]["code"]
    assert "test" in metrics["fertility"]["source"]
    assert code["texts"] > 50
    # A small vocab still merges common code: well under one token per character, over one per line.
    assert 0.1 < code["tokens_per_char"] < 0.6
    assert 2 < code["tokens_per_line"] < 30
    assert 0 <= code["share_over_max_length"] <= 1
    assert metrics["fertility"]["query"]["texts"] > 20
    by_language = metrics["fertility"]["by_language"]
    assert set(by_language) == {"python"}  # the test split's languages
    assert by_language["python"]["code"]["texts"] == code["texts"]


def test_fertility_is_reported_per_language(tmp_path: Path) -> None:
    """Two languages in pairs/test: each gets its own fertility, over its own rows only."""
    from semcode.data.pairs import write_shards
    from semcode.stages import train_tokenizer

    python_rows = [
        {"query": f"add {i} to x", "code": f"def add_{i}(x):\n    return x + {i}\n"} for i in range(6)
    ]
    go_rows = [
        {"query": f"add {i} to x", "code": f"func Add{i}(x int) int {{\n\treturn x + {i}\n}}\n"}
        for i in range(4)
    ]
    rows = [{**row, "language": "python"} for row in python_rows] + [
        {**row, "language": "go"} for row in go_rows
    ]
    write_shards(
        [{**row, "repo": "r", "path": "p", "func_name": "f", "url": "u", "split": "test"} for row in rows],
        tmp_path / "pairs" / "test",
    )
    write_shards(
        [
            {**row, "repo": "r", "path": "p", "func_name": "f", "url": "u", "split": "train"}
            for row in rows * 20
        ],
        tmp_path / "corpus",
    )
    config = train_tokenizer.TrainTokenizerConfig(vocab_size=300, min_frequency=1)
    metrics = train_tokenizer.run(config, tmp_path / "corpus", tmp_path / "out", pairs_dir=tmp_path / "pairs")
    by_language = metrics["fertility"]["by_language"]
    assert sorted(by_language) == ["go", "python"]
    assert by_language["python"]["code"]["texts"] == 6 and by_language["go"]["code"]["texts"] == 4


def test_fertility_counts() -> None:
    tokenizer = train_bpe(["aaa bbb\nccc"] * 50, vocab_size=300, min_frequency=1)
    result = fertility(tokenizer, ["aaa bbb\nccc", "", "aaa"], max_length=3)
    assert result["texts"] == 2 and result["lines"] == 3 and result["chars"] == 14
    assert result["tokens"] == 5  # "aaa", " bbb", "\n", "ccc" + "aaa"
    assert result["tokens_per_line"] == pytest.approx(5 / 3)
    assert result["share_over_max_length"] == 0.5  # 4 tokens + <s></s> > 3; 1 + 2 is not


def test_max_bytes_and_max_files_limit_what_is_read(tiny_ingest_dir: Path, tmp_path: Path) -> None:
    config = stage.TrainTokenizerConfig(vocab_size=400, max_bytes=20_000)
    metrics = stage.run(config, tiny_ingest_dir / "corpus", tmp_path / "by_bytes")
    assert 10_000 < metrics["bytes_consumed"] <= 20_000
    assert metrics["stopped_by"] == "max_bytes"
    assert metrics["files_read"] == 1
    # No pairs dir: fertility on rows held out of the stream, and it says so.
    assert "held out" in metrics["fertility"]["source"]
    assert metrics["held_out_rows"] >= 1 and metrics["fertility"]["code"]["texts"] >= 1

    config = stage.TrainTokenizerConfig(vocab_size=400, max_files=2)
    metrics = stage.run(config, tiny_ingest_dir / "corpus", tmp_path / "by_files")
    total_rows = pq.ParquetFile(
        sorted((tiny_ingest_dir / "corpus").glob("part-*.parquet"))[0]
    ).metadata.num_rows
    assert metrics["files_read"] == 2 < metrics["files_total"]
    assert metrics["rows_consumed"] + metrics["held_out_rows"] == 2 * total_rows


def test_main_writes_the_artifact(tiny_ingest_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokenizer"
    code = stage.main(
        [
            "--corpus",
            str(tiny_ingest_dir / "corpus"),
            "--pairs",
            str(tiny_ingest_dir / "pairs"),
            "--out",
            str(out),
            "--vocab-size",
            "500",
            "--min-frequency",
            "3",
        ]
    )
    assert code == 0
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "metrics.json",
        "config.json",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["vocab_size"] == 500 and saved["min_frequency"] == 3
    assert read_metrics(out)["vocab_size"] == 500


def test_bad_inputs_raise_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = stage.TrainTokenizerConfig(vocab_size=300)
    missing = tmp_path / "no_such_corpus"
    with pytest.raises(FileNotFoundError, match="no_such_corpus.*does not exist"):
        stage.run(config, missing, tmp_path / "out")

    no_shards = tmp_path / "ingest_out"
    (no_shards / "corpus").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="ingest_out has no part-.*did you mean"):
        stage.run(config, no_shards, tmp_path / "out")

    no_rows = tmp_path / "no_rows"
    write_shards([], no_rows)  # one empty shard
    with pytest.raises(ValueError, match="no_rows has no rows"):
        stage.run(config, no_rows, tmp_path / "out")

    no_text = tmp_path / "no_text"
    write_shards([{"code": "", "query": ""}] * 10, no_text)
    with pytest.raises(ValueError, match="no_text has no text"):
        stage.run(config, no_text, tmp_path / "out")

    with pytest.raises(FileNotFoundError, match="no_pairs has no test"):
        stage.run(config, no_text, tmp_path / "out", pairs_dir=tmp_path / "no_pairs")

    with pytest.raises(ConfigError, match="vocab_size=100 is smaller"):
        stage.run(stage.TrainTokenizerConfig(vocab_size=100), no_text, tmp_path / "out")
    with pytest.raises(ConfigError, match="columns"):
        stage.TrainTokenizerConfig(columns=("hard_negatives",)).validate()
    with pytest.raises(ValueError, match="vocab_size=260"):
        train_bpe(["x"], vocab_size=260)

    assert stage.main(["--corpus", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert "no_such_corpus does not exist" in capsys.readouterr().err
    assert stage.main(["--corpus", str(no_text), "--out", str(tmp_path / "out"), "--vocab-size", "10"]) == 2
    assert "vocab_size=10" in capsys.readouterr().err
