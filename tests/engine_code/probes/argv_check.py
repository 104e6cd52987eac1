"""Shared by the parse probes, which run inside an engine's venv (standard library only, Python 3.10+).

Two checks on a command line an engine's own argparse parser has accepted:
- every option token is an *exact* option string of that parser: argparse's `allow_abbrev` (on in vLLM and SGLang)
  takes any unambiguous prefix, so a flag the engine renamed or removed can silently match a longer one;
- every rendered value comes out of the parse as rendered (after the action's own type conversion).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Option:
    """One option as rendered: the token, its action (None: not an exact option string) and its values."""

    flag: str
    action: argparse.Action | None
    values: list[str] = field(default_factory=list)


def options(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[Option], list[str]]:
    """The options of `argv` (`--flag value`, `--flag=value`) and its positional arguments."""
    actions = parser._option_string_actions
    found: list[Option] = []
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--"):
            positionals.append(token)
            continue
        name, has_inline, inline = token.partition("=")
        action = actions.get(name)
        option = Option(name, action)
        found.append(option)
        if has_inline:
            option.values.append(inline)
        elif action is None:
            # Unknown to the parser: take what follows up to the next option as its values.
            while i < len(argv) and not argv[i].startswith("--"):
                option.values.append(argv[i])
                i += 1
        elif action.nargs is None or (isinstance(action.nargs, int) and action.nargs > 0):
            count = 1 if action.nargs is None else int(action.nargs)
            option.values += argv[i : i + count]
            i += count
        elif action.nargs == "?":
            if i < len(argv) and not argv[i].startswith("-"):
                option.values.append(argv[i])
                i += 1
        elif action.nargs in ("*", "+"):
            while i < len(argv) and not argv[i].startswith("--"):
                option.values.append(argv[i])
                i += 1
    return found, positionals


def expected(option: Option) -> Any:
    """What argparse stores for this option as rendered (raises on a value the action's type rejects)."""
    action = option.action
    assert action is not None
    if action.nargs == 0:
        if isinstance(action, argparse.BooleanOptionalAction):
            return not option.flag.startswith("--no-")
        return action.const
    if action.nargs == "?" and not option.values:
        return action.const
    convert: Callable[[str], Any] = action.type if callable(action.type) else str  # type: ignore[assignment]
    values = [convert(value) for value in option.values]
    if action.nargs in (None, "?") or isinstance(action, argparse._AppendAction):
        return values[0]
    return values


def check(opts: list[Option], parsed: Callable[[str], Any]) -> tuple[list[str], list[dict[str, str]]]:
    """(problems, one row per option: flag, dest, rendered, parsed); `parsed(dest)` reads the engine's result.

    Later options win over earlier ones for the same destination, as in argparse; appended values must all be there.
    """
    problems = [f"{o.flag}: not an exact option string of the parser" for o in opts if o.action is None]
    last: dict[str, tuple[Option, Any]] = {}
    appended: list[tuple[Option, Any]] = []
    for option in opts:
        if option.action is None:
            continue
        try:
            want = expected(option)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            problems.append(f"{option.flag} {option.values}: the parser's type rejects it: {exc}")
            continue
        if isinstance(option.action, argparse._AppendAction):
            appended.append((option, want))
        else:
            last[option.action.dest] = (option, want)
    rows = []
    for option, want in [*last.values(), *appended]:
        assert option.action is not None
        dest = option.action.dest
        got = parsed(dest)
        same = (
            want in got if isinstance(option.action, argparse._AppendAction) and isinstance(got, list) else got == want
        )
        shown = shown_secret if "key" in dest else repr
        if not same:
            problems.append(f"{option.flag}: parsed {dest}={shown(got)}, rendered {shown(want)}")
        rows.append({"flag": option.flag, "dest": dest, "rendered": shown(want), "parsed": shown(got)})
    return problems, rows


def shown_secret(value: Any) -> str:
    """A key's value as reports show it (the start of its SHA-256)."""
    return f"sha256:{(digest(value) or '')[:12]}" if isinstance(value, str) and value else repr(value)


def digest(secret: str | None) -> str | None:
    """A key as the report carries it: its SHA-256, never the key."""
    return hashlib.sha256(secret.encode()).hexdigest() if secret else None
