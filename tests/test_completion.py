"""semcode completion: the bash script, sourced in a real bash, completes commands, their own flags and
choices; the zsh script names the same. The scripts come from every command's real parser."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from semcode import cli, completion


@pytest.fixture(scope="module")
def bash_script() -> str:
    return completion.script("bash")


def complete(script: str, words: list[str]) -> list[str]:
    """What bash's completion function offers for ``words`` (the last one being typed)."""
    driver = script + (
        '\nCOMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        'COMPREPLY=(); _shtab_semcode; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "-c", driver, "bash", *words], capture_output=True, text=True, check=True, timeout=30
    )
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_flags_and_choices(bash_script: str):
    assert subprocess.run(["bash", "-n", "-c", bash_script], check=False).returncode == 0
    assert complete(bash_script, ["semcode", "se"]) == ["search", "serve"]
    assert set(complete(bash_script, ["semcode", ""])) >= set(cli.COMMANDS)
    assert complete(bash_script, ["semcode", "search", "--mi"]) == ["--min-score"]
    assert set(complete(bash_script, ["semcode", "search", "--"])) >= {
        "--path",
        "--repo",
        "--language",
        "--json",
    }
    assert complete(bash_script, ["semcode", "search", "b", "q", "--mode", ""]) == [
        "dense",
        "lexical",
        "hybrid",
    ]
    assert complete(bash_script, ["semcode", "ingest", "--sou"]) == ["--source"]  # --sources is deprecated
    assert complete(bash_script, ["semcode", "completion", ""]) == ["bash", "zsh"]


def test_zsh_script_names_every_command_and_flag():
    script = completion.script("zsh")
    assert script.startswith("#compdef semcode")
    for name in cli.COMMANDS:
        assert f"\n    {name}:'" in script, name
    assert "--min-score" in script and "--path" in script and "--source" in script


def test_the_command_prints_the_script_and_refuses_another_shell(capsys):
    assert cli.main(["completion", "bash"]) == 0
    assert "_shtab_semcode" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["completion", "fish"])
    assert exit_info.value.code == 2 and "invalid choice: 'fish'" in capsys.readouterr().err
