"""The bundle's vocabulary (semcode.contract): the ONNX naming rule, and that the modules which build what
it names agree with it (the encoder and decoder sizes, the runtimes the stages accept)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from semcode import contract


def test_onnx_files_follow_the_bundle_contract() -> None:
    assert contract.onnx_files("shared", "fp32") == {"query": "encoder.onnx", "code": "encoder.onnx"}
    assert contract.onnx_files("shared", "int8") == {
        "query": "encoder.int8.onnx",
        "code": "encoder.int8.onnx",
    }
    assert contract.onnx_files("separate", "int8") == {
        "query": "query_encoder.int8.onnx",
        "code": "code_encoder.int8.onnx",
    }


@pytest.mark.parametrize(("towers", "precision"), [("twin", "fp32"), ("shared", "fp16")])
def test_unknown_towers_or_precision_name_the_choices(towers: str, precision: str) -> None:
    with pytest.raises(ValueError, match=r"one of \("):
        contract.onnx_files(towers, precision)


def test_the_size_names_are_the_models_sizes() -> None:
    from semcode.models.decoder import DECODER_SIZES
    from semcode.models.encoder import ENCODER_SIZES

    assert tuple(ENCODER_SIZES) == contract.ENCODER_SIZE_NAMES
    assert tuple(DECODER_SIZES) == contract.DECODER_SIZE_NAMES


def test_the_bundle_reads_its_names_from_the_contract() -> None:
    from semcode import bundle

    assert bundle.encoder_files("separate")["fp32"] == contract.onnx_files("separate", "fp32")
    assert bundle.TOKENIZER_FILE is contract.TOKENIZER_FILE


def test_the_contract_imports_no_heavy_library() -> None:
    code = (
        "import sys, semcode.contract, semcode.config, semcode.embed; "
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'kfp') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
