"""Import ooDML's published split pickles into bench's split-file format, safely.

ooDML ships its split sequences as Python pickles: a dict keyed by split id, each value holding
the train and test class names and the split's FID (plus, in some files, a train/val partition
and few-shot episodes, which are ignored here). Unpickling runs whatever callables a file names,
so these files are read with :class:`RestrictedUnpickler`: only plain containers, strings,
numbers and the functions numpy needs to rebuild arrays and scalars are admitted; any other global
(``os.system``, ``builtins.eval``, a class, ...) is refused with a :class:`BenchError` naming the
file and the refused global before anything is called.

Accepted layouts: ``{id: {...}}``, ``[{...}, ...]`` or either under a top-level ``"splits"`` key;
per split, train classes under ``train`` / ``train_classes`` / ``classes_train`` / ``training`` /
``trainval``, test classes under ``test`` / ``test_classes`` / ``classes_test`` / ``testing``,
the FID under ``fid`` / ``FID`` / ``fid_score`` / ``score``; class names may be strings, bytes,
numbers or numpy arrays of them.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.splits.fid_sequence import split_document

TRAIN_KEYS = ("train", "train_classes", "classes_train", "training", "trainval", "train_val")
TEST_KEYS = ("test", "test_classes", "classes_test", "testing")
FID_KEYS = ("fid", "FID", "fid_score", "score")
DEFAULT_KEYS = ("is_default", "default")


def _numpy_global(*names: str) -> Any:
    """The first importable ``module.attr`` of ``names`` (numpy moved ``core`` to ``_core``)."""
    import importlib

    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return None


def _safe_codecs_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, restricted to latin-1."""
    normalized = str(encoding).lower().replace("-", "").replace("_", "")
    if not isinstance(text, str) or normalized not in ("latin1", "iso88591", "l1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_global("numpy._core.multiarray._reconstruct",
                                "numpy.core.multiarray._reconstruct")
    scalar = _numpy_global("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
    frombuffer = _numpy_global("numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")
    allowed: dict[tuple[str, str], Any] = {}
    for builtins in ("builtins", "__builtin__"):
        for name, value in (("list", list), ("dict", dict), ("tuple", tuple), ("set", set),
                            ("frozenset", frozenset), ("bytearray", bytearray),
                            ("complex", complex)):
            allowed[(builtins, name)] = value
    allowed[("collections", "OrderedDict")] = OrderedDict
    allowed[("_codecs", "encode")] = _safe_codecs_encode
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return {key: value for key, value in allowed.items() if value is not None}


class RefusedGlobal(pickle.UnpicklingError):
    """Raised by :class:`RestrictedUnpickler` for a global outside the allow-list."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        super().__init__(f"{module}.{name}")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals (containers, numpy arrays/scalars).

    Everything a pickle can build without a global (str, bytes, int, float, bool, None, list,
    tuple, dict, set) still works; ``find_class`` raises :class:`RefusedGlobal` for the rest, so
    no other callable is ever looked up, let alone called.
    """

    ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not supported")


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; BenchError naming file and reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BenchError(f"cannot read: {error.strerror or error}", source=str(path)) from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedGlobal as error:
        raise BenchError(f"refused to unpickle global {error.module}.{error.name}: only plain "
                         "containers, strings, numbers and numpy arrays are allowed in a split "
                         "pickle", source=str(path)) from None
    except Exception as error:  # truncated or malformed: pickle raises many types
        raise BenchError(f"not a readable pickle ({type(error).__name__}: {error})",
                         source=str(path)) from None


# --- interpreting the content -------------------------------------------------------------------


def _class_list(value: Any, where: str, source: str) -> list[str]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, set, frozenset)):
        raise BenchError(f"expected a list of class names, got {type(value).__name__}",
                         source=source, field=where)
    names = []
    for item in value:
        if isinstance(item, np.generic):
            item = item.item()
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise BenchError(f"class names must be strings or integers, got "
                             f"{type(item).__name__}", source=source, field=where)
        names.append(str(item))
    if not names:
        raise BenchError("no classes", source=source, field=where)
    if len(set(names)) != len(names):
        raise BenchError("a class is listed twice", source=source, field=where)
    return sorted(names) if isinstance(value, (set, frozenset)) else names


def _first(entry: Mapping, keys: Sequence[str]) -> tuple[str | None, Any]:
    for key in keys:
        if key in entry:
            return key, entry[key]
    return None, None


def _as_split_list(content: Any, source: str) -> list[tuple[str, Mapping]]:
    if isinstance(content, Mapping) and "splits" in content:
        content = content["splits"]
    if isinstance(content, Mapping):
        items = list(content.items())
        if all(isinstance(v, Mapping) for _, v in items):
            return sorted(((str(k), v) for k, v in items), key=lambda kv: _split_order(kv[0]))
    if isinstance(content, Sequence) and not isinstance(content, (str, bytes)):
        if all(isinstance(v, Mapping) for v in content):
            return [(str(v.get("id", i + 1)), v) for i, v in enumerate(content)]
    raise BenchError(f"expected a dict of splits keyed by split id (or a list of split dicts), "
                     f"got {type(content).__name__}", source=source)


def _split_order(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def import_oodml_pickle(path: str | Path, *, dataset: str,
                        default_id: str | None = None) -> dict[str, Any]:
    """Read an ooDML split pickle safely and return a bench split file (see fid_sequence)."""
    path = Path(path)
    source = str(path)
    content = restricted_load(path)
    entries = []
    for number, (split_id, entry) in enumerate(_as_split_list(content, source), start=1):
        where = f"split {split_id}"
        train_key, train = _first(entry, TRAIN_KEYS)
        test_key, test = _first(entry, TEST_KEYS)
        if train_key is None or test_key is None:
            raise BenchError(f"no train/test class lists (keys found: "
                             f"{', '.join(sorted(map(str, entry)))})", source=source, field=where)
        fid_key, fid = _first(entry, FID_KEYS)
        if isinstance(fid, np.generic):
            fid = fid.item()
        if fid is not None and (isinstance(fid, bool) or not isinstance(fid, (int, float))
                                or not math.isfinite(fid)):
            raise BenchError(f"FID must be a finite number, got {fid!r}", source=source,
                             field=f"{where}.{fid_key}")
        _, flag = _first(entry, DEFAULT_KEYS)
        train_names = _class_list(train, f"{where}.{train_key}", source)
        test_names = _class_list(test, f"{where}.{test_key}", source)
        shared = set(train_names) & set(test_names)
        if shared:
            raise BenchError(f"train and test share {len(shared)} classes (e.g. "
                             f"{sorted(shared)[0]!r})", source=source, field=where)
        entries.append({
            "id": number,
            "source_id": split_id,
            "stage": "imported",
            "is_default": (split_id == str(default_id)) if default_id is not None
            else bool(flag),
            "fid": None if fid is None else round(float(fid), 6),
            "train_classes": train_names,
            "test_classes": test_names,
        })
    if default_id is not None and not any(e["is_default"] for e in entries):
        known = ", ".join(e["source_id"] for e in entries)
        raise BenchError(f"no split with id {default_id!r} (ids: {known})", field="--default-id")
    defaults = [e["source_id"] for e in entries if e["is_default"]]
    if len(defaults) > 1:
        raise BenchError(f"{len(defaults)} splits are marked default (ids: {', '.join(defaults)}); "
                         f"pick one with --default-id", source=source)
    return split_document(
        entries,
        dataset=dataset,
        extractor=None,
        imported_from={"file": path.name,
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                       "kind": "ooDML split pickle"},
        parameters={},
    )
