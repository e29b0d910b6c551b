"""semcode index: an index-only bundle of any code with an encoder that exists (a local bundle, a registry
version on S3, the zero-shot start), kept fresh by --update, on a tiny repository of undocumented code."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from bundle_fixture import assemble_tiny_bundle, cached_tiny_run, files_naming, machine_paths
from fastapi.testclient import TestClient

from semcode import bundle as bundles
from semcode import config as cfg
from semcode import storage
from semcode.contract import INDEX_FILE, META_FILE
from semcode.index import load_index
from semcode.index_bundle import SOURCE_FILES
from semcode.pipeline import local
from semcode.serve import generate
from semcode.serve.app import ServeConfig, bundle_loader, create_app
from semcode.serve.searcher import Searcher
from semcode.stages import index as stage
from semcode.stages import ingest, publish

COMMIT = "3f2c1e0b9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
REPO = {
    "pkg/geometry.py": (
        "import math\n\n\ndef circle_area(radius):\n    return math.pi * radius * radius\n\n\n"
        "def distance(ax, ay, bx, by):\n    dx = bx - ax\n    dy = by - ay\n    return math.sqrt(dx * dx + dy * dy)\n"
    ),
    "pkg/textutil.py": (
        "def slugify(title):\n    words = title.lower().split()\n    return '-'.join(w for w in words if w.isalnum())\n\n\n"
        "def count_vowels(text):\n    return sum(1 for ch in text.lower() if ch in 'aeiou')\n"
    ),
    "pkg/keep_gen.py": "def kept_although_generated_by_name(x):\n    return x\n",
    "pkg/scratch_gen.py": "def scratch_only(x):\n    return x\n",
    "build/lib/copy.py": "def built_copy(x):\n    return x\n",
    "vendor/dep/dep.py": "def vendored_helper(x):\n    return x\n",
    "web/app.min.js": "function minified(a){return a+1}\n",
    "cmd/main.go": (
        "package main\n\nfunc ReverseString(s string) string {\n\trunes := []rune(s)\n"
        "\tfor i, j := 0, len(runes)-1; i < j; i, j = i+1, j-1 {\n\t\trunes[i], runes[j] = runes[j], runes[i]\n"
        "\t}\n\treturn string(runes)\n}\n"
    ),
    ".gitignore": "# build output and scratch files\nbuild/\n*_gen.py\n!keep_gen.py\n",
    ".git/HEAD": "ref: refs/heads/main\n",
    ".git/refs/heads/main": f"{COMMIT}\n",
}
INDEXED = {
    "circle_area",
    "distance",
    "slugify",
    "count_vowels",
    "kept_although_generated_by_name",
    "ReverseString",
}


def make_repo(root: Path) -> Path:
    for name, text in REPO.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def encoder_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny release bundle (a seeded, untrained 2-layer encoder: fast, its vectors are what is tested)."""
    run = cached_tiny_run(tmp_path_factory)
    return assemble_tiny_bundle(run, tmp_path_factory.mktemp("encoder") / "bundle")


def vectors_by_name(bundle_dir: Path) -> dict[str, np.ndarray]:
    names = pq.read_table(bundle_dir / META_FILE, columns=["func_name"])["func_name"].to_pylist()
    index = load_index(bundle_dir / INDEX_FILE)
    return dict(zip(names, index.reconstruct_n(0, index.ntotal), strict=True))


def test_index_with_a_local_bundle_makes_a_release_bundle_of_undocumented_code(
    encoder_bundle: Path, tmp_path: Path
):
    repo = make_repo(tmp_path / "myrepo")
    out = tmp_path / "out"
    bundle = stage.run(
        cfg.from_dict(stage.IndexConfig, {"recall_queries": 5}), str(encoder_bundle), [f"dir:{repo}"], out
    )

    assert bundles.validate_bundle(out)["index_ntotal"] == len(INDEXED)
    assert bundle["decoder"] is None and bundle["name"] == "myrepo-index"
    names = set(pq.read_table(out / META_FILE)["func_name"].to_pylist())
    assert names == INDEXED  # .gitignore (folder, pattern, negation), vendored and minified files left out
    source = bundle["source"]
    encoder = json.loads((encoder_bundle / "bundle.json").read_text())
    assert source["encoder"]["name"] == encoder["name"] and source["encoder"]["version"] == encoder["version"]
    assert source["encoder"]["digest"].startswith("sha256:")
    assert source["encoder"]["spec"].endswith("/bundle")  # the spec given, no folder of this machine in it
    assert files_naming(out, machine_paths(tmp_path) + machine_paths(encoder_bundle.parent)) == []
    for name in ("tokenizer.json", "encoder.int8.onnx", "encoder.onnx", "encoder/semcode_encoder.json"):
        assert bundle["files"][name]["sha256"] == encoder["files"][name]["sha256"], name
    (record,) = source["sources"]
    # relative to the bundle folder, which --update reads them from (bundled_spec)
    assert record["spec"] == "dir:../myrepo" and record["root"] == "../myrepo" and record["commit"] == COMMIT
    assert record["definitions"] == len(INDEXED) and record["with_doc"] == 0
    assert record["files"] == 6 and record["skipped"] == {"gitignored": 2, "vendored": 1, "generated": 1}
    # gitignored: the build/ folder (not walked) and scratch_gen.py; generated: web/app.min.js
    assert source["document"] == "name+doc+code" and source["document_max_length"] == encoder["max_length"]
    urls = pq.read_table(out / META_FILE)["url"].to_pylist()
    assert all(url.startswith(f"dir://myrepo@{COMMIT}/") for url in urls)
    digests = pq.read_table(out / SOURCE_FILES).to_pylist()
    assert {row["path"] for row in digests} == {
        "pkg/geometry.py",
        "pkg/textutil.py",
        "pkg/keep_gen.py",
        "cmd/main.go",
    }

    hits = Searcher(out).search("slugify", k=3, mode="lexical")  # found by its name, with no doc comment
    assert hits[0].func_name == "slugify" and hits[0].location() == "pkg/textutil.py:1"
    assert Searcher(out).search("reverse a string", k=len(INDEXED))  # the dense path runs


