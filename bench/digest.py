"""Cache entries that carry the digest of their own content, verified on every read.

A cache file whose name (content key) is right but whose arrays are not what was stored, e.g.
rows reordered, truncated, another shape, a link to some other file, or a folder in its place,
must never be used: it is rebuilt, with one line on stderr saying so (never a traceback, never
silent use).

An entry is a plain ``np.savez`` archive (no pickle) holding the arrays and ``__sha256__``:
sha256 over each array's name, dtype, shape and bytes, in name order.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from bench.atomic import atomic_write

DIGEST_KEY = "__sha256__"


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of named arrays (name, dtype, shape and C-order bytes of each, sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes() if array.dtype.kind in "OU" else memoryview(array).cast("B"))
    return digest.hexdigest()


def note(path: Path, reason: str, action: str = "rebuilding it") -> None:
    """The one line a damaged cache entry gets."""
    print(f"bench: cache entry {path}: {reason}; {action}", file=sys.stderr)


def load_verified(path: Path) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """(arrays, None) when ``path`` is an intact entry; (None, reason) when it exists but is
    damaged; (None, None) when there is none."""
    if not os.path.lexists(path):
        return None, None
    if not path.is_file():
        kind = "a broken link" if path.is_symlink() else "not a regular file"
        return None, kind
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return None, "not a cache archive (a bare array without its digest)"
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        return None, f"unreadable ({type(error).__name__}: {' '.join(str(error).split())[:120]})"
    stored = arrays.pop(DIGEST_KEY, None)
    if stored is None:
        return None, "carries no content digest"
    if str(stored) != arrays_sha256(arrays):
        return None, "content does not match its digest (altered or damaged)"
    return arrays, None


def save_verified(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Store ``arrays`` with their digest atomically (temp file + ``os.replace``). False, with
    one line, when the entry's place is taken by something that is not a file (a folder)."""
    if os.path.lexists(path) and not path.is_symlink() and not path.is_file():
        note(path, "is not a regular file", "using the rebuilt data without caching it "
             "(remove it to cache again)")
        return False
    try:  # a shared cache should be readable: 0644, not mkstemp's 0600
        with atomic_write(path, "wb", permissions=0o644) as handle:
            np.savez(handle, **arrays, **{DIGEST_KEY: np.array(arrays_sha256(arrays))})
    except OSError as error:  # a full or read-only cache: the data is good, only not kept
        note(path, f"cannot be written ({error.strerror or error})", "using the data without "
             "caching it")
        return False
    return True
