"""``semcode generate``: write a function from a docstring (or from code) with a trained decoder, or
continue the start of one (``--prefix``).

The text is embedded by the search encoder, the decoder writes code from the embedding and stops at
``</s>``, at ``--max-tokens`` or where the function ends in ``--language`` (the stop rules and parse
checks of semcode.decoding, one per language of semcode.data.languages). The language is also the
decoder's language token: it writes the languages of its training pairs (default: the one it saw most)
and refuses any other, naming the ones it knows. With ``--prefix`` TEXT is literal code (``int main()
{``, ``// Calculate the nth prime number``): it is embedded as code and the decoder continues it, the
printed function starting with it. By default it
writes the best of the decoder's saved number of candidates (train_decoder's ``rerank_candidates``: the
greedy code plus samples, the one that parses in the language whose embedding is closest to the text's
kept; when none parses, the closest one, and ``parses`` says false, and the text output says so in a
comment line above the code); ``--greedy`` is plain greedy
decoding, ``--temperature`` plain sampling with top-p. Two ways to name the models::

    semcode generate BUNDLE "docstring"                     a release bundle with decoder/; its ONNX
                                                            encoder (as search uses) embeds the text
    semcode generate DECODER --encoder ENCODER "docstring"  a train-decoder output (or its decoder/) and
                                                            an encoder directory (torch): no bundle yet

The text is embedded as a query (the docstring side) unless ``--as-code``: the decoder learned mostly
from code embeddings (reconstruction) and from a share of docstring embeddings.

A bundle is checked as ``semcode search`` checks it before anything is loaded (``verify_bundle``): every
name bundle.json gives (the decoder folder too) must lie inside the bundle, and the tokenizer, the encoders
and every file of the decoder must have the size and sha256 bundle.json lists (a decoder file it does not
list is refused too: it would be read unchecked).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from semcode import bundle as bundles
from semcode.data.languages import LANGUAGES, check_languages
from semcode.embed import bundle_embed_fn

EPILOG = """examples:
  semcode generate runs/<run-id>/bundle "Return the number of lines in a text file."
  semcode generate runs/<run-id>/bundle "Parse an ISO date." --temperature 0.8 --top-p 0.95 --num-samples 3
  semcode generate runs/<run-id>/bundle --prefix "def count_lines(path):"    # continue the code given
  semcode generate runs/<run-id>/bundle --prefix --language c "int main() {"  # a decoder trained on C
  semcode generate registry/semcode/latest --as-code "def area(r): return 3.14159 * r * r"
  semcode generate runs/decoder --encoder runs/encoder/encoder "Join two paths."   # before a bundle exists

--language takes a language the decoder was trained on (the languages of its training pairs; a tiny or
local run on the standard library writes Python only); another is refused, naming the ones it knows.
Code that does not parse in the language is printed under a comment that says so ("parses": false in
--json).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcode generate",
        description="Write code from a docstring (or from code) with a bundle's decoder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        metavar="BUNDLE",
        help="a release bundle with decoder/ (or <registry>/<name>/latest), or a decoder with --encoder",
    )
    parser.add_argument(
        "text",
        nargs="+",
        metavar="TEXT",
        help="a docstring; code with --as-code; the code's start with --prefix",
    )
    parser.add_argument(
        "--encoder",
        default=None,
        metavar="DIR",
        help="encoder directory (or 'minilm'), when BUNDLE is a decoder",
    )
    parser.add_argument("--as-code", action="store_true", help="embed TEXT as code, not as a docstring")
    parser.add_argument(
        "--prefix",
        action="store_true",
        help="prefix mode: TEXT is the start of the code (embedded as code); the decoder continues it",
    )
    parser.add_argument(
        "--language",
        default=None,
        metavar="LANG",
        help=f"the language to write, one the decoder was trained on ({', '.join(LANGUAGES)} exist; "
        "default: the decoder's most frequent)",
    )
    parser.add_argument(
        "--greedy", action="store_true", help="plain greedy decoding, no candidates to rerank"
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="write this many candidates (greedy + samples) and print the parseable one closest to the "
        "text's embedding; 1 = greedy (default: the decoder's own, saved by train-decoder)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sample at this temperature (default: 0 = greedy)"
    )
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    parser.add_argument(
        "--max-tokens", type=int, default=256, help="tokens per sample at most (default: 256)"
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help="divide the logits of tokens already written by this, 1 = off (default: the decoder's own)",
    )
    parser.add_argument("--num-samples", type=int, default=1, help="samples to write (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument(
        "--precision", choices=bundles.PRECISIONS, default=None, help="ONNX encoder (default: the bundle's)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime threads (default: 0 = all cores)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the code")
    return parser


