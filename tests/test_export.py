"""The export_onnx stage, semcode.export and semcode.embed, on a tiny real encoder and real stdlib text.

One module-scoped run of the stage with shared towers and pairs (parity, MRR, latency), one through
``main`` with separate towers and no pairs; the other tests read their outputs.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from semcode.config import ConfigError, available_cores
from semcode.data.pairs import write_shards
from semcode.embed import (
    ACTIVATION_QUANTIZATION_KEY,
    DISABLED_OPTIMIZERS,
    OnnxEncoder,
    create_session,
    load_embed_fn,
    load_embed_fns,
    load_padded_tokenizer,
    quantizes_dynamically,
)
from semcode.export import (
    ExportError,
    choose_default_encoder,
    clear_debug_info,
    cosine_stats,
    export_for_kind,
    export_tower,
    int8_rejected_banner,
    latency_markdown,
    parse_shape,
    quantize_int8,
    torch_threads,
    tower_exports,
)
from semcode.models.encoder import build_encoder, encode_texts, load_encoder, resolve_checkpoint
from semcode.stages import export_onnx as stage
from semcode.tokenizer import save_tokenizer, train_bpe

# module -> split, as ingest splits by package
MODULES = {
    "textwrap.py": "train",
    "shlex.py": "train",
    "json/decoder.py": "valid",
    "json/encoder.py": "valid",
    "fnmatch.py": "valid",
    "calendar.py": "valid",
    "statistics.py": "test",
    "colorsys.py": "test",
    "posixpath.py": "test",
}
MAX_LENGTH = 128  # the tiny encoder's
# Measured on the untrained tiny encoder (random weights, hidden 64, seeds 0 and 1): int8 vs fp32 (and vs
# torch) cosine 0.99997 mean, >= 0.9999 min, on stdlib text and on random padded batches. (An int8 graph
# that dropped the padding mask measured a min of 0.64 on all-MiniLM-L6-v2.)
INT8_MIN_COSINE = 0.999
FAST = {"latency_repeats": 2, "latency_warmup": 1, "parity_texts": 48, "threads": 1}


def stdlib_rows() -> list[dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for module, split in MODULES.items():
        source = (stdlib / module).read_text(encoding="utf-8")
        lines = source.splitlines(keepends=True)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                docstring = ast.get_docstring(node) or ""
                code = "".join(lines[node.lineno - 1 : node.end_lineno])
                rows.append(
                    {"query": docstring.split("\n\n")[0], "code": code, "repo": module, "split": split}
                )
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return stdlib_rows()


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory, rows: list[dict]) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    for split in ("train", "valid", "test"):
        write_shards([r for r in rows if r["split"] == split], root / split)
    return root


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, rows: list[dict]) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    texts = [r["code"] for r in rows] + [r["query"] for r in rows]
    save_tokenizer(train_bpe(texts, vocab_size=600, min_frequency=2), out, model_max_length=MAX_LENGTH)
    return out


def save_tiny_encoder(out: Path, tokenizer_dir: Path, towers: str, seed: int = 0, dim: int = 64) -> Path:
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = build_encoder(
        "tiny",
        len(hf),
        hf.pad_token_id,
        towers=towers,
        embedding_dim=dim,
        query_prefix="query: ",
        code_prefix="code: ",
    )
    model.save(out, tokenizer_dir)
    return out


@pytest.fixture(scope="module")
def shared_encoder(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return save_tiny_encoder(tmp_path_factory.mktemp("shared") / "encoder", tokenizer_dir, "shared")


@pytest.fixture(scope="module")
def shared_export(tmp_path_factory: pytest.TempPathFactory, shared_encoder: Path, pairs_dir: Path):
    out = tmp_path_factory.mktemp("onnx_shared")
    metrics = stage.run(stage.ExportOnnxConfig(**FAST), shared_encoder, out, pairs_dir=pairs_dir)
    return out, metrics


@pytest.fixture(scope="module")
def separate_export(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path):
    root = tmp_path_factory.mktemp("separate")
    # embedding_dim != hidden size: the projection exports as a Gemm with transB, which int8 must handle
    encoder = save_tiny_encoder(root / "encoder", tokenizer_dir, "separate", seed=1, dim=48)
    out = root / "onnx"
    argv = ["--encoder", str(encoder), "--out", str(out), "--latency-shapes", "2x16"]
    argv += ["--latency-repeats", "2", "--parity-texts", "16", "--threads", "1"]
    assert stage.main(argv) == 0
    return encoder, out, json.loads((out / "metrics.json").read_text())


def random_batch(batch: int, sequence: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, vocab, size=(batch, sequence), dtype=np.int64)
    attention_mask = np.ones_like(input_ids)
    if batch > 1:  # padded rows of different lengths
        for row in range(1, batch, 2):
            attention_mask[row, int(rng.integers(1, sequence)) :] = 0
    return input_ids, attention_mask


def test_files_follow_the_bundle_contract_and_are_self_contained(shared_export) -> None:
    out, metrics = shared_export
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "encoder.int8.onnx", "encoder.onnx", "metrics.json", "tokenizer.json"]
    assert metrics["files"] == {
        "fp32": {"query": "encoder.onnx", "code": "encoder.onnx"},
        "int8": {"query": "encoder.int8.onnx", "code": "encoder.int8.onnx"},
    }
    for name in ("encoder.onnx", "encoder.int8.onnx"):
        session = create_session(out / name)  # all graph optimisations on
        inputs = {i.name: i for i in session.get_inputs()}
        (output,) = session.get_outputs()
        assert set(inputs) == {"input_ids", "attention_mask"}
        for value in inputs.values():
            assert value.type == "tensor(int64)" and value.shape == ["batch", "sequence"]
        assert output.name == "embedding" and output.type == "tensor(float)"
        assert output.shape[1] == 64 and isinstance(output.shape[0], str)
        meta = session.get_modelmeta().custom_metadata_map
        assert meta["semcode.kinds"] == "query,code" and meta["semcode.max_length"] == "128"
        assert (meta["semcode.query_prefix"], meta["semcode.code_prefix"]) == ("query: ", "code: ")
    assert metrics["sizes_mb"]["encoder.int8.onnx"] < metrics["sizes_mb"]["encoder.onnx"]
    fusions = metrics["quantization"]["ort_fusions"]["encoder.int8.onnx"]
    assert fusions["multi_head_attention"] == fusions["bias_gelu"] == 2  # one per layer


def test_exported_files_carry_no_build_machine_paths(shared_export) -> None:
    """The exporter's stack traces (node doc_string, pkg.torch.* node metadata) are cleared in both files."""
    import onnx

    out, _ = shared_export
    for name in ("encoder.onnx", "encoder.int8.onnx"):
        model = onnx.load(str(out / name))
        graphs = [model.graph, *model.functions]
        texts = [model.doc_string] + [graph.doc_string for graph in graphs]
        nodes = [node for graph in graphs for node in graph.node]
        assert nodes
        texts += [node.doc_string for node in nodes]
        assert not any(texts), name  # every doc_string empty
        values = [prop.value for node in nodes for prop in node.metadata_props]  # e.g. module scopes
        leaked = [value[:200] for value in values if ".py" in value or "site-packages" in value]
        assert not leaked, (name, leaked[:3])
        assert not [p.key for node in nodes for p in node.metadata_props if p.key.startswith("pkg.torch.")]


