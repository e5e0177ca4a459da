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
            range: tuple[float, float] | None = None, paper: Any = _NO_PAPER, fmt: str | None = None,
            multiple: bool = False, off: float | None = None, auto_default: Any = None) -> Any:
    """A dataclass field carrying its user-facing description (the schema of one setting).

    ``group``: where the setting appears (``basic``, ``more`` or ``departure``); ``paper``: the
    paper's value when it differs from ours or when the setting is a departure; ``fmt``: a printf
    format for the dashboard's number box (e.g. ``"%.4f"``). ``multiple``: a tuple of ``choices``
    (comma-separated on the command line, ``none`` for an empty one). ``off``: for a number that may be
    None, the value of the dashboard's number box that means None (e.g. 0 for "no clipping"); on the
    command line None is written ``none``. ``auto_default``: for a default of ``"auto"``, what it
    amounts to when the other settings keep their defaults (so the form can say whether the
    departure is on by default)."""
    if group not in GROUPS:
        raise ValueError(f"unknown settings group {group!r}")
    meta = {"help": help, "label": label, "group": group, "choices": tuple(choices) if choices else None,
            "range": range, "paper": paper, "fmt": fmt, "multiple": multiple, "off": off,
            "auto_default": auto_default}
    default = tuple(default) if isinstance(default, list) else default
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
    multiple: bool = False
    off: float | None = None
    optional: bool = False   # None is a valid value
    auto_default: Any = None  # what a default of "auto" amounts to with the other defaults

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
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "on" if value is True else "off" if value is False else "none" if value is None else str(value)


def settings_of(cls: type) -> list[Setting]:
    """The user-facing settings of a configuration dataclass, in declaration order."""
    hints = _field_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        if meta:
            kind, optional = hints[f.name]
            out.append(Setting(f.name, kind, f.default, **meta, optional=optional))
    return out


def paper_values(cls: type) -> dict[str, Any]:
    """The paper's value of every setting of ``cls`` that records one (its departures undone)."""
    return {s.name: s.paper for s in settings_of(cls) if s.has_paper_value}


def departures_on_by_default(cls: type) -> list[Setting]:
    """The departures whose default is not the paper's value. An ``"auto"`` default counts by what it
    amounts to with the other defaults (``auto_default``); without one it decides per screen, not listed."""
    def effective(s: Setting) -> Any:
        return s.auto_default if s.default == "auto" and s.auto_default is not None else s.default

    return [s for s in settings_of(cls)
            if s.group == "departure" and s.has_paper_value and effective(s) not in (s.paper, "auto")]


def group_title(cls: type, group: str) -> str:
    """A settings group's title; the departures' names those on by default."""
    on = departures_on_by_default(cls) if group == "departure" else []
    return GROUPS[group] + (f" — on by default: {', '.join(s.label for s in on)}" if on else "")


def _field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """name -> (the value type: str for ``tuple[str, ...]`` and ``str | None``; whether None is allowed)."""
    import typing

    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        optional = type(None) in args
        plain = [a for a in args if a is not type(None) and a is not Ellipsis]
        out[name] = (plain[0] if plain and typing.get_origin(hint) is not None else hint, optional)
    return out


def parse_value(s: Setting, text: str) -> Any:
    """A command-line value of a setting: ``none`` for None (or an empty list), comma lists for
    ``multiple`` settings, else the setting's type; a value that is not of that type is a
    ``CpDistillerError`` naming the flag. Choices are checked by the configuration."""
    word = text.strip()
    if s.multiple:
        return () if word.lower() == "none" else tuple(w.strip() for w in word.split(",") if w.strip())
    if s.optional and word.lower() in ("none", "off"):
        return None
    try:
        return s.type(word)
    except ValueError:
        kind = {int: "a whole number", float: "a number"}.get(s.type, s.type.__name__)
        raise CpDistillerError(f"{s.flag} expects {kind}" + (" or 'none'" if s.optional else "")
                               + f" (got {text!r}).") from None


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, title: str | None = None) -> None:
    """One flag per setting of ``cls``: ``--name`` (``--name/--no-name`` for on/off settings).

    A flag not given leaves no attribute, so only the flags given change a configuration (see
    :func:`changes_from_args`, which also converts and checks the values)."""
    group = parser.add_argument_group(title) if title else parser
    for s in settings_of(cls):
        if s.type is bool:
            group.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=s.cli_help())
        elif s.choices and not (s.multiple or s.optional):
            group.add_argument(s.flag, dest=s.name, type=s.type, choices=s.choices, default=argparse.SUPPRESS,
                               help=s.cli_help())
        else:
            words = [str(c) for c in s.choices or () if c is not None] + (["none"] if s.optional else [])
            metavar = ("{" + ",".join(words) + "}" if s.choices and not s.multiple
                       else "OP[,OP]" if s.multiple else s.name.upper())
            extra = f"; any of {', '.join(map(str, s.choices))}" if s.multiple and s.choices else ""
            group.add_argument(s.flag, dest=s.name, default=argparse.SUPPRESS, metavar=metavar,
                               help=s.cli_help()[:-1] + extra + ")")


def changes_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` given on the command line, converted to their types."""
    given = vars(args)
    return {s.name: _converted(s, given[s.name]) for s in settings_of(cls) if s.name in given}


def _converted(s: Setting, value: Any) -> Any:
    if isinstance(value, str) and (s.multiple or s.optional or s.type is not str):
        return parse_value(s, value)
    return value


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
