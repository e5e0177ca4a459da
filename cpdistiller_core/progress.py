"""Progress reporting: long work calls ``progress(fraction, message)``; the CLI renders a bar."""

from __future__ import annotations

import sys
from collections.abc import Callable

ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """Default callback: do nothing."""


class TerminalProgress:
    """A tqdm bar on stderr driven by ``(fraction, message)`` calls; use as a context manager."""

    def __init__(self, description: str = "", disable: bool | None = None) -> None:
        from tqdm import tqdm

        if disable is None:
            disable = not sys.stderr.isatty()
        self._bar = tqdm(total=1000, desc=description, disable=disable, file=sys.stderr,
                         bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        self._last = 0

    def __call__(self, fraction: float, message: str) -> None:
        step = int(round(max(0.0, min(1.0, fraction)) * 1000))
        if step > self._last:
            self._bar.update(step - self._last)
            self._last = step
        self._bar.set_postfix_str(message, refresh=False)

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
