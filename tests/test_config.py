"""semcode.config: YAML files and presets read with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcode import config as cfg


def test_a_preset_reads_by_name() -> None:
    assert "ingest" in cfg.load_yaml("tiny")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ingest:\n  max_corpus: [1, 2\n", r"bad\.yaml, line 3 column 1: not valid YAML"),
        ("ingest: {a: 1\n", r"bad\.yaml, line 2 column 1: not valid YAML"),
        ("- just\n- a list\n", r"bad\.yaml: expected a mapping at the top level"),
    ],
)
def test_malformed_yaml_names_the_file_and_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError, match=message) as caught:
        cfg.load_yaml(path)
    assert "<unicode string>" not in str(caught.value)


def test_a_binary_config_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(cfg.ConfigError, match=r"config\.yaml: not UTF-8 text"):
        cfg.load_yaml(path)


def test_a_missing_config_lists_the_presets(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match=r"not found; presets: \[.*'local'.*'tiny'"):
        cfg.load_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("kind", ["device", "fifo", "folder", "huge"])
def test_a_config_that_is_not_a_regular_file_is_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    """--config/--preset /dev/zero read without end and a FIFO waited for a writer for ever (issue 31)."""
    import os

    path = {"device": Path("/dev/zero"), "folder": tmp_path, "fifo": tmp_path / "x.yaml"}.get(kind)
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "huge":
        path = tmp_path / "huge.yaml"
        path.write_text("a: 1\n" + "# padding\n" * 200_000)
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load_yaml(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert ("over" in message) if kind == "huge" else ("not a regular file" in message)
