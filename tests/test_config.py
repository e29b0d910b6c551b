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
