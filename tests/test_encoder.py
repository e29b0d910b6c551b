"""The encoder: shapes, pooling, towers, save/load, sentence-transformers parity, encode_texts."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from semcode import storage
from semcode.embed import check_encoder_spec
from semcode.models.encoder import (
    ENCODER_SIZES,
    CodeSearchEncoder,
    build_encoder,
    encode_texts,
    load_encoder,
    load_hf_tokenizer,
    load_pretrained,
    resolve_checkpoint,
)
from semcode.tokenizer import save_tokenizer, train_bpe

STDLIB_MODULES = ("textwrap", "shlex", "fnmatch", "posixpath", "argparse", "json.decoder", "string", "glob")


def stdlib_functions(limit: int = 300) -> list[str]:
    """Source of the functions in a few stdlib modules: real code, available offline."""
    functions: list[str] = []
    for name in STDLIB_MODULES:
        source = inspect.getsource(importlib.import_module(name))
        lines = source.splitlines()  # once per module: ast.get_source_segment re-splits on every call
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                functions.append(textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno])))
    return functions[:limit]


@pytest.fixture(scope="module")
def functions() -> list[str]:
    return stdlib_functions()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, functions: list[str]) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_bpe(functions, vocab_size=600, min_frequency=2), out, model_max_length=128)
    return out


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def tiny_encoder(tokenizer, towers: str = "shared", seed: int = 0, **kwargs) -> CodeSearchEncoder:
    torch.manual_seed(seed)
    return build_encoder("tiny", len(tokenizer), tokenizer.pad_token_id, towers=towers, **kwargs).eval()


def batch(tokenizer, texts: list[str], max_length: int = 128) -> dict[str, torch.Tensor]:
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def test_sizes_match_the_documented_shapes(tokenizer) -> None:
    assert set(ENCODER_SIZES) >= {"tiny", "small", "base"}
    model = tiny_encoder(tokenizer)
    config = model.tower.transformer.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 2)
    assert (config.intermediate_size, model.max_length, model.embedding_dim) == (128, 128, 64)
    assert model.towers == "shared" and model.code_tower is None
    assert config.pad_token_id == tokenizer.pad_token_id == 0
    base = ENCODER_SIZES["base"]
    assert (base["hidden_size"], base["num_hidden_layers"], base["embedding_dim"]) == (512, 8, 384)
    with pytest.raises(ValueError, match="unknown encoder size"):
        build_encoder("huge", 600, 0)
    with pytest.raises(ValueError, match="towers must be one of"):
        build_encoder("tiny", 600, 0, towers="three")


def test_outputs_are_unit_float32_vectors(tokenizer, functions: list[str]) -> None:
    model = tiny_encoder(tokenizer, embedding_dim=32)
    inputs = batch(tokenizer, functions[:5])
    with torch.no_grad():
        query = model.encode_query(inputs["input_ids"], inputs["attention_mask"])
        code = model.encode_code(inputs["input_ids"], inputs["attention_mask"])
        both = model(
            inputs["input_ids"], inputs["attention_mask"], inputs["input_ids"], inputs["attention_mask"]
        )
    assert query.shape == code.shape == (5, 32)
    assert query.dtype == torch.float32
    torch.testing.assert_close(query.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(query, code)  # shared towers: the same function
    torch.testing.assert_close(both[0], query)


def test_mean_pooling_ignores_padding(tokenizer, functions: list[str]) -> None:
    model = tiny_encoder(tokenizer)
    short = "def f(x): return x"
    alone = batch(tokenizer, [short])
    padded = batch(tokenizer, [short, functions[0]])  # padded to the long function's length
    assert padded["input_ids"].shape[1] > alone["input_ids"].shape[1]
    with torch.no_grad():
        vector_alone = model.encode_code(alone["input_ids"], alone["attention_mask"])[0]
        vector_padded = model.encode_code(padded["input_ids"], padded["attention_mask"])[0]
    torch.testing.assert_close(vector_alone, vector_padded, atol=1e-5, rtol=1e-5)


def test_separate_towers_have_distinct_parameters(tokenizer) -> None:
    shared = tiny_encoder(tokenizer, "shared")
    separate = tiny_encoder(tokenizer, "separate")
    assert separate.towers == "separate"
    assert separate.tower_for("query") is not separate.tower_for("code")
    assert shared.tower_for("query") is shared.tower_for("code")

    query_params = {p.data_ptr() for p in separate.tower.parameters()}
    code_params = {p.data_ptr() for p in separate.code_tower.parameters()}
    assert query_params.isdisjoint(code_params)
    assert sum(p.numel() for p in separate.parameters()) == 2 * sum(p.numel() for p in shared.parameters())

    inputs = batch(tokenizer, ["def f(): pass", "sort a list"])
    with torch.no_grad():
        query = separate.encode_query(inputs["input_ids"], inputs["attention_mask"])
        code = separate.encode_code(inputs["input_ids"], inputs["attention_mask"])
    assert not torch.allclose(query, code)


def test_unused_bert_pooler_is_frozen(tokenizer) -> None:
    model = tiny_encoder(tokenizer)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(".pooler." in name for name in frozen)


@pytest.mark.parametrize("towers", ["shared", "separate"])
def test_save_load_round_trip(
    tmp_path: Path, tokenizer, tokenizer_dir: Path, functions: list[str], towers
) -> None:
    model = tiny_encoder(tokenizer, towers, query_prefix="query: ", code_prefix="code: ")
    model.save(tmp_path / "encoder", tokenizer_dir)

    meta = json.loads((tmp_path / "encoder" / "semcode_encoder.json").read_text())
    assert meta["towers"] == towers and meta["embedding_dim"] == 64 and meta["max_length"] == 128
    assert (meta["query_prefix"], meta["code_prefix"], meta["size"]) == ("query: ", "code: ", "tiny")
    tower_dirs = (
        [tmp_path / "encoder"]
        if towers == "shared"
        else [tmp_path / "encoder" / k for k in ("query", "code")]
    )
    for tower_dir in tower_dirs:
        for name in (
            "model.safetensors",
            "config.json",
            "modules.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
            "2_Dense/config.json",
            "2_Dense/model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ):
            assert (tower_dir / name).is_file(), name
    # The tokenizer loads from the top directory whatever the layout.
    assert (
        load_hf_tokenizer(tmp_path / "encoder")("def f(): pass")["input_ids"]
        == tokenizer("def f(): pass")["input_ids"]
    )

    loaded = load_encoder(tmp_path / "encoder")
    assert (loaded.towers, loaded.max_length, loaded.query_prefix, loaded.code_prefix) == (
        towers,
        128,
        "query: ",
        "code: ",
    )
    for kind in ("query", "code"):
        np.testing.assert_allclose(
            encode_texts(loaded, tokenizer, functions[:8], kind),
            encode_texts(model, tokenizer, functions[:8], kind),
            atol=1e-6,
        )


def test_sentence_transformers_parity_from_scratch(
    tmp_path: Path, tokenizer, tokenizer_dir, functions
) -> None:
    model = tiny_encoder(tokenizer, embedding_dim=48, query_prefix="search: ")
    model.save(tmp_path / "encoder", tokenizer_dir)
    texts = functions[:16] + ["", "x", "reverse a linked list"]

    st_model = SentenceTransformer(str(tmp_path / "encoder"), device="cpu")
    assert st_model.max_seq_length == 128
    ours_query = encode_texts(model, tokenizer, texts, "query", batch_size=5)
    ours_code = encode_texts(model, tokenizer, texts, "code", batch_size=5)
    st_query = st_model.encode_query(texts, batch_size=5, convert_to_numpy=True)
    st_code = st_model.encode_document(texts, batch_size=5, convert_to_numpy=True)

    assert ours_query.shape == st_query.shape == (len(texts), 48)
    assert (ours_query * st_query).sum(axis=1).min() >= 0.999
    assert (ours_code * st_code).sum(axis=1).min() >= 0.999
    assert not np.allclose(ours_query, ours_code)  # the query prefix is applied on both sides


def test_sentence_transformers_parity_separate_towers(
    tmp_path: Path, tokenizer, tokenizer_dir, functions
) -> None:
    model = tiny_encoder(tokenizer, "separate")
    model.save(tmp_path / "encoder", tokenizer_dir)
    for kind in ("query", "code"):
        st_vectors = SentenceTransformer(str(tmp_path / "encoder" / kind), device="cpu").encode(functions[:6])
        ours = encode_texts(model, tokenizer, functions[:6], kind)
        assert (ours * st_vectors).sum(axis=1).min() >= 0.999


@pytest.fixture(scope="module")
def minilm_reference(functions: list[str]) -> tuple[list[str], np.ndarray]:
    """all-MiniLM-L6-v2 as sentence-transformers itself runs it."""
    texts = functions[:12] + ["how to split a shell command line", "match a file name against a pattern"]
    original = SentenceTransformer(str(resolve_checkpoint("minilm")), device="cpu")
    return texts, original.encode(texts, convert_to_numpy=True)


def test_minilm_identity_init_reproduces_the_checkpoint(tmp_path: Path, minilm_reference) -> None:
    texts, reference = minilm_reference
    model = load_pretrained("minilm")
    tokenizer = load_hf_tokenizer("minilm")
    assert (model.embedding_dim, model.max_length, model.source) == (384, 256, "minilm")
    torch.testing.assert_close(model.tower.projection.weight, torch.eye(384))

    ours = encode_texts(model, tokenizer, texts, "query", batch_size=4)
    assert (ours * reference).sum(axis=1).min() >= 0.999
    np.testing.assert_allclose(ours, reference, atol=1e-5)

    model.save(tmp_path / "encoder", resolve_checkpoint("minilm"))
    saved = SentenceTransformer(str(tmp_path / "encoder"), device="cpu").encode(texts, convert_to_numpy=True)
    assert (saved * reference).sum(axis=1).min() >= 0.999
    # A continuation (a hard-negative round starts from the saved folder) keeps the hub model it descends
    # from, and so does the continuation of a continuation.
    again = load_pretrained(tmp_path / "encoder")
    assert (again.source, again.base) == (str(tmp_path / "encoder"), "minilm")
    again.save(tmp_path / "round-2", resolve_checkpoint("minilm"))
    assert load_pretrained(tmp_path / "round-2").base == "minilm"


def test_minilm_with_another_dimension_gets_a_new_projection() -> None:
    model = load_pretrained("minilm", towers="separate", embedding_dim=128)
    assert model.embedding_dim == 128 and model.towers == "separate"
    assert model.tower.projection.weight.shape == (128, 384)


def test_continue_from_a_saved_encoder(tmp_path: Path, tokenizer, tokenizer_dir, functions) -> None:
    model = tiny_encoder(tokenizer, code_prefix="# code\n")
    model.save(tmp_path / "encoder", tokenizer_dir)
    expected = encode_texts(model, tokenizer, functions[:4], "code")

    again = load_pretrained(tmp_path / "encoder")
    np.testing.assert_allclose(encode_texts(again, tokenizer, functions[:4], "code"), expected, atol=1e-6)
    assert again.size == "tiny" and again.code_prefix == "# code\n"
    assert again.base is None  # trained from scratch: no published checkpoint behind it

    split = load_pretrained(tmp_path / "encoder", towers="separate")  # shared -> separate: copies
    assert split.towers == "separate"
    np.testing.assert_allclose(encode_texts(split, tokenizer, functions[:4], "code"), expected, atol=1e-6)
    with pytest.raises(ValueError, match="embedding_dim"):
        load_pretrained(tmp_path / "encoder", embedding_dim=32)
    tiny_encoder(tokenizer, "separate").save(tmp_path / "separate", tokenizer_dir)
    with pytest.raises(ValueError, match="separate towers"):
        load_pretrained(tmp_path / "separate", towers="shared")
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_pretrained(tmp_path / "missing")


def test_an_incomplete_or_truncated_encoder_is_named_before_loading(
    tmp_path: Path, tokenizer, tokenizer_dir: Path
) -> None:
    tiny_encoder(tokenizer).save(tmp_path / "encoder", tokenizer_dir)
    check_encoder_spec(str(tmp_path / "encoder"))  # complete: no error
    weights = tmp_path / "encoder" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(ValueError, match=r"init_from .*model\.safetensors: unreadable weights, truncated"):
        check_encoder_spec(str(tmp_path / "encoder"), "init_from")
    weights.unlink()
    (tmp_path / "encoder" / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks model\.safetensors, 2_Dense/model\.safetensors"):
        check_encoder_spec(str(tmp_path / "encoder"))
    (tmp_path / "encoder" / "semcode_encoder.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"semcode_encoder\.json: not a JSON object"):
        check_encoder_spec(str(tmp_path / "encoder"))


def test_load_pretrained_from_s3(s3_env: str, tmp_path: Path, tokenizer, tokenizer_dir, functions) -> None:
    model = tiny_encoder(tokenizer)
    model.save(tmp_path / "encoder", tokenizer_dir)
    storage.copy_tree(tmp_path / "encoder", f"{s3_env}/runs/1/encoder")

    loaded = load_pretrained(f"{s3_env}/runs/1/encoder")
    assert loaded.source == f"{s3_env}/runs/1/encoder"
    np.testing.assert_allclose(
        encode_texts(loaded, tokenizer, functions[:4], "query"),
        encode_texts(model, tokenizer, functions[:4], "query"),
    )
    local = resolve_checkpoint(f"{s3_env}/runs/1/encoder", tmp_path / "download")
    assert (local / "semcode_encoder.json").is_file()


def test_encode_texts_restores_input_order(tokenizer, functions: list[str]) -> None:
    model = tiny_encoder(tokenizer)
    texts = [functions[3], "short", functions[10][:40], "", functions[0], "a b c"]
    one_by_one = np.concatenate([encode_texts(model, tokenizer, [t], "code") for t in texts])
    batched = encode_texts(model, tokenizer, texts, "code", batch_size=4)
    assert batched.dtype == np.float32 and batched.shape == (6, 64)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert encode_texts(model, tokenizer, [], "query").shape == (0, 64)


def test_encode_texts_rejects_bad_arguments_and_keeps_train_mode(tokenizer) -> None:
    model = tiny_encoder(tokenizer).train()
    with pytest.raises(ValueError, match="kind must be one of"):
        encode_texts(model, tokenizer, ["x"], "docstring")
    with pytest.raises(ValueError, match="batch_size"):
        encode_texts(model, tokenizer, ["x"], "code", batch_size=0)
    with pytest.raises(ValueError, match=r"max_length must be in \[2, 128\]"):
        encode_texts(model, tokenizer, ["x"], "code", max_length=129)  # beyond the position table
    first = encode_texts(model, tokenizer, ["def f(): pass"], "code")
    assert model.training  # restored after encoding
    np.testing.assert_array_equal(
        first, encode_texts(model, tokenizer, ["def f(): pass"], "code")
    )  # no dropout


def test_bf16_module_gives_float32_outputs_and_saves_float32(
    tmp_path: Path, tokenizer, tokenizer_dir
) -> None:
    # DeepSpeed's bf16 mode runs the module in bfloat16; the loss and the saved artifact stay float32.
    model = tiny_encoder(tokenizer).to(torch.bfloat16)
    inputs = batch(tokenizer, ["def f(): pass", "reverse a list"])
    with torch.no_grad():
        vectors = model.encode_query(inputs["input_ids"], inputs["attention_mask"])
    assert vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(2))

    model.save(tmp_path / "encoder", tokenizer_dir)
    loaded = load_encoder(tmp_path / "encoder")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert next(model.parameters()).dtype == torch.bfloat16  # saving left the live model alone
