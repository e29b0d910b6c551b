"""docs/seed-commands.md stays true: every flag of every ``semcode`` command in its table is one that
command's ``--help`` lists (a renamed or dropped flag fails here, not in a user's terminal)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from semcode import cli

TABLE = Path(__file__).parents[1] / "docs" / "seed-commands.md"


def table_commands() -> list[list[str]]:
    """The semcode commands of the table's third column, as argument lists (``semcode`` left out)."""
    commands = []
    for line in TABLE.read_text().splitlines():
        cells = line.split(" | ")
        if len(cells) < 3 or not line.startswith("| 00"):
            continue
        for code in re.findall(r"`(semcode [^`]+)`", cells[2]):
            commands.append(shlex.split(code)[1:])
    return commands


def help_text(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return out.getvalue()


def test_the_table_covers_every_seed_guide() -> None:
    seeds = {line[2:5] for line in TABLE.read_text().splitlines() if re.match(r"\| 00\d \|", line)}
    assert seeds == {"000", "001", "002", "003", "004"}
    assert len(table_commands()) > 30


def test_every_flag_in_the_table_is_a_flag_of_its_command() -> None:
    helps: dict[str, str] = {}
    for argv in table_commands():
        command = argv[0]
        if command == "COMMAND":
            continue
        if command not in helps:
            helps[command] = help_text(command)
        for flag in (arg.split("=")[0] for arg in argv[1:] if arg.startswith("--")):
            assert re.search(rf"{re.escape(flag)}(?![\w-])", helps[command]), (
                f"semcode {command} has no {flag}"
            )
