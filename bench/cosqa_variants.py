"""The encoder variants of bench/RESULTS.md "CoSQA: what was tried": docstrings put back, weight averaging.

    # pairs whose train split has the docstring (the query text) back in 50% of the codes
    .venv/bin/python bench/cosqa_variants.py docstrings --pairs runs/<run>/ingest/pairs --out /tmp/docx/pairs --share 0.5
    # WiSE-FT: alpha x the fine-tuned weights + (1 - alpha) x all-MiniLM-L6-v2's
    .venv/bin/python bench/cosqa_variants.py interpolate --encoder runs/<run>/.../encoder --out /tmp/wise/a0.5 --alpha 0.5

Then train (docstrings) with `semcode train-encoder --pairs <out> --init-from minilm ...` and score each
encoder with `semcode evaluate --suites cosqa --suites test --protocols full --no-bm25 --runtime onnx-int8`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np


def docstrings(pairs: Path, out: Path, share: float, seed: int) -> None:
    from semcode.data.pairs import read_split, write_shards
    from semcode.train.augment import code_with_docstring

    for split in ("valid", "test"):
        shutil.copytree(pairs / split, out / split)
    rows = read_split(pairs, "train").to_pylist()
    rng = np.random.default_rng(seed)
    changed = 0
    for row in rows:
        if rng.random() < share and (code := code_with_docstring(row["code"], row["query"])) is not None:
            row["code"] = code
            changed += 1
    write_shards(rows, out / "train")
    print(f"{changed}/{len(rows)} train codes got their docstring back -> {out}")


def interpolate(encoder: str, out: Path, alpha: float) -> None:
    from semcode.models.encoder import load_hf_tokenizer, load_pretrained

    tuned = load_pretrained(encoder)
    base = load_pretrained("minilm", max_length=tuned.max_length)
    tuned_state, base_state = tuned.state_dict(), base.state_dict()
    if tuned_state.keys() != base_state.keys():
        raise SystemExit(f"{encoder} is not a fine-tuned all-MiniLM-L6-v2: its weights differ in names")
    tuned.load_state_dict(
        {
            name: alpha * value + (1 - alpha) * base_state[name] if value.is_floating_point() else value
            for name, value in tuned_state.items()
        }
    )
    tuned.save(out, load_hf_tokenizer(encoder))
    print(f"{alpha} x {encoder} + {1 - alpha:g} x minilm -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    put_back = commands.add_parser(
        "docstrings", help="pairs with the docstring back in a share of train codes"
    )
    put_back.add_argument("--pairs", type=Path, required=True)
    put_back.add_argument("--out", type=Path, required=True)
    put_back.add_argument("--share", type=float, default=0.5)
    put_back.add_argument("--seed", type=int, default=0)
    average = commands.add_parser("interpolate", help="WiSE-FT weight average with all-MiniLM-L6-v2")
    average.add_argument("--encoder", required=True)
    average.add_argument("--out", type=Path, required=True)
    average.add_argument("--alpha", type=float, required=True, help="weight of the fine-tuned encoder")
    args = parser.parse_args()
    if args.command == "docstrings":
        docstrings(args.pairs, args.out, args.share, args.seed)
    else:
        interpolate(args.encoder, args.out, args.alpha)


if __name__ == "__main__":
    main()
