"""``semcode completion bash|zsh``: a shell completion script for every command and flag, made by shtab.

    eval "$(semcode completion bash)"                                   # this shell; ~/.bashrc for all
    semcode completion zsh > ~/.zfunc/_semcode                          # a folder on $fpath, then compinit

Each command keeps its parser inside its own ``main`` (cli.py imports a command only when it runs), so the
parsers are collected here the way a user reaches them: ``main`` is called with no arguments while
``ArgumentParser.parse_args`` stops it with the parser it was about to parse with, before any work is done.
The script is then generated from one parser holding them all as sub-commands (``shtab.complete``), so a
flag added to a command completes without anything to update here. Bundle and output arguments complete as
paths.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any
from unittest import mock

SHELLS = ("bash", "zsh")
PATH_METAVARS = {"DIR", "BUNDLE", "PATH", "YAML", "FILE", "SHARD_DIR", "TEMPLATE"}  # complete as file names


class _Parser(BaseException):  # not an Exception: no command's own error handling catches it
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def command_parser(module_name: str) -> argparse.ArgumentParser:
    """The parser ``module_name``'s ``main`` builds, stopped at its parse before it does anything."""

    def stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parser(self)

    module = importlib.import_module(module_name)
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", stop),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", stop),
    ):
        try:
            module.main([])
        except _Parser as found:
            return found.parser
    raise RuntimeError(f"{module_name}.main([]) returned without parsing its arguments")


def full_parser() -> argparse.ArgumentParser:
    """``semcode`` with every command's own parser as its sub-command; path arguments marked for shtab."""
    import shtab

    from semcode.cli import COMMANDS, build_parser

    root = build_parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    for name, (module_name, _) in COMMANDS.items():
        parser = command_parser(module_name)
        for action in parser._actions:
            metavar = action.metavar if isinstance(action.metavar, str) else ""
            if metavar in PATH_METAVARS or action.dest in ("out", "bundle"):
                action.complete = shtab.FILE  # type: ignore[attr-defined]
        commands._name_parser_map[name] = parser
    return root


def script(shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    import shtab

    if shell not in SHELLS:
        raise ValueError(f"shell {shell!r}: expected one of {', '.join(SHELLS)}")
    return shtab.complete(full_parser(), shell=shell)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode completion",
        description="Print a shell completion script for semcode's commands and flags.",
        epilog=(
            "examples:\n"
            '  eval "$(semcode completion bash)"              # this shell; add the line to ~/.bashrc\n'
            "  semcode completion zsh > ~/.zfunc/_semcode     # with fpath+=(~/.zfunc) before compinit in ~/.zshrc\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    args = parser.parse_args(argv)
    sys.stdout.write(script(args.shell))
    return 0