def decoder_bundle(bundle_dir: Path) -> dict:
    """bundle.json of a bundle that has a decoder; FileNotFoundError naming the bundle otherwise."""
    from semcode.serve.searcher import check_bundle_json

    bundle = check_bundle_json(bundles.read_bundle_json(bundle_dir), str(bundle_dir))
    if not bundle.get("decoder"):
        raise FileNotFoundError(
            f"bundle {bundle_dir} has no decoder/ (bundle.json decoder is null): it was assembled without a "
            "train-decoder output; train one (semcode train-decoder) or use a bundle that has it"
        )
    return bundle


def verify_bundle(bundle_dir: Path, bundle: dict, precision: str | None) -> Path:
    """The decoder folder of a checked bundle; BundleError naming every file that differs from bundle.json
    (size or sha256), is missing, or lies in the decoder folder without being listed, and a decoder folder
    that leads out of the bundle (a symlink)."""
    from semcode import storage
    from semcode.serve.searcher import verify_files

    decoder = Path(storage.contained_join(bundle_dir, str(bundle["decoder"]), "bundle.json decoder"))
    encoders = bundle["encoders"][precision] if precision else bundle["default_files"]
    prefix = decoder.relative_to(bundle_dir).as_posix().rstrip("/") + "/"
    listed = {name for name in (bundle.get("files") or {}) if name.startswith(prefix)}
    present = {p.relative_to(bundle_dir).as_posix() for p in decoder.rglob("*") if p.is_file()}
    names = [bundles.TOKENIZER_FILE, *sorted(set(encoders.values())), *sorted(listed | present)]
    verify_files(bundle_dir, bundle, names)
    return decoder