def test_update_embeds_only_what_changed_and_equals_a_rebuild(encoder_bundle: Path, tmp_path: Path):
    repo = make_repo(tmp_path / "myrepo")
    out = tmp_path / "out"
    config = cfg.from_dict(stage.IndexConfig, {"recall_queries": 5})
    first = stage.run(config, str(encoder_bundle), [f"dir:{repo}"], out)
    before = vectors_by_name(out)

    geometry = repo / "pkg" / "geometry.py"  # one function changed, one added in the same file
    geometry.write_text(
        geometry.read_text().replace("radius * radius", "radius ** 2")
        + "\n\ndef rectangle_perimeter(width, height):\n    return 2 * (width + height)\n"
    )
    (repo / "pkg" / "textutil.py").unlink()  # two functions deleted with their file
    (repo / "pkg" / "shapes.py").write_text("def square_area(side):\n    return side * side\n")  # a new file

    updated = stage.update(out)
    done = updated["source"]["update"]
    assert done["from_version"] == first["version"] and updated["version"] != first["version"]
    assert (done["unchanged"], done["changed"], done["added"], done["removed"]) == (3, 1, 2, 2)
    assert done["embedded"] == 3
    (record,) = updated["source"]["sources"]
    assert (record["files_parsed"], record["files_unchanged"]) == (2, 2)
    assert record["files"] == 6 and record["skipped"] == {"gitignored": 2, "vendored": 1, "generated": 1}
    bundles.validate_bundle(out)
    after = vectors_by_name(out)
    assert set(after) == INDEXED - {"slugify", "count_vowels"} | {"rectangle_perimeter", "square_area"}
    for name in ("distance", "kept_although_generated_by_name", "ReverseString"):
        assert after[name].tobytes() == before[name].tobytes(), name  # byte for byte
    assert after["circle_area"].tobytes() != before["circle_area"].tobytes()
    left = [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]
    assert left == [".out.lock"]  # the update lock stays beside it; no partial, old or work folder

    rebuilt = tmp_path / "rebuilt"  # a fresh index of the same code: the same rows and vectors
    stage.run(config, str(encoder_bundle), [f"dir:{repo}"], rebuilt)
    assert pq.read_table(out / META_FILE).equals(pq.read_table(rebuilt / META_FILE))
    assert load_index(out / INDEX_FILE).reconstruct_n(0, 6).tobytes() == (
        load_index(rebuilt / INDEX_FILE).reconstruct_n(0, 6).tobytes()
    )

    again = stage.update(out)["source"]["update"]  # nothing changed: nothing embedded
    assert (again["definitions"], again["embedded"], again["unchanged"], again["removed"]) == (6, 0, 6, 0)


def test_index_with_a_registry_version_on_s3_of_code_on_s3(encoder_bundle: Path, s3_env: str, tmp_path: Path):
    registry = f"{s3_env}/registry"
    config = cfg.from_dict(publish.PublishConfig, {"registry": registry})
    publish.run(config, encoder_bundle, tmp_path / "publish")
    storage.copy_tree(make_repo(tmp_path / "myrepo"), f"{s3_env}/code/myrepo")
    latest = storage.join(registry, "semcode", "latest")
    out = tmp_path / "out"
    bundle = stage.run(stage.IndexConfig(recall_queries=5), latest, [f"dir:{s3_env}/code/myrepo"], out)
    assert bundle["source"]["encoder"]["spec"] == latest and bundle["source"]["encoder"]["version"] == "v1"
    assert set(pq.read_table(out / META_FILE)["func_name"].to_pylist()) == INDEXED  # .gitignore read from S3
    (record,) = bundle["source"]["sources"]
    assert record["root"] == f"{s3_env}/code/myrepo" and record["skipped"]["gitignored"] == 2
    assert Searcher(out).search("count_vowels", k=1, mode="lexical")[0].func_name == "count_vowels"


