"""Reading one code file of a source the safe way: only a regular file inside the source's root, bounded.

A source is untrusted input: a checkout can hold ``zero.py -> /dev/zero`` (reads without end), a FIFO named
``x.py`` (an ``open`` that waits forever for a writer), ``key.py -> ~/.ssh/...`` (a file outside the
repository brought into the corpus) and names that are not UTF-8. So, before a byte is read:

- the path is resolved (every link followed) and refused as ``outside_root`` when it lands outside the
  source's root (resolved too); a link that stays inside is read like any file;
- what it names must be a regular file (``stat``, then ``fstat`` on the open descriptor, which is opened
  ``O_NONBLOCK`` and ``O_NOFOLLOW`` so a FIFO or a link swapped in meanwhile cannot block or redirect it):
  a FIFO, socket or device is refused as ``not_regular``;
- at most ``max_bytes + 1`` bytes are read (``too_large`` past ``max_bytes``), whatever the size said.

S3 objects have no links or devices: they are read with the same byte bound. :func:`shown_name` writes a
file name that is not valid UTF-8 (``os.fsdecode``'s surrogates) with ``\\xNN`` escapes, for the reject list
(``bad_file_name``): such a file is skipped by name, the rest of its source is read. Folders are walked
without following links (``os.walk``), so a linked folder is never read, inside the root or out.
"""

from __future__ import annotations

import os
import stat

from semcode import storage

FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


class FileRefused(Exception):
    """A file not read: ``reason`` is the reject reason, ``detail`` says why in words."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def shown_name(path: str) -> str:
    """``path`` as printable text: the bytes of an undecodable name (surrogates) as ``\\xNN``, and control
    characters (an escape sequence in a name would reach the terminal) as ``\\xNN`` too."""
    text = path
    if not is_utf8(path):
        try:
            text = os.fsencode(path).decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that no file name's bytes give (a JSON "\\ud800")
            text = path.encode("utf-8", "backslashreplace").decode("ascii")
    return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_source_file(location: str, root: str, max_bytes: int) -> bytes:
    """The bytes of a local file (under ``root``, a resolved folder; "" checks no root) or an S3 object.

    Raises FileRefused (``outside_root``, ``not_regular``, ``too_large``) or OSError (unreadable).
    """
    if storage.is_s3(location):
        with storage.open_input_file(location) as handle:
            if handle.size() > max_bytes:
                raise FileRefused("too_large")
            data = handle.read(max_bytes + 1)
    else:
        real = os.path.realpath(location)
        if root and not inside(real, root):
            raise FileRefused("outside_root", f"a link to {real}")
        _check_regular(os.stat(real).st_mode)
        descriptor = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        with open(descriptor, "rb") as handle:
            status = os.fstat(descriptor)
            _check_regular(status.st_mode)
            if status.st_size > max_bytes:
                raise FileRefused("too_large")
            data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileRefused("too_large")
    return data


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise FileRefused("not_regular", FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file"))