def load_models(args: argparse.Namespace) -> tuple[Any, Any, Any, dict, dict]:
    """(decoder, its tokenizer, embed(texts, kind), a description, semcode_decoder.json) for the target."""
    from semcode.models.decoder import load_decoder, load_decoder_tokenizer
    from semcode.serve.searcher import resolve_pointer

    target = resolve_pointer(args.target)
    if target.startswith("s3://"):
        raise ValueError(f"{target}: generate reads local bundles; download it first (e.g. aws s3 sync)")
    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: expected a release bundle or a decoder directory")
    if (path / bundles.BUNDLE_JSON).is_file():
        if args.encoder:
            raise ValueError("--encoder is for a decoder directory; a bundle brings its own encoder")
        bundle = decoder_bundle(path)
        decoder_path = verify_bundle(path, bundle, args.precision)
        embed = bundle_embed_fn(path, bundle, args.precision, args.threads)
        about = {"bundle": str(path), "name": bundle["name"], "version": bundle["version"]}
    else:
        if not args.encoder:
            raise ValueError(
                f"{path} is not a release bundle (no {bundles.BUNDLE_JSON}); for a decoder directory pass "
                "the encoder it was trained with: --encoder DIR"
            )
        from semcode.embed import check_encoder_spec, load_embed_fn

        check_encoder_spec(args.encoder)
        decoder_path = path
        embed, _ = load_embed_fn(args.encoder, device="cpu")
        about = {"decoder": str(path), "encoder": args.encoder}
    decoder, meta = load_decoder(decoder_path)
    tokenizer = load_decoder_tokenizer(decoder_path)
    return decoder, tokenizer, embed, {**about, "decoder_size": meta.get("size")}, meta


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    text = " ".join(args.text).strip()
    if not text:
        parser.error("TEXT is empty")
    from semcode.serve.searcher import check_text

    try:
        check_text(text, "TEXT")
    except ValueError as error:  # undecodable bytes in argv: Python keeps them as surrogates
        print(f"semcode generate: error: {error}", file=sys.stderr)
        return 2
    temperature = 0.0 if args.greedy else args.temperature
    if args.greedy and args.temperature > 0:
        parser.error("--greedy and --temperature > 0 contradict each other")
    if temperature < 0 or not 0 < args.top_p <= 1 or (args.repetition_penalty or 1.0) <= 0:
        parser.error("need --temperature >= 0, 0 < --top-p <= 1 and --repetition-penalty > 0")
    if args.max_tokens < 1 or args.num_samples < 1:
        parser.error("--max-tokens and --num-samples must be >= 1")
    if args.num_samples > 1 and temperature == 0:
        parser.error(
            "greedy decoding writes the same code every time: pass --temperature > 0 for several samples"
        )
    if args.candidates is not None and args.candidates < 1:
        parser.error("--candidates must be >= 1")
    if (args.candidates or 1) > 1 and (args.greedy or temperature > 0):
        parser.error("--candidates reranks its own samples: drop --greedy / --temperature, or --candidates")
    if args.prefix and args.as_code:
        parser.error("--prefix embeds TEXT as code already: drop --as-code")
    language = None
    if args.language is not None:
        try:
            [language] = check_languages([args.language])
        except ValueError as error:
            parser.error(f"--language: {error}")

    import torch

    from semcode.decoding import generate_code, generate_reranked

    kind = "code" if args.as_code or args.prefix else "query"
    prompt = text if args.prefix else ""
    try:
        started = time.perf_counter()
        decoder, tokenizer, embed, about, meta = load_models(args)
        language = language or decoder.known_languages[0]
        # A language the decoder never saw: refused, naming the ones it knows, before anything is embedded.
        decoder.language_ids([language])
        embedding = embed([text], kind)  # [1, D]
        if embedding.shape[1] != decoder.embedding_dim:
            raise ValueError(
                f"the encoder embeds in {embedding.shape[1]} dimensions, the decoder expects "
                f"{decoder.embedding_dim}: they were not trained together"
            )
        load_ms = (time.perf_counter() - started) * 1000
        # The decoding the decoder was measured with in training, unless the command line says otherwise.
        saved = meta.get("generation") or {}
        penalty = args.repetition_penalty or saved.get("repetition_penalty", 1.0)
        plain = args.greedy or temperature > 0 or args.num_samples > 1
        candidates = args.candidates or (1 if plain else int(saved.get("candidates", 1)))
        top_p = args.top_p
        if candidates > 1:  # the candidates are sampled as in training's measurement
            temperature, top_p = float(saved.get("temperature", 0.5)), float(saved.get("top_p", 0.95))
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        if candidates > 1:
            samples = generate_reranked(
                decoder,
                tokenizer,
                embedding,
                lambda codes: embed(codes, "code"),
                candidates,
                args.max_tokens,
                temperature,
                top_p,
                penalty,
                language=language,
                prompt=prompt,
            )
        else:
            samples = generate_code(
                decoder,
                tokenizer,
                np.repeat(embedding, args.num_samples, axis=0),
                args.max_tokens,
                temperature,
                args.top_p,
                penalty,
                language=language,
                prompt=prompt,
            )
        took_ms = (time.perf_counter() - started) * 1000
    except (bundles.BundleError, FileNotFoundError, ValueError) as error:
        print(f"semcode generate: error: {error}", file=sys.stderr)
        return 2

    if args.json:
        answer = {
            "text": text,
            "mode": "prefix" if args.prefix else "description",
            "embedded_as": kind,
            "language": language,
            "models": about,
            "settings": {
                "temperature": temperature,
                "top_p": top_p,
                "max_tokens": args.max_tokens,
                "repetition_penalty": penalty,
                "candidates": candidates,
                "seed": args.seed,
            },
            "samples": [
                {
                    "code": s.code,
                    "tokens": s.tokens,
                    "stopped_by": s.stopped_by,
                    "parses": s.parses,  # as a function of the language
                }
                for s in samples
            ],
            "took_ms": round(took_ms, 1),
            "load_ms": round(load_ms, 1),
        }
        print(json.dumps(answer, indent=2))
        return 0
    comment = "#" if language in ("python", "ruby") else "//"
    for i, sample in enumerate(samples):
        if len(samples) > 1:
            print(
                f"{comment} sample {i + 1}/{len(samples)} ({sample.tokens} tokens, stopped by "
                f"{sample.stopped_by})"
            )
        if not sample.code:
            print(f"{comment} (the decoder wrote nothing)")
            continue
        if not sample.parses:
            print(f"{comment} semcode: this does not parse as a {language} function")
        print(sample.code, end="" if sample.code.endswith("\n") else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
