"""``semcode generate`` on a tiny real bundle whose decoder the train-decoder stage trained for a few steps.

The decoder is barely trained, so these tests check the wiring (bundle -> ONNX encoder -> decoder ->
code, the flags, the errors), not the code it writes; tests/test_decoder.py checks generation itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_fixture import TinyRun, assemble_tiny_bundle, cached_tiny_run, make_tiny_decoder

from semcode.serve import generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def decoder_run(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_decoder(tiny_run, tmp_path_factory.mktemp("decoder") / "train_decoder")


@pytest.fixture(scope="module")
def bundle(tiny_run: TinyRun, decoder_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_tiny_bundle(
        tiny_run, tmp_path_factory.mktemp("gen_bundle") / "bundle", decoder_dir=decoder_run
    )


def run_json(capsys, *argv: str) -> dict:
    assert generate.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bundle_carries_the_decoder_and_its_metrics(bundle: Path):
    bundle_json = json.loads((bundle / "bundle.json").read_text())
    assert bundle_json["decoder"] == "decoder"
    for name in ("model.safetensors", "prefix.safetensors", "semcode_decoder.json", "tokenizer.json"):
        assert (bundle / "decoder" / name).is_file(), name
    assert "parse_rate" in json.loads((bundle / "metrics.json").read_text())["train_decoder"]


def test_generate_from_a_bundle(bundle: Path, capsys):
    answer = run_json(
        capsys, str(bundle), "Return", "the", "sum", "of", "two", "numbers.", "--max-tokens", "6"
    )
    assert answer["text"] == "Return the sum of two numbers." and answer["embedded_as"] == "query"
    assert answer["models"]["bundle"] == str(bundle)
    assert answer["settings"]["repetition_penalty"] == 1.2  # the decoder's own, from training
    assert answer["settings"]["candidates"] == 2  # best of the decoder's saved rerank_candidates
    [sample] = answer["samples"]
    assert sample["tokens"] <= 6 and sample["stopped_by"] in ("eos", "function_end", "max_tokens")
    assert isinstance(sample["code"], str) and isinstance(sample["parses"], bool)
    as_code = run_json(
        capsys, str(bundle), "--as-code", "def add(a, b):\n    return a + b\n", "--max-tokens", "4"
    )
    assert as_code["embedded_as"] == "code"
    plain = run_json(capsys, str(bundle), "Open a file.", "--repetition-penalty", "1", "--max-tokens", "3")
    assert plain["settings"]["repetition_penalty"] == 1.0
    greedy = run_json(capsys, str(bundle), "Open a file.", "--greedy", "--max-tokens", "3")
    assert greedy["settings"]["candidates"] == 1 and greedy["settings"]["temperature"] == 0.0
    more = run_json(capsys, str(bundle), "Open a file.", "--candidates", "4", "--max-tokens", "3")
    assert more["settings"]["candidates"] == 4 and len(more["samples"]) == 1
    assert generate.main([str(bundle), "Join two paths.", "--max-tokens", "3", "--precision", "fp32"]) == 0


def test_sampling_is_seeded(bundle: Path, capsys):
    flags = [str(bundle), "Open a file.", "--temperature", "1.5", "--top-p", "0.9", "--max-tokens", "8"]
    first = run_json(capsys, *flags, "--num-samples", "3", "--seed", "1")
    again = run_json(capsys, *flags, "--num-samples", "3", "--seed", "1")
    other = run_json(capsys, *flags, "--num-samples", "3", "--seed", "2")
    assert len(first["samples"]) == 3 and first["samples"] == again["samples"]
    assert [s["code"] for s in other["samples"]] != [s["code"] for s in first["samples"]]
    # Plain text: one block per sample.
    assert generate.main([*flags, "--num-samples", "2"]) == 0
    assert capsys.readouterr().out.count("# sample ") == 2


def test_generate_in_a_language_the_decoder_knows(bundle: Path, capsys):
    """The tiny run's pairs are Python: Python is written (the default), Go is refused by name.
    tests/stages/test_train_decoder.py generates in Go with a decoder trained on it."""
    answer = run_json(capsys, str(bundle), "Open a file.", "--max-tokens", "3", "--language", "Python")
    assert answer["language"] == "python"  # names are case-insensitive
    assert run_json(capsys, str(bundle), "Open a file.", "--max-tokens", "3")["language"] == "python"
    assert generate.main([str(bundle), "Reverse a slice in place.", "--language", "go"]) == 2
    assert "the decoder was not trained on go: it writes python" in capsys.readouterr().err


def test_generate_from_a_decoder_and_an_encoder(tiny_run: TinyRun, decoder_run: Path, capsys):
    answer = run_json(
        capsys, str(decoder_run), "--encoder", str(tiny_run.encoder), "Sort a list.", "--max-tokens", "5"
    )
    assert answer["models"]["decoder"] == str(decoder_run) and len(answer["samples"]) == 1


def test_clear_errors(tiny_run: TinyRun, decoder_run: Path, tmp_path: Path, capsys):
    no_decoder = assemble_tiny_bundle(tiny_run, tmp_path / "plain")
    assert generate.main([str(no_decoder), "Sort a list."]) == 2
    assert "has no decoder/" in capsys.readouterr().err
    assert generate.main([str(decoder_run), "Sort a list."]) == 2  # a decoder needs --encoder
    assert "--encoder" in capsys.readouterr().err
    assert generate.main([str(tmp_path / "nowhere"), "Sort a list."]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # greedy decoding would write the same sample twice
        generate.main([str(decoder_run), "Sort a list.", "--num-samples", "2"])
    with pytest.raises(SystemExit):
        generate.main([str(decoder_run), "Sort a list.", "--greedy", "--temperature", "0.7"])
    with pytest.raises(SystemExit):  # the candidates are reranked samples of their own
        generate.main([str(decoder_run), "Sort a list.", "--candidates", "3", "--temperature", "0.7"])
    with pytest.raises(SystemExit):
        generate.main([str(decoder_run), "Sort a list.", "--candidates", "0"])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # refused before any model loads: the bundle does not even exist
        generate.main([str(tmp_path / "nowhere"), "Sort a list.", "--language", "cobol"])
    error = capsys.readouterr().err
    assert "unknown language 'cobol'; supported: python, go, java, javascript" in error


def test_a_tampered_bundle_is_refused_as_search_refuses_it(bundle: Path, tmp_path: Path, capsys):
    """A changed decoder file, an unlisted one, and a decoder folder outside the bundle (issue 31)."""
    import shutil

    changed = Path(shutil.copytree(bundle, tmp_path / "changed"))
    config = changed / "decoder" / "config.json"
    config.write_text(config.read_text().replace("{", "{ ", 1))
    assert generate.main([str(changed), "Sort a list."]) == 2
    assert "decoder/config.json: size or sha256 does not match" in capsys.readouterr().err

    extra = Path(shutil.copytree(bundle, tmp_path / "extra"))
    (extra / "decoder" / "planted.bin").write_bytes(b"x")
    assert generate.main([str(extra), "Sort a list."]) == 2
    assert "decoder/planted.bin is not listed in bundle.json files" in capsys.readouterr().err

    outside = Path(shutil.copytree(bundle, tmp_path / "outside"))
    meta = json.loads((outside / "bundle.json").read_text())
    meta["decoder"] = str(tmp_path / "elsewhere")
    (outside / "bundle.json").write_text(json.dumps(meta))
    shutil.copytree(bundle / "decoder", tmp_path / "elsewhere")
    assert generate.main([str(outside), "Sort a list."]) == 2
    err = capsys.readouterr().err
    assert "bundle.json decoder" in err and "not a relative name" in err and "Traceback" not in err

    linked = Path(shutil.copytree(bundle, tmp_path / "linked"))
    shutil.rmtree(linked / "decoder")
    (linked / "decoder").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert generate.main([str(linked), "Sort a list."]) == 2
    assert "resolves outside" in capsys.readouterr().err
