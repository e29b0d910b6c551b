"""The ``semcode`` command's dispatch (semcode.cli): a full disk, a read-only file system or a forbidden path met
by any command is one line naming the path, exit 2; any other error keeps its traceback."""

from __future__ import annotations

import errno
import os
import sys
import types
from pathlib import Path

import pytest

from semcode import cli


@pytest.fixture
def command(monkeypatch: pytest.MonkeyPatch):
    """``semcode fake ARGS`` runs the function given to ``use``, as a command module's main(argv)."""
    module = types.ModuleType("semcode_fake_command")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "fake", (module.__name__, "a command of the tests"))

    def use(main) -> None:
        module.main = main

    return use


def test_a_full_disk_on_any_command_is_one_line_naming_the_file(command, tmp_path, capsys) -> None:
    """A real ENOSPC: /dev/full fails every write, and write() names no file (the error has no filename): the
    line names the file from the frame that was writing it."""
    cache_file = tmp_path / "cache" / "blob.bin"
    cache_file.parent.mkdir()
    cache_file.symlink_to("/dev/full")

    def main(argv: list[str]) -> int:
        Path(argv[0]).write_bytes(b"downloaded bytes")  # what a cache download or an index write does
        return 0

    command(main)
    assert cli.main(["fake", str(cache_file)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"semcode fake: error: No space left on device while writing {cache_file}: free space there or write "
        "elsewhere\n"
    )


def test_a_copy_onto_a_full_disk_names_its_destination(command, tmp_path, capsys, monkeypatch) -> None:
    """shutil's copy reports ENOSPC with the source as filename and the destination as filename2."""
    import shutil

    source, destination = tmp_path / "bundle.onnx", tmp_path / "registry" / "bundle.onnx"
    source.write_bytes(b"model")
    destination.parent.mkdir()

    def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "sendfile", sendfile)
    command(lambda argv: shutil.copyfile(source, destination) and 0)
    assert cli.main(["fake"]) == 2
    assert f"No space left on device while writing {destination}: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.EROFS, "Read-only file system: {path}: the file system is read-only: write elsewhere"),
        (
            errno.EACCES,
            "Permission denied: {path}: fix its permissions (or its folder's) or use another path",
        ),
    ],
)
def test_a_read_only_or_forbidden_path_is_one_line(command, tmp_path, capsys, code, hint) -> None:
    path = tmp_path / "out" / "run.json"

    def main(argv: list[str]) -> int:
        raise OSError(code, os.strerror(code), str(path))  # what open() raises there

    command(main)
    assert cli.main(["fake", "--out", str(path.parent)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("semcode fake: error: " + hint.format(path=path)) and err.count("\n") == 1


def test_other_errors_keep_their_traceback(command) -> None:
    def main(argv: list[str]) -> int:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    command(main)
    with pytest.raises(OSError, match="not connected"):
        cli.main(["fake"])
    command(lambda argv: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["fake"])
