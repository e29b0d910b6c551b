"""The code decoder and generation library on CPU, no DeepSpeed: tiny real data, a BPE trained here.

One module-scoped tiny decoder is overfit (a plain torch loop, a few seconds) on eight functions, each
decoded from its own random unit embedding. Four end with </s>; the other four go on into a second
function, so generation has to notice that the first one ended. The tests then check that the prefix
carries the information (the wrong embedding reconstructs far worse) and that generation stops where
it should.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from semcode.decoding import (
    Generation,
    corpus_bleu,
    function_end,
    generate_code,
    generate_reranked,
    generation_metrics,
    is_function,
    parses,
    pick_by_embedding,
    reconstruction_metrics,
    trim_function,
)
from semcode.models.decoder import (
    BOS_ID,
    EOS_ID,
    build_decoder,
    code_token_ids,
    load_decoder,
    load_decoder_tokenizer,
    make_batch,
)
from semcode.tokenizer import load_tokenizer, save_tokenizer, train_bpe

DIM = 24
FUNCTIONS = [
    "def add_totals(left, right):\n    return left + right\n",
    "def parse_header(line):\n    key, value = line.split(':', 1)\n    return key.strip(), value\n",
    "@cache\ndef load_palette(path):\n    with open(path) as handle:\n        return handle.read()\n",
    "def count_words(text):\n    return len(text.split())\n",
    "def merge_maps(first, second):\n    merged = dict(first)\n    merged.update(second)\n"
    "    return merged\n",
    "def is_empty(rows):\n    if not rows:\n        return True\n    return False\n",
    "def scale_vector(vector, factor):\n    return [x * factor for x in vector]\n",
    "def first_line(text):\n    for line in text.splitlines():\n        return line\n",
]
NEXT_FUNCTION = "def helper():\n    pass\n"
ENDS_WITH_EOS = 4  # the first four texts are the function alone; the others are followed by NEXT_FUNCTION


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    texts = FUNCTIONS * 5 + [NEXT_FUNCTION] * 5
    path = tmp_path_factory.mktemp("decoder_tokenizer")
    save_tokenizer(train_bpe(texts, vocab_size=400), path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def training_texts() -> list[str]:
    return [code if i < ENDS_WITH_EOS else code + NEXT_FUNCTION for i, code in enumerate(FUNCTIONS)]


@pytest.fixture(scope="module")
def embeddings() -> np.ndarray:
    vectors = np.random.default_rng(0).standard_normal((len(FUNCTIONS), DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def overfit(tokenizer, embeddings):
    """A tiny decoder trained until it writes each function from its embedding (100 full-batch steps)."""
    torch.manual_seed(0)
    model = build_decoder("tiny", tokenizer.get_vocab_size(), DIM, prefix_tokens=4)
    token_ids = code_token_ids(tokenizer, training_texts(), max_length=128)
    batch = make_batch(token_ids, embeddings, list(range(len(token_ids))))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(100):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, token_ids


def test_loss_is_on_code_tokens_only(tokenizer, embeddings):
    """Our loss = transformers' own causal-LM loss with labels -100 on the prefix, <s> and padding."""
    torch.manual_seed(1)
    model = build_decoder("tiny", tokenizer.get_vocab_size(), DIM, prefix_tokens=3).eval()
    token_ids = code_token_ids(tokenizer, FUNCTIONS[:3], max_length=128)
    batch = make_batch(token_ids, embeddings, [0, 1, 2])
    assert batch["input_ids"][0, 0] == BOS_ID and (batch["attention_mask"][0] == 0).any()  # padded
    with torch.no_grad():
        output = model(**batch)
        prefix = model.prefix_embeds(batch["embeddings"])  # [B, 3, H]
        tokens = model.lm.get_input_embeddings()(batch["input_ids"])
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        labels[:, 0] = -100  # <s> is given, not predicted
        labels = torch.cat([torch.full((3, 3), -100), labels], dim=1)  # nor is the prefix
        mask = torch.cat([torch.ones(3, 3, dtype=torch.long), batch["attention_mask"]], dim=1)
        reference = model.lm(inputs_embeds=torch.cat([prefix, tokens], 1), attention_mask=mask, labels=labels)
    assert float(output.loss) == pytest.approx(float(reference.loss), rel=1e-5)
    assert output.tokens == int(batch["attention_mask"].sum()) - 3  # every token but the three <s>


