"""Pydantic validation errors as one BenchError naming the field (with its whole nested path) and
the reason: the one conversion every schema uses (protocol, claims files, method parameters).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from bench.errors import BenchError


def first_error(errors: list[dict]) -> dict:
    """The validation error to report, of pydantic's list.

    A misspelt required key gives two errors, the missing key first (``methods: Field
    required``) and the unknown one after; the unknown key is the one to report (with its
    did-you-mean hint) when it is close to a key missing at the same level.
    """
    missing: dict[tuple, list[str]] = {}
    for error in errors:
        if error["type"] == "missing":
            loc = tuple(error["loc"])
            missing.setdefault(loc[:-1], []).append(str(loc[-1]))
    for error in errors:
        if error["type"] == "extra_forbidden":
            loc = tuple(error["loc"])
            if difflib.get_close_matches(str(loc[-1]), missing.get(loc[:-1], []), n=1):
                return error
    return errors[0]


#: how pydantic names the member of a union or a validator wrapper in an error's location
#: (``constrained-float``, ``function-after[...]``, ``list[int]``): not a key of the file
_TAGS = ("function-", "constrained-", "is-instance", "lax-", "json-or-python", "tagged-union",
         "nullable", "default", "literal[")


def location(loc: tuple, *, brackets: bool = False) -> str:
    """``a.0.b`` (or ``a[0].b`` with ``brackets``), without pydantic's union and validator
    tags."""
    text = ""
    for part in loc:
        if isinstance(part, str) and (part.startswith(_TAGS) or "[" in part):
            continue
        if brackets and isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) section at ``loc`` (for did-you-mean hints)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        info = getattr(current, "model_fields", {}).get(str(part))
        annotation = info.annotation if info else None
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type)
                        and issubclass(c, BaseModel)), None)
    return list(getattr(current, "model_fields", {}))


def describe(error: dict, model: type[BaseModel], *, brackets: bool = False
             ) -> tuple[str, str]:
    """(field, reason) of one pydantic error dict."""
    loc = tuple(error["loc"])
    field = location(loc, brackets=brackets)
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        known = known_keys(model, loc)
        hint = difflib.get_close_matches(key, known, n=1)
        reason = f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        return field, reason + (f"; allowed: {', '.join(known)}" if known else "")
    if error["type"] == "missing":
        return field, "missing required field"
    reason = str(error.get("ctx", {}).get("error", error["msg"]))
    reason = reason.removeprefix("Value error, ")
    if not field and ": " in reason and reason.split(": ", 1)[0].isidentifier():
        field, reason = reason.split(": ", 1)  # a model-level check naming its key first
    given = error.get("input")
    if not isinstance(given, (dict, list)) and not re.search(
            rf"(?<![\w.]){re.escape(repr(given))}(?![\w.])", reason):
        reason += f" (got {given!r})"
    return field, reason


def invalid(error: ValidationError, model: type[BaseModel], *, source: str | None,
            prefix: str = "", brackets: bool = False) -> BenchError:
    """The BenchError of a failed ``model.model_validate``; ``prefix`` is where the validated
    mapping sits in its file (e.g. ``methods.2.params``)."""
    field, reason = describe(first_error(error.errors()), model, brackets=brackets)
    joined = ".".join(part for part in (prefix, field) if part)
    return BenchError(reason, source=source, field=joined or None)
