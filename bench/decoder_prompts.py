"""The decoder on prompts, in both modes of ``semcode generate``, against retrieving the nearest indexed function.

Prompts come from the test split of a ``pairs/`` artifact, up to ``--per-language`` of each language the
decoder writes (a seeded sample; ``semcode generate`` sees none of them in training):

- description mode: the function's docstring, embedded as a query (``semcode generate BUNDLE "..."``);
- prefix mode: the function's first line (after annotations: ``@Override``, ``#[test]``), embedded as code,
  which the decoder continues (``semcode generate BUNDLE --prefix "..."``).

Each prompt gets what ``semcode generate`` prints by default (best of the decoder's saved number of
candidates, reranked by the encoder), with the decoder's shipped weights (``best``) and, when the run's
newest checkpoint is another step, with that step's (``last``). Scored per mode and language:

- ``parses``: the code is one function of its language (semcode.decoding.parses);
- ``prompt_similarity``: the encoder's cosine of the prompt's embedding and the code's (code side);
- ``gold_similarity``: the cosine of the code's embedding and the test function the prompt came from.

The baseline is retrieval, what ``semcode search`` would answer: the nearest function of the same language
in the ingest corpus (``corpus/``, every indexed function, up to ``--max-corpus-per-language`` of each, a
seeded sample; the gold functions excluded, or retrieval would just return them), by the same embedding
of the prompt. Its prompt similarity is the highest any
indexed function reaches, so the decoder beats it only by writing code closer to the prompt than anything
in the index; the gold similarity is the fairer comparison. Literal prompts (``--literal
"c:int main() {"``) are generated too and printed, or refused when the decoder never saw the language::

    .venv/bin/python bench/decoder_prompts.py --decoder /tmp/h18/decoder \\
        --encoder RUN/train-encoder/encoder/encoder --onnx RUN/export-onnx/onnx \\
        --pairs /tmp/h18/ingest/pairs --corpus /tmp/h18/ingest/corpus --out /tmp/h18/prompts.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from semcode.decoding import generate_reranked, parses
from semcode.embed import load_embed_fn
from semcode.models.decoder import decoder_dir, load_decoder, load_decoder_tokenizer
from semcode.train.checkpoints import list_checkpoints, load_weights


def first_line(code: str) -> str:
    """The line a prefix prompt gives: the first one after annotations and attributes."""
    lines = [line for line in code.splitlines() if line.strip()]
    for line in lines:
        if not line.lstrip().startswith(("@", "#[")):
            return line.rstrip()
    return lines[0].rstrip()


def prompts(pairs_dir: Path, languages: tuple[str, ...], per_language: int, seed: int) -> list[dict]:
    """Up to ``per_language`` test functions of each language (distinct codes, a seeded sample)."""
    table = pq.read_table(pairs_dir / "test", columns=["query", "code", "language"]).to_pylist()
    rng = np.random.default_rng(seed)
    chosen: list[dict] = []
    for language in languages:
        rows = list({r["code"]: r for r in table if r["language"] == language and r["query"]}.values())
        for i in sorted(rng.permutation(len(rows))[:per_language]):
            chosen.append(rows[i])
    return chosen


def generate(model, tokenizer, embed, embeddings, languages, prompt_texts, candidates, max_tokens, settings):
    """``semcode generate``'s default answer for each row (best of ``candidates``), one call per row in
    prefix mode (each row continues its own prompt)."""
    torch.manual_seed(0)
    out = []
    for i, language in enumerate(languages):
        [g] = generate_reranked(
            model,
            tokenizer,
            embeddings[i : i + 1],
            lambda codes: embed(codes, "code"),
            candidates,
            max_tokens,
            settings.get("temperature", 0.5),
            settings.get("top_p", 0.95),
            settings.get("repetition_penalty", 1.2),
            language=language,
            prompt=prompt_texts[i],
        )
        out.append(g.code)
    return out


def score(codes, prompt_embeddings, gold_embeddings, languages, embed, prompt_texts) -> list[dict]:
    """Per code: parses, prompt and gold similarity, and in prefix mode the gold similarity of what was
    written after the prompt alone (``new_gold_similarity``: the prompt's own words do not count)."""
    code_embeddings = embed([c or " " for c in codes], "code")
    rests = [c[len(p) :] if p and c.startswith(p) else c for c, p in zip(codes, prompt_texts, strict=True)]
    rest_embeddings = embed([r.strip() or " " for r in rests], "code")
    return [
        {
            "language": language,
            "parses": parses(code, language),
            "prompt_similarity": float(code_embeddings[i] @ prompt_embeddings[i]) if code else -1.0,
            "gold_similarity": float(code_embeddings[i] @ gold_embeddings[i]) if code else -1.0,
            "new_gold_similarity": float(rest_embeddings[i] @ gold_embeddings[i])
            if rests[i].strip()
            else -1.0,
        }
        for i, (code, language) in enumerate(zip(codes, languages, strict=True))
    ]


def summary(rows: list[dict]) -> dict:
    by_language: dict[str, list[dict]] = {}
    for row in rows:
        by_language.setdefault(row["language"], []).append(row)

    def mean(items: list[dict], name: str) -> float:
        return round(float(np.mean([r[name] for r in items])), 3)

    names = ("parses", "prompt_similarity", "gold_similarity", "new_gold_similarity")
    return {
        "n": len(rows),
        **{name: mean(rows, name) for name in names},
        "by_language": {
            language: {"n": len(items), **{name: mean(items, name) for name in names}}
            for language, items in by_language.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decoder", required=True, help="a train-decoder output (decoder/, checkpoints/)")
    parser.add_argument("--encoder", required=True, help="the encoder it was trained against")
    parser.add_argument("--onnx", default=None, help="export_onnx's output: embed with its int8 model")
    parser.add_argument("--pairs", required=True, type=Path, help="ingest pairs/ (the test split is read)")
    parser.add_argument("--corpus", required=True, type=Path, help="ingest corpus/: the retrieval baseline")
    parser.add_argument("--per-language", type=int, default=20, help="prompts per language and mode")
    parser.add_argument(
        "--max-corpus-per-language", type=int, default=1500, help="indexed functions per language (a sample)"
    )
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--candidates", type=int, default=0, help="best of this many (0 = the decoder's own)")
    parser.add_argument(
        "--literal", action="append", default=[], metavar="LANG:CODE", help="extra prefix prompts"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    runtime = "onnx-int8" if args.onnx else "torch"
    embed, _ = load_embed_fn(args.encoder, device="cpu", runtime=runtime, exported=args.onnx)
    model, meta = load_decoder(args.decoder)
    tokenizer = load_decoder_tokenizer(args.decoder)
    settings = meta.get("generation") or {}
    candidates = args.candidates or int(settings.get("candidates", 1))
    weights = {"best": None}
    checkpoints = list_checkpoints(Path(args.decoder) / "checkpoints")
    metrics_file = Path(args.decoder) / "metrics.json"
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if checkpoints and run_metrics.get("final_model") == "best":
        weights["last"] = checkpoints[-1] / "model.safetensors"
    print(f"decoder {decoder_dir(args.decoder)}: languages {model.known_languages}, best of {candidates}")

    rows = prompts(args.pairs, model.known_languages, args.per_language, args.seed)
    languages = [r["language"] for r in rows]
    gold = embed([r["code"] for r in rows], "code")
    modes = {
        "description": ([r["query"] for r in rows], "query", ["" for _ in rows]),
        "prefix": ([first_line(r["code"]) for r in rows], "code", [first_line(r["code"]) for r in rows]),
    }

    # The retrieval baseline: the nearest corpus function of the prompt's language, the gold excluded.
    corpus = pq.read_table(args.corpus, columns=["code", "language"]).to_pylist()
    gold_codes = {r["code"] for r in rows}
    rng = np.random.default_rng(args.seed)
    kept = []
    for language in dict.fromkeys(languages):  # a seeded sample of each language's functions, no gold
        of_language = [c for c in corpus if c["language"] == language and c["code"] not in gold_codes]
        order = rng.permutation(len(of_language))[: args.max_corpus_per_language]
        kept.extend(of_language[i] for i in sorted(order))
    corpus = kept
    started = time.perf_counter()
    corpus_embeddings = embed([c["code"] for c in corpus], "code")
    print(f"embedded {len(corpus)} corpus functions in {time.perf_counter() - started:.0f}s")
    corpus_languages = np.array([c["language"] for c in corpus])
    corpus_codes = [c["code"] for c in corpus]

    results: dict = {"candidates": candidates, "prompts_per_mode": len(rows), "modes": {}}
    for mode, (texts, kind, prompt_texts) in modes.items():
        prompt_embeddings = embed(texts, kind)
        scores = prompt_embeddings @ corpus_embeddings.T  # [P, C]
        retrieved = []
        for i, row in enumerate(rows):
            allowed = corpus_languages == row["language"]
            retrieved.append(corpus_codes[int(np.argmax(np.where(allowed, scores[i], -np.inf)))])
        entry = {
            "retrieval": summary(
                score(retrieved, prompt_embeddings, gold, languages, embed, [""] * len(rows))
            )
        }
        for name, path in weights.items():
            if path is not None:
                load_weights(model, path)
            started = time.perf_counter()
            codes = generate(
                model,
                tokenizer,
                embed,
                prompt_embeddings,
                languages,
                prompt_texts,
                candidates,
                args.max_tokens,
                settings,
            )
            scored = score(codes, prompt_embeddings, gold, languages, embed, prompt_texts)
            entry[f"decoder_{name}"] = summary(scored)
            entry[f"decoder_{name}"]["seconds"] = round(time.perf_counter() - started, 1)
            entry[f"examples_{name}"] = [
                {"prompt": t, "generated": c, "retrieved": r}
                for t, c, r in list(zip(texts, codes, retrieved, strict=True))[:: max(1, len(rows) // 6)]
            ]
        if "last" in weights:
            model, _ = load_decoder(args.decoder)  # back to the shipped (best) weights
        results["modes"][mode] = entry
        print(json.dumps({mode: {k: v for k, v in entry.items() if not k.startswith("examples")}}, indent=1))

    literal = []
    for spec in args.literal:
        language, _, code = spec.partition(":")
        try:
            [g] = generate_reranked(
                model,
                tokenizer,
                embed([code], "code"),
                lambda codes: embed(codes, "code"),
                candidates,
                args.max_tokens,
                language=language,
                prompt=code,
            )
            literal.append({"language": language, "prompt": code, "generated": g.code, "parses": g.parses})
        except ValueError as error:  # a language the decoder never saw
            literal.append({"language": language, "prompt": code, "refused": str(error)})
        print(json.dumps(literal[-1], indent=1))
    results["literal"] = literal
    results["run"] = {
        k: run_metrics.get(k)
        for k in (
            "best_step",
            "steps",
            "best_valid_loss",
            "valid_loss",
            "test_loss",
            "last_test_loss",
            "final_model",
        )
    }
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