def test_code_token_ids_wrap_and_truncate(tokenizer):
    short, long = code_token_ids(tokenizer, [FUNCTIONS[0], FUNCTIONS[4] * 4], max_length=24)
    assert short[0] == BOS_ID and short[-1] == EOS_ID
    assert tokenizer.decode(short[1:-1]) == FUNCTIONS[0]  # whitespace and case kept
    assert len(long) == 24 and long[-1] != EOS_ID  # truncated: no </s>


def test_prefix_conditioning_is_used(overfit, tokenizer, embeddings):
    model, token_ids = overfit
    right = reconstruction_metrics(model, token_ids, embeddings)
    shifted = np.roll(embeddings, 1, axis=0)  # each function gets the previous one's embedding
    wrong = reconstruction_metrics(model, token_ids, shifted)
    assert right["token_accuracy"] > 0.99 and right["loss"] < 0.05, right
    # Teacher forcing hands the decoder the code after the first tokens, so only the name is at stake,
    # which still costs the wrong embedding a loss many times higher.
    assert wrong["loss"] > max(0.3, 10 * right["loss"]), (right, wrong)
    # Left to itself the decoder writes the function whose embedding it got.
    generated = generate_code(model, tokenizer, shifted, max_new_tokens=96)
    expected = np.roll(np.arange(len(FUNCTIONS)), 1)
    assert [g.code for g in generated] == [FUNCTIONS[i] for i in expected]


def test_generation_stops_at_eos_and_at_the_end_of_the_function(overfit, tokenizer, embeddings):
    model, _ = overfit
    generated = generate_code(model, tokenizer, embeddings, max_new_tokens=96)
    for i, (code, g) in enumerate(zip(FUNCTIONS, generated, strict=True)):
        assert g.code == code, (i, g)
        if i < ENDS_WITH_EOS:
            assert g.stopped_by == "eos"
        else:  # the model goes on into `def helper`; generation stops as that line starts, and trims it
            assert g.stopped_by == "function_end" and NEXT_FUNCTION not in g.code


def test_generation_stops_at_max_tokens_and_samples_reproducibly(overfit, tokenizer, embeddings):
    model, _ = overfit
    [cut] = generate_code(model, tokenizer, embeddings[:1], max_new_tokens=3)
    assert cut.stopped_by == "max_tokens" and cut.tokens == 3
    torch.manual_seed(5)
    first = generate_code(model, tokenizer, np.repeat(embeddings[:1], 3, 0), 40, temperature=1.5, top_p=0.9)
    torch.manual_seed(5)
    again = generate_code(model, tokenizer, np.repeat(embeddings[:1], 3, 0), 40, temperature=1.5, top_p=0.9)
    assert first == again
    with pytest.raises(ValueError, match="top_p"):
        generate_code(model, tokenizer, embeddings[:1], 5, temperature=1.0, top_p=0.0)


def test_pick_by_embedding_prefers_parseable_then_closest():
    similarities = np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.2], [-0.5, -0.9, -1.0]])
    parseable = np.array([[False, True, True], [False, False, False], [False, False, True]])
    # Row 0: the closest parseable (0.5, not the unparseable 0.9); row 1: none parses, the closest;
    # row 2: the only parseable one, however far.
    assert pick_by_embedding(similarities, parseable).tolist() == [2, 1, 2]
    with pytest.raises(ValueError, match="one shape"):
        pick_by_embedding(similarities, parseable[:, :2])
    with pytest.raises(ValueError, match="one shape"):
        pick_by_embedding(np.zeros((2, 0)), np.zeros((2, 0), dtype=bool))


def test_generate_reranked_keeps_the_candidate_closest_to_the_target(overfit, tokenizer, embeddings):
    model, _ = overfit
    by_code = {code: embeddings[i] for i, code in enumerate(FUNCTIONS)}
    seen: list[list[str]] = []

    def embed_codes(codes: list[str]) -> np.ndarray:
        """The training embedding for a training function, a far-off vector for anything else."""
        seen.append(codes)
        return np.stack([by_code.get(code, -embeddings[0]) for code in codes])

    greedy = generate_code(model, tokenizer, embeddings[:3], max_new_tokens=96)
    torch.manual_seed(0)
    one = generate_reranked(model, tokenizer, embeddings[:3], embed_codes, candidates=1, max_new_tokens=96)
    assert one == greedy  # one candidate: plain greedy decoding
    # Hot samples are mostly garbage; the reranker must keep the exact function (cosine 1) for each row.
    torch.manual_seed(0)
    best = generate_reranked(
        model, tokenizer, embeddings[:3], embed_codes, candidates=4, max_new_tokens=96, temperature=3.0
    )
    assert [g.code for g in best] == FUNCTIONS[:3]
    assert len(seen[-1]) <= 3 * 4  # every non-empty candidate embedded once, in one call
    with pytest.raises(ValueError, match="candidates"):
        generate_reranked(model, tokenizer, embeddings[:1], embed_codes, candidates=0)