def test_clear_debug_info_clears_nodes_subgraphs_and_functions_only() -> None:
    import onnx
    from onnx import helper

    trace = 'File "/home/builder/src/semcode/models/encoder.py", line 12, in forward'
    inner = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], doc_string=trace)], "inner", [], [])
    branch = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner, doc_string=trace)
    relu = helper.make_node("Relu", ["x"], ["z"], doc_string=trace)
    relu.metadata_props.add(key="pkg.torch.onnx.stack_trace", value=trace)
    relu.metadata_props.add(key="namespace", value="encoder: Encoder/relu")
    graph = helper.make_graph([relu, branch], "g", [], [], doc_string=trace)
    function = onnx.FunctionProto(name="f", domain="d", doc_string=trace)
    function.node.append(helper.make_node("Relu", ["a"], ["b"], doc_string=trace))
    model = helper.make_model(graph, doc_string=trace, functions=[function])
    assert clear_debug_info(model) == 5  # Relu, If, the Identity of each branch, the function's Relu
    assert trace not in str(model) and "builder" not in str(model)
    kept = [(p.key, p.value) for p in model.graph.node[0].metadata_props]
    assert kept == [("namespace", "encoder: Encoder/relu")]  # only the exporter's pkg.torch.* entries go
    assert [n.op_type for n in model.graph.node] == ["Relu", "If"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_dynamic_batch_and_sequence_match_torch(shared_export, shared_encoder: Path, precision: str) -> None:
    out, _ = shared_export
    tower = load_encoder(shared_encoder).tower.eval()
    session = create_session(out / f"encoder{'.int8' if precision == 'int8' else ''}.onnx", threads=1)
    vocab = tower.transformer.config.vocab_size
    for batch in (1, 2, 7, 32):
        for sequence in (5, 17, 64, MAX_LENGTH):
            input_ids, attention_mask = random_batch(batch, sequence, vocab, seed=batch * 1000 + sequence)
            (got,) = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
            with torch.no_grad():
                expected = tower(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()
            assert got.shape == (batch, 64) and got.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised in the graph
            if precision == "fp32":
                assert np.abs(got - expected).max() < 1e-4, (batch, sequence)
            else:
                assert cosine_stats(got, expected)["min"] > INT8_MIN_COSINE, (batch, sequence)


def test_metrics_record_parity_mrr_and_latency(shared_export, pairs_dir: Path) -> None:
    out, metrics = shared_export
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert json.loads((out / "config.json").read_text())["config_class"] == "ExportOnnxConfig"
    parity = metrics["parity"]
    assert parity["synthetic"] is False and "valid split" in parity["source"]
    assert parity["per_kind"]["query"]["n_texts"] == parity["per_kind"]["code"]["n_texts"] == 48
    assert parity["fp32_vs_torch_max_abs_diff"] < 1e-4
    assert parity["int8_vs_fp32_cosine_min"] > INT8_MIN_COSINE
    assert parity["int8_vs_fp32_cosine_mean"] >= parity["int8_vs_fp32_cosine_min"]

    retrieval = metrics["retrieval"]
    assert retrieval["protocol"] == "full" and retrieval["n_queries"] > 20
    assert set(retrieval["mrr"]) == {"fp32", "int8"}
    assert retrieval["mrr_loss"] == pytest.approx(retrieval["mrr"]["fp32"] - retrieval["mrr"]["int8"])
    expected_default = "fp32" if retrieval["mrr_loss"] > 0.005 else "int8"
    assert metrics["default_encoder"] == expected_default
    assert metrics["default_files"] == metrics["files"][expected_default]

    latency = metrics["latency"]
    assert latency["threads"] == latency["torch_threads"] == latency["ort_intra_op_threads"] == 1
    assert set(latency["ms"]) == {"1x128", "16x128"}
    for times in latency["ms"].values():
        assert set(times) == {"torch_fp32", "onnx_fp32", "onnx_int8"} and min(times.values()) > 0
    assert latency["markdown"].startswith("| batch x seq | torch_fp32 ms")
    assert "test.full.mrr.int8" in metrics["kfp_metrics"]
    assert (metrics["towers"], metrics["max_length"], metrics["query_prefix"]) == ("shared", 128, "query: ")


def test_onnx_encoder_matches_torch_encode_texts(shared_export, shared_encoder: Path, rows) -> None:
    out, _ = shared_export
    model = load_encoder(shared_encoder)
    hf = AutoTokenizer.from_pretrained(str(shared_encoder))
    texts = [r["code"] for r in rows[:20]] + [r["query"] for r in rows[:20]] + ["", "x", "héllo ✓ 日本"]
    for kind in ("query", "code"):
        encoder = OnnxEncoder(
            out / "encoder.onnx", out / "tokenizer.json", MAX_LENGTH, model.prefix_for(kind)
        )
        ours = encoder.encode(texts)
        np.testing.assert_allclose(ours, encode_texts(model, hf, texts, kind, batch_size=7), atol=2e-5)
    assert encoder.encode([]).shape == (0, 64)
    int8 = OnnxEncoder(out / "encoder.int8.onnx", out / "tokenizer.json", MAX_LENGTH, "code: ", batch_size=5)
    assert cosine_stats(int8.encode(texts), ours)["min"] > INT8_MIN_COSINE


def test_int8_vectors_do_not_depend_on_the_batch(shared_export, rows) -> None:
    # Dynamic quantisation takes activation scales from the whole input tensor, so the int8 encoder runs
    # one text per call: a text's vector is then the same alone, beside long neighbours, or in any order.
    out, _ = shared_export
    assert quantizes_dynamically(out / "encoder.int8.onnx") and not quantizes_dynamically(
        out / "encoder.onnx"
    )
    # ...and the export says so in the files' metadata, which OnnxEncoder reads instead of the graph.
    for name, marked in (("encoder.int8.onnx", "dynamic"), ("encoder.onnx", "none")):
        metadata = create_session(out / name).get_modelmeta().custom_metadata_map
        assert metadata[ACTIVATION_QUANTIZATION_KEY] == marked and "semcode.kinds" in metadata
    texts = [r["code"] for r in rows[:12]] + ["x", "def f(): return 1"]
    int8 = OnnxEncoder(out / "encoder.int8.onnx", out / "tokenizer.json", MAX_LENGTH, "code: ", batch_size=8)
    assert int8.batch_size == 1
    together = int8.encode(texts)
    for i in (0, len(texts) - 1):
        np.testing.assert_array_equal(int8.encode([texts[i]])[0], together[i])
    np.testing.assert_array_equal(int8.encode(texts[::-1])[::-1], together)
    # Concurrent single-text callers (three threads on one session) give the vectors of one caller.
    serial = OnnxEncoder(out / "encoder.int8.onnx", out / "tokenizer.json", MAX_LENGTH, "code: ", threads=1)
    threaded = OnnxEncoder(out / "encoder.int8.onnx", out / "tokenizer.json", MAX_LENGTH, "code: ", threads=3)
    assert (serial.callers, threaded.callers) == (1, 3)
    np.testing.assert_array_equal(threaded.encode(texts), serial.encode(texts))
    np.testing.assert_array_equal(threaded.encode(texts), together)
    fp32 = OnnxEncoder(out / "encoder.onnx", out / "tokenizer.json", MAX_LENGTH, "code: ", batch_size=8)
    assert fp32.batch_size == 8  # fp32 vectors do not depend on the batch: keep batching
    forced = OnnxEncoder(
        out / "encoder.int8.onnx",
        out / "tokenizer.json",
        MAX_LENGTH,
        "code: ",
        batch_size=8,
        one_text_per_call=False,
    )
    assert forced.batch_size == 8
    assert cosine_stats(forced.encode(texts), together)["min"] > INT8_MIN_COSINE
    # ...and batched they do differ, even on the tiny encoder: what the equalities above guard against.
    assert not np.array_equal(forced.encode(texts), together)


def test_mrr_check_on_a_sample_embeds_only_the_sampled_pairs_codes(shared_export, pairs_dir: Path) -> None:
    out, _ = shared_export
    encoders = {
        (kind, precision): OnnxEncoder(out / file, out / "tokenizer.json", MAX_LENGTH, f"{kind}: ")
        for kind in ("query", "code")
        for precision, file in (("fp32", "encoder.onnx"), ("int8", "encoder.int8.onnx"))
    }
    whole = stage.measure_test_mrr(encoders, ("fp32", "int8"), pairs_dir, 0)
    sample = stage.measure_test_mrr(encoders, ("fp32", "int8"), pairs_dir, 6)
    assert sample["n_queries"] == 6 < whole["n_queries"]
    assert sample["n_candidates"] <= 6 < whole["n_candidates"]
    assert sample["mrr_loss"] == pytest.approx(sample["mrr"]["fp32"] - sample["mrr"]["int8"])


def test_a_small_repositorys_empty_splits_skip_the_mrr_check_with_a_line(
    rows: list[dict], tmp_path: Path, capsys
):
    """A test split without a query (a 4-file repository's, or files the user split) is no traceback: the
    int8 MRR check is skipped, and parity takes the test split's texts when valid has none, else synthetic."""
    for split, kept in (("train", rows), ("valid", []), ("test", rows[:5])):
        write_shards(kept, tmp_path / split)
    texts, source, synthetic = stage.parity_texts(tmp_path, 48)
    assert not synthetic and source.startswith("5 rows of the test split") and len(texts["query"]) == 5
    write_shards([], tmp_path / "test")
    assert stage.parity_texts(tmp_path, 48)[2] is True
    assert stage.measure_test_mrr({}, ("fp32", "int8"), tmp_path, 0) is None
    assert "no int8 MRR check: the test split" in capsys.readouterr().err
    assert "cosine parity only" in choose_default_encoder(None, None, 0.005)[1]


def test_quantisation_drops_only_ort_per_tensor_info_lines(shared_export, tmp_path: Path, caplog) -> None:
    # quantize_dynamic logs one root INFO line per dynamically quantised tensor; kfp.local shows them all.
    out, _ = shared_export
    with caplog.at_level(logging.INFO):
        quantize_int8(out / "encoder.onnx", tmp_path / "encoder.int8.onnx")
        logging.info("Quantization parameters for tensor:x not specified, but logged outside")
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("Quantization parameters for tensor:x not specified, but logged outside") == 1
    assert not [
        m for m in messages if m.startswith("Quantization parameters for tensor:") and "outside" not in m
    ]
    assert quantizes_dynamically(tmp_path / "encoder.int8.onnx")


def test_separate_towers_export_both_files(separate_export) -> None:
    encoder_dir, out, metrics = separate_export
    names = sorted(p.name for p in out.glob("*.onnx"))
    assert names == [
        "code_encoder.int8.onnx",
        "code_encoder.onnx",
        "query_encoder.int8.onnx",
        "query_encoder.onnx",
    ]
    assert metrics["towers"] == "separate"
    assert metrics["files"]["fp32"] == {"query": "query_encoder.onnx", "code": "code_encoder.onnx"}
    assert metrics["parity"]["synthetic"] is True and "synthetic" in metrics["parity"]["source"]
    assert metrics["retrieval"] is None and metrics["default_encoder"] == "int8"
    assert "without an MRR check" in metrics["default_encoder_reason"]
    assert metrics["parity"]["fp32_vs_torch_max_abs_diff"] < 1e-4
    assert metrics["parity"]["int8_vs_fp32_cosine_min"] > INT8_MIN_COSINE
    assert set(metrics["latency"]["ms"]) == {"2x16"} and metrics["embedding_dim"] == 48

    model = load_encoder(encoder_dir)
    hf = AutoTokenizer.from_pretrained(str(encoder_dir))
    texts = ["sort a list in place", "def f(x):\n    return x + 1\n"]
    for kind in ("query", "code"):
        onnx = OnnxEncoder(
            out / f"{kind}_encoder.onnx", out / "tokenizer.json", MAX_LENGTH, model.prefix_for(kind)
        )
        np.testing.assert_allclose(onnx.encode(texts), encode_texts(model, hf, texts, kind), atol=2e-5)
    query = OnnxEncoder(out / "query_encoder.onnx", out / "tokenizer.json", MAX_LENGTH).encode(texts)
    code = OnnxEncoder(out / "code_encoder.onnx", out / "tokenizer.json", MAX_LENGTH).encode(texts)
    assert not np.allclose(query, code)  # two towers, two functions


@pytest.mark.parametrize("which", ["bpe", "minilm"])
def test_tokenization_matches_transformers(which: str, tokenizer_dir: Path, rows) -> None:
    source = tokenizer_dir if which == "bpe" else resolve_checkpoint("minilm")
    hf = AutoTokenizer.from_pretrained(str(source))
    texts = [r["code"] for r in rows[:6]] + [
        "",
        "  Sort a LIST, quickly!",
        "héllo wörld ✓ 日本語 😀",
        "a " * 400,
    ]
    for max_length in (8, 128):
        ours = load_padded_tokenizer(Path(source) / "tokenizer.json", max_length)
        encodings = ours.encode_batch(texts)
        expected = hf(texts, padding=True, truncation=True, max_length=max_length)
        assert [e.ids for e in encodings] == expected["input_ids"]
        assert [e.attention_mask for e in encodings] == expected["attention_mask"]
    assert max(len(e.ids) for e in encodings) == 128  # truncated, special tokens included


def test_sessions_run_without_the_slow_skip_layer_norm_fusion(shared_export, tmp_path: Path) -> None:
    out, _ = shared_export
    options_file = tmp_path / "optimized.onnx"
    session = create_session(out / "encoder.int8.onnx", threads=1, spinning=False)
    assert session.get_session_options().intra_op_num_threads == 1
    # What ORT ends up running: write the optimised graph with the same settings and look at its ops.
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(options_file)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(
        str(out / "encoder.int8.onnx"),
        options,
        ["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )
    ops = {node.op_type for node in onnx.load(str(options_file)).graph.node}
    assert "MultiHeadAttention" in ops and "SkipLayerNormalization" not in ops


def test_onnx_encoder_does_not_import_torch() -> None:
    code = "import sys, semcode.embed; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"semcode.embed imported torch: {result.stderr}"


def test_bad_inputs_fail_with_clear_errors(tmp_path: Path, shared_encoder: Path, capsys) -> None:
    assert stage.main(["--encoder", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "encoder directory not found" in capsys.readouterr().err

    not_ours = tmp_path / "not_ours"
    not_ours.mkdir()
    (not_ours / "config.json").write_text("{}")
    assert stage.main(["--encoder", str(not_ours), "--out", str(tmp_path / "out")]) == 2
    assert "is not a semcode encoder: semcode_encoder.json is missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"did you mean {shared_encoder}"):  # a train-encoder output
        stage.run(stage.ExportOnnxConfig(), shared_encoder.parent, tmp_path / "out")

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "semcode_encoder.json").write_text("{}")
    with pytest.raises(ValueError, match="no tokenizer.json"):
        stage.run(stage.ExportOnnxConfig(), no_tokenizer, tmp_path / "out")

    with pytest.raises(FileNotFoundError, match="no valid/part-"):
        stage.run(stage.ExportOnnxConfig(), shared_encoder, tmp_path / "out", pairs_dir=tmp_path)
    bad_configs = (
        {"weight_type": "QInt4"},
        {"max_mrr_loss": -0.1},
        {"latency_shapes": ("16by128",)},
        {"op_types": ("",)},
        {"opset": 17},
        {"threads": -1},
    )
    for bad in bad_configs:
        with pytest.raises(ConfigError):
            stage.ExportOnnxConfig(**bad).validate()
    argv = ["--encoder", str(shared_encoder), "--out", str(tmp_path / "o"), "--opset", "9"]
    assert stage.main(argv) == 2
    assert "opset must be in" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()  # nothing written


def test_export_failure_is_an_export_error(tmp_path: Path, shared_encoder: Path) -> None:
    tower = load_encoder(shared_encoder).tower
    tower.projection = torch.nn.Linear(32, 64)  # hidden size is 64: the forward pass cannot run
    with pytest.raises(ExportError, match="exporting the encoder tower to .*broken.onnx failed"):
        export_tower(tower, tmp_path / "broken.onnx")
    assert not (tmp_path / "broken.onnx").exists()


def test_default_encoder_decision_and_banner() -> None:
    assert choose_default_encoder(0.60, 0.598, 0.005)[0] == "int8"
    choice, reason = choose_default_encoder(0.60, 0.59, 0.005)
    assert choice == "fp32" and "0.0100" in reason
    assert choose_default_encoder(0.60, 0.59, 0.02)[0] == "int8"
    assert choose_default_encoder(None, None, 0.005)[0] == "int8"
    assert choose_default_encoder(0.60, 0.60, 0.005, int8=False)[0] == "fp32"
    banner = int8_rejected_banner(reason)
    assert "WARNING" in banner and "fp32" in banner and reason in banner


def test_small_helpers() -> None:
    assert parse_shape("16x128") == (16, 128) and parse_shape(" 1 x 5 ") == (1, 5)
    for bad in ("16", "0x128", "ax1"):
        with pytest.raises(ValueError, match="BATCHxSEQUENCE"):
            parse_shape(bad)
    assert [e.fp32_name for e in tower_exports("separate")] == ["query_encoder.onnx", "code_encoder.onnx"]
    assert export_for_kind("separate", "code").int8_name == "code_encoder.int8.onnx"
    assert export_for_kind("shared", "code").fp32_name == "encoder.onnx"
    before = torch.get_num_threads()
    with torch_threads(1) as threads:
        assert threads == torch.get_num_threads() == 1
    with torch_threads(0) as threads:
        assert threads == torch.get_num_threads() == available_cores()
    assert torch.get_num_threads() == before
    assert tower_exports("shared")[0].int8_name == "encoder.int8.onnx"
    table = latency_markdown({"16x128": {"torch_fp32": 30.0, "onnx_int8": 10.0}}, baseline="torch_fp32")
    assert "| 16x128 | 30.0 | 10.0 | 3.00x |" in table
    a = np.eye(3, dtype=np.float32)
    assert cosine_stats(a, a)["min"] == pytest.approx(1.0)


def test_one_export_serves_every_max_length(
    shared_encoder: Path, rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    import semcode.export

    exported: list[Path] = []
    export_tower = semcode.export.export_tower

    def counting(tower, path):
        exported.append(Path(path).name)
        return export_tower(tower, path)

    texts = [row["code"] for row in rows[:8]]
    with torch_threads(1):
        singles = [
            load_embed_fn(str(shared_encoder), max_length=length, runtime="onnx-int8")[0]
            for length in (6, None)
        ]
        monkeypatch.setattr(semcode.export, "export_tower", counting)
        fns, dim = load_embed_fns(str(shared_encoder), [6, None], runtime="onnx-int8")
    assert exported == ["encoder.onnx"] and len(fns) == 2 and dim == singles[0](texts, "code").shape[1]
    for fn, single in zip(fns, singles, strict=True):
        np.testing.assert_array_equal(fn(texts, "code"), single(texts, "code"))
    assert not np.allclose(fns[0](texts, "code"), fns[1](texts, "code"))  # 6 tokens cut these codes short


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_export_runs_as_a_fresh_export_would_and_only_for_its_own_encoder(
    shared_export, shared_encoder: Path, tokenizer_dir: Path, rows, tmp_path: Path, precision: str
) -> None:
    out, _ = shared_export
    texts = [row["code"] for row in rows[:12]] + [row["query"] for row in rows[:12]]
    with torch_threads(1):  # the threads of the export's own checks
        fresh, fresh_dim = load_embed_fn(str(shared_encoder), runtime=f"onnx-{precision}")
        reused, reused_dim = load_embed_fn(str(shared_encoder), runtime=f"onnx-{precision}", exported=out)
        assert reused_dim == fresh_dim
        for kind in ("query", "code"):
            np.testing.assert_allclose(reused(texts, kind), fresh(texts, kind), atol=1e-6)

    other = save_tiny_encoder(tmp_path / "other", tokenizer_dir, "shared", seed=3)
    with pytest.raises(ValueError, match=f"{out} is an export of another encoder than {other}"):
        load_embed_fn(str(other), runtime=f"onnx-{precision}", exported=out)
    files = json.loads((out / "metrics.json").read_text())["files"][precision]
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / files["query"]).unlink()
    with pytest.raises(FileNotFoundError, match=f"lacks its {precision} encoder.*{files['query']}"):
        load_embed_fn(str(shared_encoder), runtime=f"onnx-{precision}", exported=broken)
