"""Progress reporting: a bar on a terminal, plain timestamped lines otherwise (logs, CI, KFP pods).

Both go to stderr so stdout stays for results. Plain lines appear at most every ``every_seconds``
and always at the end, shaped like ``[ingest] files 1200/5000 (24%) | 350.2 files/s | eta 11s``.
"""

from __future__ import annotations

import sys
import time
from typing import TypeVar

T = TypeVar("T")


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def log(tag: str, message: str) -> None:
    """One progress line on stderr, prefixed with the stage tag."""
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


class Progress:
    """Counts work items; shows a tqdm bar on a TTY, else prints periodic plain lines.

    ``postfix`` is free text appended to each line (e.g. the current loss).
    """

    def __init__(
        self,
        tag: str,
        total: int | None = None,
        unit: str = "items",
        every_seconds: float = 10.0,
        force_plain: bool | None = None,
    ) -> None:
        self.tag, self.total, self.unit = tag, total, unit
        self.count = 0
        self.postfix = ""
        self.every_seconds = every_seconds
        self.start = time.perf_counter()
        self._last_print = self.start
        plain = not sys.stderr.isatty() if force_plain is None else force_plain
        self._bar = None
        if not plain:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, unit=f" {unit}", desc=f"[{tag}]", file=sys.stderr, dynamic_ncols=True, leave=True
            )

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if postfix is not None:
            self.postfix = postfix
        if self._bar is not None:
            self._bar.update(n)
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_print >= self.every_seconds:
            self._last_print = now
            log(self.tag, self.line())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            share = 100.0 * self.count / self.total
            eta = (self.total - self.count) / rate if rate > 0 else 0.0
            text = f"{self.unit} {self.count}/{self.total} ({share:.0f}%) | {rate:.1f} {self.unit}/s | eta {format_seconds(eta)}"
        else:
            text = f"{self.unit} {self.count} | {rate:.1f} {self.unit}/s | {format_seconds(elapsed)}"
        return f"{text} | {self.postfix}" if self.postfix else text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            log(self.tag, self.line() + " | done")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
