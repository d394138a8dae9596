"""One atomic write for every file bench keeps (results, run files, split files, embeddings,
checkpoints, the data cache): a temporary file beside the target, moved into place with
``os.replace``, so a kill or a full disk never leaves a half-written file, and removed on any
failure, so no ``.tmp`` file is left behind either.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *,
                 permissions: int | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing (``mode`` "w": UTF-8 text, "wb": bytes); on a clean
    exit it replaces ``path``. ``permissions``: e.g. 0o644 for a shared cache (mkstemp makes
    0600). An OSError without a file name is given ``path``'s, so its one-line report names it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        if permissions is not None:
            os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``text`` as the whole of ``path``, atomically."""
    with atomic_write(path) as handle:
        handle.write(text)
