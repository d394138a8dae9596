"""Reading user YAML files (protocols, claims) safely, with one-line errors naming the file.

Bounded by construction: at most ``MAX_BYTES`` are read (``bench validate /dev/zero`` stops at
once), the document may expand to at most ``MAX_NODES`` nodes counting every alias use (a
"billion laughs" alias bomb is refused before anything is built from it), and a key given twice
in one mapping is refused with its line (YAML would silently keep the last).
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bench.errors import BenchError

MAX_BYTES = 1 << 20  # 1 MiB: a protocol or claims file is a few kB
MAX_NODES = 100_000  # after alias expansion
MAX_DEPTH = 64

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _expanded_size(root: Node) -> int:
    """Nodes of the document with every alias expanded (memoised per node, so a bomb is sized
    without being expanded); _Refused past MAX_NODES or MAX_DEPTH, or on a recursive alias."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Refused("a recursive alias (a node that contains itself)", node.start_mark)
        if depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        active.discard(key)
        if total > MAX_NODES:
            raise _Refused(f"expands to more than {MAX_NODES:,} values (aliases counted at every "
                           "use): refused as an alias bomb", node.start_mark)
        sizes[key] = total
        return total

    size(root, 0)
    return sizes[id(root)]


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that sizes the document before constructing it and refuses
    duplicate keys."""

    def construct_document(self, node: Node) -> Any:
        _expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=False)
            try:
                first = seen.get(key)
                seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it itself
            if first is not None:
                raise _Refused(f"duplicate key {key!r} (first given on line {first}; YAML would "
                               "silently keep the last)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_bounded(path: str | Path, *, what: str) -> bytes:
    """The bytes of ``path``; BenchError if unreadable or larger than ``MAX_BYTES`` (reads at
    most one byte more than that, so a device or an endless file cannot exhaust memory)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as error:
        raise BenchError(f"cannot read {what} ({error.strerror or error})",
                         source=str(path)) from None
    if len(raw) > MAX_BYTES:
        raise BenchError(f"{what} file is larger than {MAX_BYTES // 1024} KiB (limit; is it the "
                         "right file?)", source=str(path))
    return raw


def decode(raw: bytes, path: str | Path, *, what: str) -> str:
    """UTF-8 text (UTF-16/32 accepted with a byte-order mark); BenchError otherwise."""
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise BenchError(f"{what} is not UTF-8 text ({error.reason} at byte {error.start}); "
                         "save it as UTF-8", source=str(path)) from None
    if "\0" in text:
        raise BenchError(f"{what} contains NUL characters (a binary file?)", source=str(path))
    return text


def read_text_bounded(path: str | Path, *, what: str) -> str:
    """The decoded text of a YAML file, with the size and encoding checks of :func:`read_yaml`."""
    return decode(read_bounded(path, what=what), path, what=what)


def read_yaml(path: str | Path, *, what: str) -> tuple[Any, bytes]:
    """Bounded safe load of ``path`` and its raw bytes; BenchError if unreadable, too big, not
    text, not YAML, an alias bomb or a mapping with a duplicate key."""
    raw = read_bounded(path, what=what)
    text = decode(raw, path, what=what)
    try:
        return yaml.load(text, Loader=BoundedLoader), raw  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise BenchError(f"not valid YAML: {where}{getattr(error, 'problem', error)}",
                         source=str(path)) from None
    except RecursionError:
        raise BenchError(f"not valid YAML: nested too deeply (limit {MAX_DEPTH})",
                         source=str(path)) from None
