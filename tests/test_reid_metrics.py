"""Tests for bench.evaluate.evaluate_reid (Market-1501 protocol), values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import BenchError
from bench.evaluate import evaluate_reid

# 1-D embeddings, so the ranking is the order of |query - gallery|.
# Gallery (index: position, identity, camera):
GALLERY = [
    (0.1, 1, 1),    # g0: same id AND same camera as query A -> removed for A
    (0.2, -1, 2),   # g1: junk -> always removed
    (0.3, 0, 2),    # g2: distractor (id 0) -> stays, as a negative
    (0.4, 1, 2),    # g3: match for A
    (0.5, 2, 1),    # g4: match for B (other camera); same camera as D -> removed for D
    (0.6, 1, 3),    # g5: match for A
    (100.1, 2, 2),  # g6: same id AND camera as B -> removed for B; a match for D (camera 1)
    (100.2, 0, 1),  # g7: distractor
    (100.3, 2, 3),  # g8: match for B and D
    (50.1, 3, 1),   # g9: only gallery image of id 3, same camera as query C
]
QUERIES = [
    (0.0, 1, 1),     # A
    (100.0, 2, 2),   # B
    (50.0, 3, 1),    # C: its only match is same-camera -> no valid match -> skipped
    (100.35, 2, 1),  # D
]
# Kept ranking per query (m = match, n = negative), after removals:
#   A: g2 n, g3 m, g4 n, g5 m, ...             first match rank 2; AP = (1/2 + 2/4)/2 = 1/2
#   B: g7 n, g8 m, g9 n, g5 n, g4 m, g3 .. g0  first match rank 2; AP = (1/2 + 2/5)/2 = 9/20
#   C: skipped
#   D: g8 m, g7 n, g6 m, g9 n, g5 ...          first match rank 1; AP = (1/1 + 2/3)/2 = 5/6
# CMC@1 = 1/3, CMC@5 = CMC@10 = 3/3, mAP = (1/2 + 9/20 + 5/6)/3 = (107/60)/3 = 107/180.
EXPECTED = {"cmc_1": 1 / 3, "cmc_5": 1.0, "cmc_10": 1.0, "mAP": 107 / 180}


def split(rows: list[tuple[float, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos, ids, cams = zip(*rows, strict=True)
    return np.array(pos, dtype=np.float32)[:, None], np.array(ids), np.array(cams)


def run(**kwargs: object) -> dict[str, float]:
    q, qi, qc = split(QUERIES)
    g, gi, gc = split(GALLERY)
    return evaluate_reid(q, qi, qc, g, gi, gc, **kwargs)


def test_hand_worked_market_protocol() -> None:
    assert run() == pytest.approx(EXPECTED, abs=1e-12)


def test_chunking_does_not_change_result() -> None:
    assert run(chunk_size=1) == pytest.approx(EXPECTED, abs=1e-12)


def test_score_fn_path_matches_distance_path() -> None:
    def neg_sq(block: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        return -((block[:, None, :] - gallery[None]) ** 2).sum(-1)

    assert run(score_fn=neg_sq, chunk_size=3) == pytest.approx(EXPECTED, abs=1e-12)


def test_junk_ids_configurable() -> None:
    # With no junk ids, g1 (id -1) becomes a negative at rank 1 for A: A's kept ranking is
    # g1 n, g2 n, g3 m, g4 n, g5 m -> AP = (1/3 + 2/5)/2 = 11/30 (B and D are unaffected:
    # g1 ranks below all their matches). mAP = (11/30 + 9/20 + 5/6)/3 = (99/60)/3 = 33/60.
    got = run(junk_ids=())
    assert got["mAP"] == pytest.approx(33 / 60, abs=1e-12)
    assert got["cmc_1"] == pytest.approx(1 / 3, abs=1e-12)


def test_custom_ranks() -> None:
    # First-match ranks 2, 2, 1.
    got = run(ranks=(1, 2))
    assert got == pytest.approx({"cmc_1": 1 / 3, "cmc_2": 1.0, "mAP": 107 / 180}, abs=1e-12)


def test_ties_lower_gallery_index_first() -> None:
    # Two gallery images at the same point: a negative (index 0) and a match (index 1).
    # Equal distances rank by gallery index, so the match is at rank 2, twice in a row.
    q = np.zeros((1, 2), dtype=np.float32)
    g = np.ones((2, 2), dtype=np.float32)
    got = evaluate_reid(q, [5], [1], g, [7, 5], [2, 2])
    assert got == {"cmc_1": 0.0, "cmc_5": 1.0, "cmc_10": 1.0, "mAP": 0.5}
    assert evaluate_reid(q, [5], [1], g, [7, 5], [2, 2]) == got


def test_no_valid_match_raises() -> None:
    q, qi, qc = split([QUERIES[2]])
    g, gi, gc = split(GALLERY)
    with pytest.raises(BenchError, match="no query has a valid gallery match"):
        evaluate_reid(q, qi, qc, g, gi, gc)


@pytest.mark.parametrize(("change", "message"), [
    ({"query_ids": [1, 2]}, "query_ids: has 2 entries but there are 4 embeddings"),
    ({"gallery_cams": [1]}, "gallery_cams: has 1 entries"),
    ({"query": np.full((4, 1), np.nan, dtype=np.float32)}, "query: 4 of 4 rows contain NaN"),
    ({"gallery": np.zeros((0, 1)), "gallery_ids": [], "gallery_cams": []}, "gallery: is empty"),
    ({"gallery": np.zeros((10, 2))}, "gallery: has dimension 2 but query has 1"),
    ({"query_ids": ["a", "b", "c", "d"]}, "query_ids: must be integers"),
    ({"ranks": (0,)}, "ranks: must be a non-empty sequence of positive integers"),
    ({"gallery_cams": ["c"] * 10}, "gallery_cams: dtype <U1 cannot be compared"),
])
def test_bad_input_raises_bench_error(change: dict, message: str) -> None:
    q, qi, qc = split(QUERIES)
    g, gi, gc = split(GALLERY)
    args = {"query": q, "query_ids": qi, "query_cams": qc, "gallery": g, "gallery_ids": gi,
            "gallery_cams": gc}
    args.update(change)
    with pytest.raises(BenchError) as info:
        evaluate_reid(**args)
    text = str(info.value)
    assert message in text
    assert text.startswith("evaluate_reid: ") and "\n" not in text
