"""The protocol hash in every study: a storage holds the trials of one protocol only.

Studies are keyed by protocol name, and a storage may be shared by `bench run`, `bench worker`
processes on other machines, `bench status` and `bench rebuild`. The folder's protocol.yaml copy
cannot protect it (a worker writes no folder; another machine has another one), so the storage
itself records which protocol made each study: its hash (which includes the plug-in versions,
bench.plan) and its text, written when the study is created and compared on every step. A
mismatch is refused with one line naming what changed, whatever the storage.
"""

from __future__ import annotations

from typing import Any

import yaml

from bench.errors import BenchError
from bench.keys import StudyKey, protocol_studies

PROTOCOL_HASH = "protocol_sha256"
PROTOCOL_TEXT = "protocol_text"
#: keys listed in the one-line summary before "and N more"
SHOWN = 4


def stamp(study: Any, plan: Any) -> None:
    """Write the plan's hash and text into a study that has none; refuse one of another
    protocol. Called on every step (a study is created with ``load_if_exists``)."""
    attrs = study.user_attrs
    if PROTOCOL_HASH not in attrs:
        study.set_user_attr(PROTOCOL_TEXT, plan.protocol_text)
        study.set_user_attr(PROTOCOL_HASH, plan.protocol_hash)
        attrs = study.user_attrs  # read back: another protocol's process may have raced us
    check_attrs(study.study_name, attrs, plan)


def check_attrs(name: str, attrs: dict[str, Any], plan: Any) -> None:
    """BenchError (exit 2) when the study ``name`` was made by a protocol other than ``plan``'s."""
    stored = attrs.get(PROTOCOL_HASH)
    if stored is None or stored == plan.protocol_hash:
        return
    summary = change_summary(attrs.get(PROTOCOL_TEXT), plan.protocol_text)
    raise BenchError(f"differs from the protocol that created study {name!r} in the storage "
                     f"({summary}); rerun with --fresh to delete that protocol's studies, or "
                     f"give another --storage", source=plan.source)


def check_storage(storage: Any, plan: Any) -> int:
    """Check every study of the plan's protocol in ``storage`` before any work; returns how
    many there are."""
    import optuna

    keys = set(map(str, protocol_studies(storage, plan.protocol.name)))
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name in keys:
            check_attrs(summary.study_name, summary.user_attrs, plan)
    return len(keys)


def change_summary(old_text: str | None, new_text: str) -> str:
    """``train.iterations: 10 -> 20, ...``: the keys whose values differ between two protocol
    texts (parsed, so comments and layout do not count)."""
    if old_text is None:
        return "its text was not recorded"
    try:
        old, new = flatten(yaml.safe_load(old_text)), flatten(yaml.safe_load(new_text))
    except yaml.YAMLError:
        return "its text cannot be compared"
    changed = [f"{key}: {_show(old.get(key))} -> {_show(new.get(key))}"
               for key in sorted(set(old) | set(new)) if old.get(key, _MISSING) !=
               new.get(key, _MISSING)]
    if not changed:
        return ("same settings; comments, layout or the installed plug-in versions differ"
                if old_text != new_text else "the installed plug-in versions differ")
    more = f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
    return "changed " + "; ".join(changed[:SHOWN]) + more


_MISSING = object()


def _show(value: Any) -> str:
    return "(absent)" if value is None else repr(value) if isinstance(value, str) else str(value)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as ``a.b.0.c`` keys to leaf values."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out if out or not prefix else {prefix: value}


__all__ = ["PROTOCOL_HASH", "PROTOCOL_TEXT", "StudyKey", "change_summary", "check_storage",
           "stamp"]
