"""One atomic write (bench.atomic) behind every file bench keeps: a failure mid-write keeps the
old file whole and leaves no temporary file, whichever writer failed (issue 13: two of the
four copies it replaced left ``.tmp`` files behind)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.atomic import atomic_write, write_text


class Boom(RuntimeError):
    pass


def only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_failure_inside_the_block_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(Boom), atomic_write(target) as handle:
        handle.write("half")
        raise Boom
    assert target.read_text(encoding="utf-8") == "old" and only(tmp_path) == ["a.txt"]


def test_split_file_that_cannot_be_serialised_leaves_no_temp(tmp_path: Path) -> None:
    from bench.splits.fid_sequence import write_split_file

    target = tmp_path / "splits.json"
    write_split_file({"splits": []}, target)
    with pytest.raises(TypeError):
        write_split_file({"splits": [{"fid": object()}]}, target)
    assert target.read_text(encoding="utf-8").startswith("{") and only(tmp_path) == [
        "splits.json"]


def test_binary_writers_clean_up(tmp_path: Path, monkeypatch) -> None:
    """Saved embeddings and the verified data cache go through the same write."""
    from bench import digest, embeddings

    def fail(*args, **kwargs):
        raise Boom

    monkeypatch.setattr(np, "savez_compressed", fail)
    with pytest.raises(Boom):
        embeddings.save(tmp_path / "e.npz", query=[np.zeros((2, 2))],
                        query_labels=np.zeros(2, np.int64), meta={})
    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(Boom):
        digest.save_verified(tmp_path / "c.npz", {"x": np.zeros(2)})
    assert only(tmp_path) == []


def test_permissions_and_file_name_in_os_errors(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    with atomic_write(target, "wb", permissions=0o644) as handle:
        handle.write(b"x")
    assert target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(OSError) as caught, atomic_write(target) as handle:
        raise OSError(28, "No space left on device")
    assert caught.value.filename == str(target) and target.read_bytes() == b"x"
