"""The settings schema: one declaration per setting, from which the CLI flags and the dashboard form come.

A configuration dataclass declares each user-facing field with :func:`setting` (default, help, choices,
range, label, group and, where ours differs, the paper's value). :func:`settings_of` lists them as
:class:`Setting` records; :func:`add_arguments` turns them into ``argparse`` flags and
:func:`changes_from_args` reads the flags back; the dashboard builds its form from the same records
(``dashboard/widgets.py``). :func:`config_from_dict` is the one place that checks a dict of settings.

Examples
--------
>>> from cpdistiller_core.config import CpDistillerConfig
>>> from cpdistiller_core.settings import settings_of
>>> s = {x.name: x for x in settings_of(CpDistillerConfig)}
>>> s["sphering"].flag, s["sphering"].choices, s["sphering"].group
('--sphering', ('none', 'negcon', 'auto'), 'departure')
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import CpDistillerError

GROUPS = {"basic": "Main settings", "more": "More settings (paper defaults)",
          "departure": "Departures from the paper (options; docs/model.md)"}
_NO_PAPER = object()
T = TypeVar("T")


def setting(default: Any, help: str, *, label: str, group: str = "more", choices: Sequence[Any] | None = None,
            range: tuple[float, float] | None = None, paper: Any = _NO_PAPER, fmt: str | None = None) -> Any:
    """A dataclass field carrying its user-facing description (the schema of one setting).

    ``group``: where the setting appears (``basic``, ``more`` or ``departure``); ``paper``: the
    paper's value when it differs from ours or when the setting is a departure; ``fmt``: a printf
    format for the dashboard's number box (e.g. ``"%.4f"``)."""
    if group not in GROUPS:
        raise ValueError(f"unknown settings group {group!r}")
    meta = {"help": help, "label": label, "group": group, "choices": tuple(choices) if choices else None,
            "range": range, "paper": paper, "fmt": fmt}
    return dataclasses.field(default=default, metadata={"setting": meta})


@dataclass(frozen=True)
class Setting:
    """One user-facing setting of a configuration dataclass."""

    name: str
    type: type
    default: Any
    help: str
    label: str
    group: str
    choices: tuple[Any, ...] | None
    range: tuple[float, float] | None
    paper: Any
    fmt: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def has_paper_value(self) -> bool:
        return self.paper is not _NO_PAPER

    def describe_default(self) -> str:
        """"default 50", or "default none = the paper" / "default all; the paper: none"."""
        text = f"default {_show(self.default)}"
        if self.has_paper_value:
            text += " = the paper" if self.paper == self.default else f"; the paper: {_show(self.paper)}"
        return text

    def cli_help(self) -> str:
        return f"{self.help} ({self.describe_default()})"


def _show(value: Any) -> str:
    return "on" if value is True else "off" if value is False else str(value)


def settings_of(cls: type) -> list[Setting]:
    """The user-facing settings of a configuration dataclass, in declaration order."""
    hints = _field_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        if meta:
            out.append(Setting(f.name, hints[f.name], f.default, **meta))
    return out


def _field_types(cls: type) -> dict[str, type]:
    import typing

    hints = typing.get_type_hints(cls)
    plain = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        plain[name] = args[0] if args and typing.get_origin(hint) is not None else hint
    return plain


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, title: str | None = None) -> None:
    """One flag per setting of ``cls``: ``--name`` (``--name/--no-name`` for on/off settings).

    Flags default to None so that only the ones given change a configuration (see
    :func:`changes_from_args`)."""
    group = parser.add_argument_group(title) if title else parser
    for s in settings_of(cls):
        if s.type is bool:
            group.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=None,
                               help=s.cli_help())
        else:
            group.add_argument(s.flag, dest=s.name, type=s.type, choices=s.choices, default=None,
                               metavar=None if s.choices else s.name.upper(), help=s.cli_help())


def changes_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` that were given on the command line."""
    return {s.name: getattr(args, s.name) for s in settings_of(cls) if getattr(args, s.name, None) is not None}


def config_from_dict(cls: type[T], d: Mapping[str, Any], source: str | None = None) -> T:
    """``cls(**d)`` with one clear error: unknown names listed with the known ones, the source named."""
    where = f"{source}: " if source else ""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CpDistillerError(f"{where}unknown setting(s) {unknown}; known settings: {sorted(known)}.")
    try:
        return cls(**dict(d))
    except TypeError as exc:
        raise CpDistillerError(f"{where}bad settings: {exc}.") from None
    except CpDistillerError as exc:
        if source:
            raise CpDistillerError(f"{where}{exc}") from None
        raise
