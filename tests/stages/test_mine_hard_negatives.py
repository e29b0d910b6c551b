"""Stage mine_hard_negatives on tiny real data: a tokenizer trained here, a tiny encoder trained for a few
steps by train_encoder, mining, then train_encoder continuing from that encoder on the mined pairs.

The pairs are small Python functions named verb_noun with a one-line query; many share a verb or a noun,
so a trained encoder ranks look-alike functions high: the hard negatives.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from semcode.config import ConfigError
from semcode.data.pairs import read_split, write_shards
from semcode.stages import mine_hard_negatives, train_encoder
from semcode.stages.mine_hard_negatives import MineHardNegativesConfig
from semcode.stages.train_encoder import TrainEncoderConfig

VERBS = ["parse", "render", "merge", "compress", "validate", "fetch", "encrypt", "index"]
NOUNS = [
    "invoice",
    "glyph",
    "manifest",
    "tensor",
    "ledger",
    "sitemap",
    "palette",
    "cookie",
    "schema",
    "vertex",
]
ARGS = ["payload", "stream", "records", "buffer", "rows", "blob"]
N_TRAIN = 120
COPY_OF = 5  # train row 121 is the code of train row 5, laid out differently, with another query


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def make_pair(rng: random.Random, index: int) -> dict:
    verb, noun, arg = rng.choice(VERBS), rng.choice(NOUNS), rng.choice(ARGS)
    code = f"def {verb}_{noun}_{index}({arg}):\n    result = {arg}.{noun}()\n    return {verb}(result)\n"
    query = f"{verb.capitalize()} the {noun} of a {arg}."
    return {
        "query": query,
        "code": code,
        "language": "python",
        "repo": f"repo{index % 7}",
        "func_name": f"{verb}_{noun}_{index}",
        "path": "mod.py",
        "url": f"python://repo/mod.py#L{index}",
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """pairs/ (train with an exact copy and an empty row, valid, test), a tokenizer, an encoder trained briefly."""
    from semcode.tokenizer import save_tokenizer, train_bpe

    root = tmp_path_factory.mktemp("mine_data")
    rng = random.Random(0)
    pairs = [make_pair(rng, i) for i in range(N_TRAIN + 60)]
    train, valid, test = pairs[:N_TRAIN], pairs[N_TRAIN : N_TRAIN + 30], pairs[N_TRAIN + 30 :]
    copy = dict(train[COPY_OF], query="Another description of the same function.")
    copy["code"] = copy["code"].replace("    ", "  ").replace("(result)", "( result )")
    train += [dict(train[0], query="", url="no query"), copy]
    for split, rows in (("train", train), ("valid", valid), ("test", test)):
        write_shards(rows, root / "pairs" / split)
    tokenizer = train_bpe([p["query"] for p in pairs] + [p["code"] for p in pairs], vocab_size=500)
    save_tokenizer(tokenizer, root / "tokenizer", model_max_length=64)
    config = TrainEncoderConfig(
        size="tiny",
        max_length=64,
        batch_size=16,
        max_steps=21,
        lr=2e-3,
        warmup_steps=2,
        eval_every=0,
        checkpoint_every=0,
        max_valid_pairs=30,
    )
    train_encoder.run(config, root / "pairs", root / "tokenizer", root / "encoder")
    return {"pairs": root / "pairs", "encoder": root / "encoder" / "encoder", "root": root}


@pytest.fixture(scope="module")
def mined(data: dict[str, Path]) -> Path:
    out = data["root"] / "mined"
    code = mine_hard_negatives.main(
        [
            "--encoder",
            str(data["encoder"]),
            "--pairs",
            str(data["pairs"]),
            "--out",
            str(out),
            "--count",
            "3",
            "--range-max",
            "20",
            "--batch-size",
            "32",
        ]
    )
    assert code == 0
    return out


def test_mined_pairs_have_hard_negatives_that_are_never_the_gold_nor_its_copy(
    mined: Path, data: dict[str, Path]
):
    source = read_split(data["pairs"], "train").to_pylist()
    rows = read_split(mined / "pairs", "train").to_pylist()
    assert [r["url"] for r in rows] == [r["url"] for r in source]  # every train row, in order, nothing else
    assert rows[N_TRAIN]["hard_negatives"] == []  # no query: not mined
    mined_rows = [r for r in rows if r["query"]]
    assert sum(len(r["hard_negatives"]) == 3 for r in mined_rows) >= 0.9 * len(mined_rows)
    codes = {r["code"] for r in source}
    for row in mined_rows:
        assert row["code"] not in row["hard_negatives"]
        assert set(row["hard_negatives"]) <= codes and len(set(row["hard_negatives"])) == len(
            row["hard_negatives"]
        )
    original, copy = rows[COPY_OF], rows[N_TRAIN + 1]
    assert copy["code"] not in original["hard_negatives"] and original["code"] not in copy["hard_negatives"]
    for name in ("query", "code", "repo", "path", "func_name", "url", "split", "source", "language"):
        assert [r[name] for r in rows] == [r[name] for r in source], name


def test_other_splits_are_copied_unchanged_and_the_schema_is_the_pair_schema(
    mined: Path, data: dict[str, Path]
):
    from semcode.data.pairs import PAIR_SCHEMA

    for split in ("valid", "test"):
        originals = sorted((data["pairs"] / split).glob("part-*.parquet"))
        copies = sorted((mined / "pairs" / split).glob("part-*.parquet"))
        assert [p.name for p in copies] == [p.name for p in originals]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(originals, copies, strict=True))
    assert read_split(mined / "pairs", "train").schema.equals(PAIR_SCHEMA)


def test_report_metrics_and_config(mined: Path):
    report = json.loads((mined / "report.json").read_text())
    metrics = json.loads((mined / "metrics.json").read_text())
    assert report["metrics"] == metrics
    assert report["rows_mined"] == N_TRAIN + 1 and report["pool_size"] == N_TRAIN + 1
    assert report["search_depth"] == 22  # range_max 20 + the gold + its one layout copy
    assert set(report["removed"]) == {
        "gold",
        "duplicate",
        "rank",
        "relative_margin",
        "absolute_margin",
        "surplus",
    }
    assert (
        report["removed"]["gold"] >= N_TRAIN
    )  # the trained encoder retrieves (almost) every gold in its top 22
    assert report["removed"]["duplicate"] >= 2  # the copy pair, each in the other's candidates
    assert sum(report["removed"].values()) + metrics["negatives_written"] == (N_TRAIN + 1) * 22
    for name in ("positive", "kept_negative", "removed_too_close"):
        assert {"count", "p5", "p50", "p95"} <= set(report["scores"][name]), name
    assert report["scores"]["kept_negative"]["p50"] < report["scores"]["positive"]["p50"]
    assert sum(report["negatives_per_row"].values()) == N_TRAIN + 1
    assert metrics["rows_short"] == sum(v for k, v in report["negatives_per_row"].items() if int(k) < 3)
    assert set(report["seconds"]) == {"encode_queries", "encode_codes", "search", "filter", "write", "total"}
    assert len(report["examples"]) == 3 and all(
        e["negative_score"] < e["positive_score"] for e in report["examples"]
    )
    assert report["config"]["count"] == 3 and report["config"]["range_max"] == 20
    assert json.loads((mined / "config.json").read_text())["config_class"] == "MineHardNegativesConfig"


def test_a_sample_writes_only_the_mined_rows_and_the_train_pool_reaches_beyond_it(
    data: dict[str, Path], tmp_path
):
    config = MineHardNegativesConfig(
        count=2, range_max=10, max_train_pairs=40, candidates="train", batch_size=32
    )
    report = mine_hard_negatives.run(config, data["encoder"], data["pairs"], tmp_path / "sample")
    rows = read_split(tmp_path / "sample" / "pairs", "train").to_pylist()
    assert len(rows) == report["rows_mined"] == 40 and report["pool_size"] == N_TRAIN + 1
    assert all(r["query"] and r["code"] for r in rows)
    sample_codes = {r["code"] for r in rows}
    negatives = {code for r in rows for code in r["hard_negatives"]}
    assert negatives - sample_codes  # some negatives come from train rows outside the sample
    again = mine_hard_negatives.run(config, data["encoder"], data["pairs"], tmp_path / "again")
    assert again["removed"] == report["removed"]  # seeded
    assert read_split(tmp_path / "again" / "pairs", "train").to_pylist() == rows


def test_train_encoder_continues_from_the_encoder_on_the_mined_pairs(
    mined: Path, data: dict[str, Path], tmp_path
):
    config = TrainEncoderConfig(
        init_from=str(data["encoder"]),
        max_length=64,
        batch_size=16,
        max_steps=3,
        lr=1e-4,
        hard_negative_weight=0.5,
        max_hard_negatives=3,
        eval_every=0,
        checkpoint_every=0,
        max_valid_pairs=30,
    )
    metrics = train_encoder.run(config, mined / "pairs", None, tmp_path / "round1")
    assert metrics["steps"] == 3 and metrics["init_from"] == str(data["encoder"])
    assert metrics["zero_shot_valid_mrr"] is not None and metrics["best_valid_mrr"] is not None
    history = json.loads((tmp_path / "round1" / "history.json").read_text())
    assert all(step["hard"] > 0 for step in history["steps"])  # every batch had rows with hard negatives
    assert (tmp_path / "round1" / "encoder" / "semcode_encoder.json").is_file()


def test_bad_inputs_fail_before_encoding_and_name_the_input(data: dict[str, Path], tmp_path):
    config = MineHardNegativesConfig()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(tmp_path))}.*not a directory"):
        mine_hard_negatives.run(config, tmp_path / "missing", data["pairs"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="did you mean .*encoder"):
        mine_hard_negatives.run(config, data["encoder"].parent, data["pairs"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no train/part-.*did you mean"):
        mine_hard_negatives.run(config, data["encoder"], data["pairs"].parent, tmp_path / "out")
    write_shards([{"query": "q", "code": ""}], tmp_path / "empty" / "train")
    with pytest.raises(ValueError, match="0 pair.*at least 2"):
        mine_hard_negatives.run(config, data["encoder"], tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    argv = ["--encoder", str(tmp_path), "--pairs", str(data["pairs"]), "--out", str(tmp_path / "out")]
    assert mine_hard_negatives.main(argv) == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": 0}, "count must be >= 1"),
        ({"range_min": 50}, "range_min < range_max"),
        ({"relative_margin": -1.0}, "must be >= 0"),
        ({"sampling": "hardest"}, "sampling must be one of"),
        ({"candidates": "corpus"}, "candidates must be one of"),
        ({"max_train_pairs": -1}, "max_train_pairs must be >= 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_config_validation(values: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        MineHardNegativesConfig(**values).validate()