def test_function_end_rules():
    body = "def f(x):\n    return x\n"
    assert function_end(body) is None  # nothing after it yet
    assert function_end(body + "\n\ndef g") == len(body) + 2  # the next def's first character ends it
    assert function_end(body + "  ") is None  # a blank line so far: undecided
    assert function_end(body + "x = 1\n") == len(body)
    assert function_end("@wraps(f)\ndef g():\n    pass\nclass") == len("@wraps(f)\ndef g():\n    pass\n")
    signature = "def f(\n    a,\n    b,\n) -> int:\n    return a\n"  # `) -> int:` sits at the def's level
    assert function_end(signature) is None and function_end(signature + "y") == len(signature)
    string = 'def f():\n    s = """\nleft at column 0\n"""\n    return s\n'
    assert function_end(string) is None
    indented = "    def method(self):\n        return 1\n    def other"
    assert function_end(indented) == indented.index("    def other")
    assert trim_function(body + "\n\ndef g():\n") == body


def test_parse_checks():
    """Python's parse check is is_function (ast): valid Python that starts with a function."""
    assert not is_function("x = 1\n") and not parses("x = 1\n")
    assert is_function("@cache\ndef f():\n    return 1\n") and is_function(
        "    async def f():\n        pass\n"
    )
    assert not is_function("defdef___\n")  # an identifier is not a function
    assert not parses("def f(:\n") and not is_function("")
    for code in ("def f():\n    return 1\n", "x = 1\n", "defdef___\n", "def f(:\n", ""):
        assert parses(code) == parses(code, "python") == is_function(code), code


def test_corpus_bleu():
    reference = "def add(a, b):\n    return a + b\n"
    assert corpus_bleu([reference], [reference]) == pytest.approx(1.0)
    assert corpus_bleu(["while True: pass"], [reference]) == 0.0
    partial = corpus_bleu(["def add(a, b):\n    return a - b\n"], [reference])
    assert 0.3 < partial < 1.0
    # 12 reference tokens, 8 hypothesis tokens, all n-grams match: BLEU = the brevity penalty alone
    assert corpus_bleu(["def add(a, b):"], [reference]) == pytest.approx(math.exp(1 - 12 / 8))


def test_generation_metrics_round_trip():
    corpus = np.eye(4, dtype=np.float32)
    generations = [Generation("def f():\n    pass\n", 5, "eos"), Generation("def (", 9, "max_tokens")]
    generated_embeddings = np.array([[1, 0, 0, 0], [0, 0, 1, 0.1]], dtype=np.float32)  # 2nd ranks 1st 2nd
    metrics = generation_metrics(generations, ["def f():\n    pass\n", "x"], generated_embeddings, corpus)
    assert metrics["parse_rate"] == 0.5 and metrics["round_trip_recall@1"] == 0.5
    assert metrics["round_trip_recall@10"] == 1.0 and metrics["stopped_by_eos"] == 0.5


def test_save_and_load(overfit, tokenizer_dir, embeddings, tmp_path):
    from transformers import AutoModelForCausalLM

    model, token_ids = overfit
    model.save(tmp_path / "decoder", tokenizer_dir, max_length=128)
    for name in (
        "config.json",
        "model.safetensors",
        "prefix.safetensors",
        "semcode_decoder.json",
        "tokenizer.json",
    ):
        assert (tmp_path / "decoder" / name).is_file(), name
    meta = json.loads((tmp_path / "decoder" / "semcode_decoder.json").read_text())
    assert meta["prefix_tokens"] == 4 and meta["embedding_dim"] == DIM and meta["max_length"] == 128
    loaded, _ = load_decoder(tmp_path)  # a train-decoder output holding decoder/ works too
    assert reconstruction_metrics(loaded, token_ids, embeddings) == reconstruction_metrics(
        model, token_ids, embeddings
    )
    assert (
        load_decoder_tokenizer(tmp_path / "decoder").get_vocab()
        == load_decoder_tokenizer(tmp_path).get_vocab()
    )
    lm = AutoModelForCausalLM.from_pretrained(str(tmp_path / "decoder"))  # the root is a plain checkpoint
    assert lm.config.model_type == "llama"
    with pytest.raises(FileNotFoundError, match="not a semcode decoder"):
        load_decoder(tmp_path / "nowhere")


