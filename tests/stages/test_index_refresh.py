"""The index pipeline's task (semcode.stages.index.refresh): the index published last, copied and updated
when it was made with the same encoder and settings; a new index on the first run, for another encoder
and for other settings; the published copy left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_fixture import assemble_tiny_bundle, cached_tiny_run

from semcode import bundle as bundles
from semcode import config as cfg
from semcode.registry import latest_uri, resolve_latest
from semcode.stages import index as stage
from semcode.stages import publish

FILES = {
    "geometry.py": "def circle_area(radius):\n    return 3.14159 * radius * radius\n",
    "text.py": "def slugify(title):\n    return '-'.join(title.lower().split())\n",
}


@pytest.fixture(scope="module")
def encoder_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_tiny_bundle(
        cached_tiny_run(tmp_path_factory), tmp_path_factory.mktemp("encoder") / "bundle"
    )


def test_refresh_updates_the_published_index_or_makes_a_new_one(encoder_bundle: Path, tmp_path: Path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name, text in FILES.items():
        (repo / name).write_text(text)
    registry = str(tmp_path / "registry")
    latest = latest_uri(registry, "team-code")
    config = stage.IndexConfig(name="team-code", recall_queries=2)
    sources = [f"dir:{repo}"]

    first = stage.refresh(config, str(encoder_bundle), sources, tmp_path / "first", previous=latest)
    assert first["source"]["update"] == {"definitions": 2, "embedded": 2, "seconds": pytest.approx(0, abs=60)}
    assert "nothing published yet: a new index" in capsys.readouterr().err
    publish.run(
        cfg.from_dict(publish.PublishConfig, {"registry": registry, "name": "team-code"}),
        tmp_path / "first",
        tmp_path / "p1",
    )
    published = resolve_latest(registry, "team-code")
    before = {path.name: path.stat().st_mtime_ns for path in Path(published).iterdir()}

    (repo / "text.py").write_text("def slugify(title):\n    return '_'.join(title.split())\n")
    second = stage.refresh(config, str(encoder_bundle), sources, tmp_path / "second", previous=latest)
    done = second["source"]["update"]
    assert (done["embedded"], done["unchanged"], done["changed"]) == (1, 1, 1)
    assert done["from_version"] == first["version"] and second["name"] == "team-code"
    bundles.validate_bundle(tmp_path / "second")
    assert {path.name: path.stat().st_mtime_ns for path in Path(published).iterdir()} == before  # untouched

    other = stage.IndexConfig(name="team-code", recall_queries=2, document="code")  # other vectors
    third = stage.refresh(other, str(encoder_bundle), sources, tmp_path / "third", previous=latest)
    assert third["source"]["update"]["embedded"] == 2
    assert (
        "made with other settings: document 'name+doc+code' (now 'code'): indexing anew"
        in capsys.readouterr().err
    )

    with pytest.raises(ValueError, match="was not made by semcode index"):  # a trained release bundle
        stage.refresh(config, str(encoder_bundle), sources, tmp_path / "fourth", previous=str(encoder_bundle))
    with pytest.raises(FileNotFoundError, match="has no bundle.json"):
        stage.refresh(config, str(encoder_bundle), sources, tmp_path / "fifth", previous=str(repo))


def test_another_encoder_means_a_new_index(encoder_bundle: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text(FILES["geometry.py"])
    config = stage.IndexConfig(recall_queries=2)
    stage.run(config, str(encoder_bundle), [f"dir:{repo}"], tmp_path / "old")
    assert stage.why_not_update(config, str(encoder_bundle), str(tmp_path / "old")) == ""
    reason = stage.why_not_update(config, "minilm", str(tmp_path / "old"))
    assert reason.startswith("made with encoder ") and reason.endswith("not minilm all-MiniLM-L6-v2")