def test_the_command_line(encoder_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    repo = make_repo(tmp_path / "myrepo")
    out = tmp_path / "out"
    argv = [
        "--encoder",
        str(encoder_bundle),
        "--source",
        f"dir:{repo}",
        "--out",
        str(out),
        "--recall-queries",
        "5",
    ]
    assert stage.main(argv) == 0
    assert f"{out}: 6 definitions searchable, 6 embedded; myrepo-index " in capsys.readouterr().out

    assert stage.main(argv) == 2  # --out holds a bundle now
    assert "exists and is not empty" in capsys.readouterr().err
    assert stage.main(["--update", str(out), "--threads", "1"]) == 0
    assert "6 definitions searchable, 0 embedded (0 changed, 0 added; 6 unchanged" in capsys.readouterr().out
    assert stage.main(["--update", str(out), "--document", "code"]) == 2  # the vectors depend on it
    assert "keeps the recorded settings" in capsys.readouterr().err
    assert stage.main(["--update", str(encoder_bundle)]) == 2  # a trained release bundle
    assert "was not made by semcode index" in capsys.readouterr().err
    assert (
        stage.main(["--encoder", str(tmp_path), "--source", f"dir:{repo}", "--out", str(tmp_path / "o")]) == 2
    )
    assert "has no bundle.json" in capsys.readouterr().err

    # serve answers from it (the bundle loads in the background: /readyz says when)
    config = ServeConfig(threads=1)
    with TestClient(create_app(bundle_loader(str(out), config), config)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = client.post("/search", json={"query": "count_vowels", "k": 1, "mode": "lexical"})
        assert answer.json()["results"][0]["func_name"] == "count_vowels"
    assert "[serve] ready: myrepo-index" in capsys.readouterr().err

    # generate reads the bundle and says in one line that it has no decoder
    assert generate.main([str(out), "Join two paths."]) == 2
    err = capsys.readouterr().err.strip()
    assert "no decoder/" in err and len(err.splitlines()) == 1


def test_a_run_on_undocumented_code_is_refused_in_one_line_offering_the_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    repo = make_repo(tmp_path / "myrepo")
    code = local.main(["--preset", "tiny", "--source", f"dir:{repo}", "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert (
        "0 functions with a doc comment" in err
        and f"semcode index --encoder minilm --source dir:{repo}" in err
    )
    assert not (tmp_path / "runs").exists()  # refused before any work


@pytest.mark.slow
def test_a_run_on_undocumented_code_indexes_it_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """--when-untrainable index: the refusal's line, then the index pipeline with the zero-shot start (~1 min)."""
    repo = make_repo(tmp_path / "myrepo")
    runs = tmp_path / "runs"
    argv = ["--preset", "tiny", "--source", f"dir:{repo}", "--runs-dir", str(runs), "--run-id", "try"]
    assert local.main([*argv, "--when-untrainable", "index"]) == 0
    assert "--when-untrainable index: indexing with minilm instead" in capsys.readouterr().err
    summary = json.loads((runs / "try" / "summary.json").read_text())
    assert summary["published"] and [stage["task"] for stage in summary["stages"]] == ["index", "publish"]
    assert bundles.validate_bundle(runs / "try" / "bundle")["index_ntotal"] == len(INDEXED)


def test_ingest_without_doc_comments_offers_the_index(tmp_path: Path):
    repo = make_repo(tmp_path / "myrepo")
    config = {"sources": [f"dir:{repo}"], "corpus_near_dup": False}
    with pytest.raises(ingest.IngestError, match=r"semcode index --encoder minilm --source dir:"):
        ingest.run(cfg.from_dict(ingest.IngestConfig, config), tmp_path / "ingest")
    manifest = ingest.run(
        cfg.from_dict(ingest.IngestConfig, {**config, "min_pairs": 0}), tmp_path / "corpus-only"
    )
    assert manifest["totals"]["pairs"] == 0 and manifest["totals"]["corpus_rows"] == len(INDEXED)


def test_the_zero_shot_start_finds_undocumented_functions(tmp_path: Path):
    """minilm, exported to int8 ONNX here (15-20 s), searches code that has no doc comment at all."""
    repo = make_repo(tmp_path / "myrepo")
    out = tmp_path / "out"
    bundle = stage.run(stage.IndexConfig(recall_queries=5), "minilm", [f"dir:{repo}"], out)
    assert bundle["source"]["encoder"]["name"] == "minilm" and bundle["metrics"]["primary"]["value"] is None
    assert bundle["default_mode"] == "hybrid" and bundles.validate_bundle(out)["index_ntotal"] == len(INDEXED)
    searcher = Searcher(out)
    for query, wanted in (
        ("area of a circle", "circle_area"),
        ("reverse a string", "ReverseString"),
        ("make a url slug from a title", "slugify"),
        ("euclidean distance between two points", "distance"),
    ):
        for mode in ("dense", "hybrid"):
            assert searcher.search(query, k=1, mode=mode)[0].func_name == wanted, (query, mode)
