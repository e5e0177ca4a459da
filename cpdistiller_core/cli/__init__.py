"""The `cpdistiller` command: thin argument parsing over the core.

Each subcommand group lives in its own module here and exposes ``register(subparsers)``, which adds
its parsers and sets ``func`` (taking the parsed args, returning an exit code) with
``parser.set_defaults(func=...)``. Add a module to ``COMMAND_MODULES`` to make it appear.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from ..errors import CpDistillerError, CpDistillerWarning

COMMAND_MODULES: list[str] = [
    "correct",
    "apply",
    "data",
    "jump",
    "evaluate",
    "extract",
    "genes",
    "prep",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="cpdistiller",
        description="Correct batch and gradient-influenced row/column effects in Cell Painting profiles.",
    )
    parser.add_argument("--version", action="version", version=f"cpdistiller {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, CpDistillerWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        logging.getLogger("cpdistiller").debug("%s:%s: %s", filename, lineno, message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        warnings.showwarning = _show_warning
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CpDistillerError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
