"""Check one setting's value against its type and word each problem as ``(KEY, message)``.

A message names the rule and the bad value, for example
``tick_interval_ms: expected `int` >= 10, got 0``, except for secrets, whose value
never appears in a message.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgspec

from lobbyd.errors import lowercase_start

Problem = tuple[str, str]
"""A bad setting: its dotted key and what is wrong with it."""

# Settings whose value may hold a key or a password, so a message never shows it.
SECRET_KEYS: Final = frozenset(
    {"auth_secret", "game_server_secret", "join_ticket_secret", "postgres_dsn", "redis_url"}
)

_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_MISSING = object()


def value_problems(
    key: str,
    value: Any,
    struct: type[msgspec.Struct],
    *,
    prefix: str = "",
    text_checks: Mapping[str, Callable[[Any], list[str]]] | None = None,
) -> list[Problem]:
    """Return the problems of setting ``key`` of ``struct`` alone; keys start with ``prefix``."""
    # strict=False lets "500" from an environment variable become the int 500.
    try:
        converted = msgspec.convert({key: value}, struct, strict=False)
    except msgspec.ValidationError as exc:
        return [_explain(str(exc), {key: value}, struct, prefix)]
    check = (text_checks or {}).get(key)
    if check is None:
        return []
    return [(_join(prefix, key), message) for message in check(getattr(converted, key))]


def suggestion(key: str, known: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the known name closest to ``key``, or ""."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _explain(message: str, root: Mapping[str, Any], struct: type[msgspec.Struct], prefix: str) -> Problem:
    """Rewrite msgspec's "Expected ... - at `$.key`" as ("key", "expected ..., got VALUE")."""
    text, sep, path = message.rpartition(" - at `$")
    if not sep:
        return prefix, lowercase_start(message)
    path = path.rstrip("`")
    key = _join(prefix, path.lstrip("."))
    parts = _path_parts(path)
    leaf = _value_at(root, parts)
    if text.startswith("Invalid enum value"):
        text = f"expected one of {_allowed(struct, parts)}"
    # msgspec names only the type of a wrong value ("got `str`"); the value itself
    # tells the operator more, unless it is a secret or a whole table.
    text = re.sub(r", got `[^`]+`$", "", text)
    if parts[0] not in SECRET_KEYS and isinstance(leaf, str | int | float):
        text = f"{text}, got {leaf!r}"
    return key, lowercase_start(text)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _path_parts(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _PATH_PART.findall(path)]


def _value_at(root: Any, parts: list[str | int]) -> Any:
    value = root
    for part in parts:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


def _allowed(struct: type[msgspec.Struct], parts: list[str | int]) -> str:
    """Return the allowed values of the Literal field at ``parts``, as "'a', 'b' or 'c'"."""
    hint = typing.get_type_hints(struct).get(str(parts[0]))
    choices = [repr(choice) for choice in typing.get_args(hint)] if hint is not None else []
    if len(choices) < 2:
        return "the allowed values"
    return f"{', '.join(choices[:-1])} or {choices[-1]}"
