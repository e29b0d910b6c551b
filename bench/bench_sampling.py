"""Sampling speed of a trained decoder: semcode's NucleusWithinTopK + Gumbel-max vs transformers' own
temperature/top-p sampling (full-vocabulary sort + multinomial), same decoder, embeddings and stopping rules, in one run.

    .venv/bin/python bench/bench_sampling.py --decoder runs/<run>/artifacts/*/train-decoder/decoder/decoder

Random unit embeddings stand in for the encoder's (speed only); both paths sample 64 codes at
temperature 0.5, top-p 0.95, one CPU thread (as generate_code runs), ``--rounds`` alternating rounds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from semcode.decoding import AddLogitBias, StopAtFunctionEnd, generate_code
from semcode.models.decoder import BOS_ID, EOS_ID, PAD_ID, load_decoder, load_decoder_tokenizer


def transformers_sampling(model, tokenizer, embeddings: np.ndarray, max_new_tokens: int) -> None:
    """transformers' do_sample path with its temperature and top-p warpers (what generate_code used before)."""
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=0.5,
        top_p=0.95,
        top_k=0,
        repetition_penalty=1.2,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
    )
    with torch.no_grad():
        for start in range(0, len(embeddings), 32):
            batch = torch.from_numpy(embeddings[start : start + 32])
            prefix = model.prefix_embeds(batch)
            bos = model.lm.get_input_embeddings()(torch.full((len(batch), 1), BOS_ID))
            inputs = torch.cat([prefix, bos], dim=1)
            bias = model.logit_bias(batch)
            model.lm.generate(
                inputs_embeds=inputs,
                attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([StopAtFunctionEnd(tokenizer)]),
                logits_processor=LogitsProcessorList([AddLogitBias(bias)] if bias is not None else []),
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decoder", required=True)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    model, _ = load_decoder(args.decoder)
    tokenizer = load_decoder_tokenizer(args.decoder)
    vectors = np.random.default_rng(0).standard_normal((args.samples, model.embedding_dim)).astype(np.float32)
    embeddings = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    torch.set_num_threads(1)
    seconds: dict[str, list[float]] = {"transformers": [], "semcode": []}
    for _ in range(args.rounds):
        torch.manual_seed(0)
        started = time.perf_counter()
        transformers_sampling(model, tokenizer, embeddings, args.max_tokens)
        seconds["transformers"].append(time.perf_counter() - started)
        torch.manual_seed(0)
        started = time.perf_counter()
        generate_code(model, tokenizer, embeddings, args.max_tokens, 0.5, 0.95, 1.2)
        seconds["semcode"].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in seconds.items()}
    for name, value in best.items():
        print(f"{name}: best of {args.rounds} {value:.2f} s for {args.samples} samples")
    print(f"speed-up: {best['transformers'] / best['semcode']:.2f}x")


if __name__ == "__main__":
    main()