def test_token_bias_starts_neutral_is_used_by_generation_and_saved(
    tokenizer, tokenizer_dir, embeddings, tmp_path
):
    token_ids = code_token_ids(tokenizer, FUNCTIONS, max_length=128)
    batch = make_batch(token_ids, embeddings, list(range(len(FUNCTIONS))))
    torch.manual_seed(0)
    plain = build_decoder("tiny", tokenizer.get_vocab_size(), DIM, prefix_tokens=4)
    torch.manual_seed(0)
    biased = build_decoder("tiny", tokenizer.get_vocab_size(), DIM, prefix_tokens=4, token_bias=True)
    assert plain.logit_bias(batch["embeddings"]) is None
    # Zero-initialised: the same decoder as without the head until it learns.
    assert float(biased(**batch).loss) == pytest.approx(float(plain(**batch).loss), rel=1e-6)

    # A bias towards one token: the loss sees it, and generation writes nothing else.
    favourite = tokenizer.encode("    return", add_special_tokens=False).ids[-1]
    with torch.no_grad():
        biased.token_bias.bias[favourite] = 1e4
    assert float(biased(**batch).loss) > 10 * float(plain(**batch).loss)
    [written] = generate_code(biased, tokenizer, embeddings[:1], max_new_tokens=5)
    assert written.stopped_by == "max_tokens" and written.tokens == 5
    assert written.code.split() == ["return"] * 5

    biased.save(tmp_path / "decoder", tokenizer_dir)
    meta = json.loads((tmp_path / "decoder" / "semcode_decoder.json").read_text())
    loaded, _ = load_decoder(tmp_path / "decoder")
    assert meta["token_bias"] is True and loaded.token_bias is not None
    assert torch.equal(loaded.token_bias.bias, biased.token_bias.bias)
    assert float(loaded(**batch).loss) == pytest.approx(float(biased(**batch).loss))


def test_loads_a_decoder_saved_before_the_token_bias(overfit, tokenizer_dir, tmp_path):
    """prefix.safetensors used to hold the prefix MLP's tensors under their bare names."""
    import safetensors.torch

    model, token_ids = overfit
    out = model.save(tmp_path / "decoder", tokenizer_dir)
    bare = {name: t.contiguous() for name, t in model.prefix.state_dict().items()}
    safetensors.torch.save_file(bare, str(out / "prefix.safetensors"))
    meta = json.loads((out / "semcode_decoder.json").read_text())
    del meta["token_bias"]
    (out / "semcode_decoder.json").write_text(json.dumps(meta))
    loaded, _ = load_decoder(out)
    assert loaded.token_bias is None
    for name, tensor in model.prefix.state_dict().items():
        assert torch.equal(loaded.prefix.state_dict()[name], tensor), name


def test_nucleus_within_top_k_matches_transformers_warpers():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from semcode.decoding import NucleusWithinTopK

    scores = torch.randn(4, 500, generator=torch.Generator().manual_seed(0)) * 3
    ids = torch.zeros((4, 1), dtype=torch.long)
    for temperature, top_p in ((0.5, 0.95), (1.0, 0.5), (0.3, 1.0)):
        expected = TemperatureLogitsWarper(temperature)(ids, scores.clone())
        expected = TopKLogitsWarper(64)(ids, expected)
        expected = TopPLogitsWarper(top_p)(ids, expected)
        ours = NucleusWithinTopK(temperature, top_p)(ids, scores.clone())
        kept = torch.isfinite(expected)
        assert torch.equal(torch.isfinite(ours), kept), (temperature, top_p)
        assert torch.allclose(ours[kept], expected[kept])
    # The most likely token always stays, even when it alone holds more than top_p.
    peaked = torch.tensor([[10.0, 0.0, -1.0]])
    assert torch.isfinite(NucleusWithinTopK(1.0, 0.5)(ids[:1], peaked)).tolist() == [[True, False, False]]


def test_gumbel_max_samples_the_nucleus_distribution():
    from semcode.decoding import NucleusWithinTopK

    logits = torch.tensor([[2.0, 1.0, 0.0, -3.0]])
    sampler = NucleusWithinTopK(temperature=1.0, top_p=0.9, gumbel=True)
    torch.manual_seed(0)
    draws = torch.stack([sampler(None, logits).argmax(dim=-1)[0] for _ in range(20000)])
    # Probabilities 0.662, 0.244, 0.090, 0.004: the mass before the third is 0.906 >= 0.9, so the
    # nucleus is the first two tokens, renormalised.
    kept = torch.softmax(logits[0, :2], dim=0)
    frequencies = torch.bincount(draws, minlength=4).float() / len(draws)
    assert frequencies[2:].sum() == 0
    assert torch.allclose(frequencies[:2], kept, atol=0.01)
