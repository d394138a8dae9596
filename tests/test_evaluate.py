"""Tests for bench.evaluate.evaluate_retrieval: PML parity, hand-worked values, ties, inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from bench.errors import BenchError
from bench.evaluate import evaluate_retrieval, nearest_neighbours

PML_KEYS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
PML_SEED = 1234  # PML's FaissKMeans passes no seed, so faiss's default (1234) applies


def pml_accuracy(query, query_labels, reference=None, reference_labels=None, nmi=False):
    include = PML_KEYS + (("NMI",) if nmi else ())
    calc = AccuracyCalculator(include=include, k="max_bin_count", device=torch.device("cpu"))
    return calc.get_accuracy(query, query_labels, reference, reference_labels)


def random_set(rng: np.random.Generator, class_sizes: list[int], dim: int = 16,
               spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Clustered random embeddings (so the metrics are neither ~0 nor ~1)."""
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    centres = rng.standard_normal((len(class_sizes), dim)) * spread
    x = centres[labels] + rng.standard_normal((len(labels), dim))
    order = rng.permutation(len(labels))
    return x[order].astype(np.float32), labels[order]


CLASS_LAYOUTS = {
    "equal": [8] * 12,
    "uneven_with_singletons": [1, 2, 3, 5, 9, 14, 1, 4, 7, 20],
    "few_large": [40, 25, 31],
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", sorted(CLASS_LAYOUTS))
def test_matches_pml_self_excluded(seed: int, layout: str) -> None:
    x, y = random_set(np.random.default_rng(seed), CLASS_LAYOUTS[layout])
    ours = evaluate_retrieval(x, y, nmi=False)
    theirs = pml_accuracy(x, y)
    for key in PML_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", sorted(CLASS_LAYOUTS))
def test_matches_pml_query_to_gallery(seed: int, layout: str) -> None:
    rng = np.random.default_rng(100 + seed)
    x, y = random_set(rng, CLASS_LAYOUTS[layout])
    is_query = rng.random(len(y)) < 0.4
    # Queries of a class absent from the gallery are "lone" and must be skipped, as in PML.
    query, query_labels = x[is_query], y[is_query]
    gallery, gallery_labels = x[~is_query], y[~is_query]
    ours = evaluate_retrieval(query, query_labels, gallery, gallery_labels, nmi=False)
    theirs = pml_accuracy(query, query_labels, gallery, gallery_labels)
    for key in PML_KEYS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key


@pytest.mark.parametrize("layout", sorted(CLASS_LAYOUTS))
def test_nmi_matches_pml(layout: str) -> None:
    # Same data, same faiss k-means (20 iterations, k = number of classes) and the same seed
    # give the same clustering, so the NMI is identical: no k-means randomness is left and the
    # tolerance only absorbs float summation order in sklearn.
    x, y = random_set(np.random.default_rng(7), CLASS_LAYOUTS[layout])
    ours = evaluate_retrieval(x, y, seed=PML_SEED)["nmi"]
    theirs = pml_accuracy(x, y, nmi=True)["NMI"]
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert evaluate_retrieval(x, y, seed=PML_SEED)["nmi"] == ours  # deterministic


# Hand-worked 1-D example. Positions (label): 0:0.0(A) 1:1.0(A) 2:2.5(B) 3:4.5(A) 4:5.2(B)
# 5:9.5(B) 6:20.0(C). A and B have 3 members, so R = 2 with the self-match excluded; C is a
# singleton, so query 6 is "lone" and excluded. Neighbour order (distance) per query:
#   q0 A: 1A(1.0) 2B(2.5) 3A(4.5) 4B(5.2) 5B(9.5) 6C   hits@1,3 P@1=1 RP=1/2 AP@R=(1/1)/2=1/2
#   q1 A: 0A(1.0) 2B(1.5) 3A(3.5) 4B(4.2) 5B(8.5) 6C   hits@1,3 P@1=1 RP=1/2 AP@R=1/2
#   q2 B: 1A(1.5) 3A(2.0) 0A(2.5) 4B(2.7) 5B(7.0) 6C   hits@4,5 P@1=0 RP=0   AP@R=0
#   q3 A: 4B(0.7) 2B(2.0) 1A(3.5) 0A(4.5) 5B(5.0) 6C   hits@3,4 P@1=0 RP=0   AP@R=0
#   q4 B: 3A(0.7) 2B(2.7) 1A(4.2) 5B(4.3) 0A(5.2) 6C   hits@2,4 P@1=0 RP=1/2 AP@R=(1/2)/2=1/4
#   q5 B: 4B(4.3) 3A(5.0) 2B(7.0) 1A(8.5) 0A(9.5) 6C   hits@1,3 P@1=1 RP=1/2 AP@R=1/2
# Means over the 6 scored queries: P@1 = 3/6, RP = 2/6, MAP@R = (4*1/2 + 1/4 - 1/2)/6 = 7/24.
# First hit ranks 1,1,4,3,2,1: Recall@1 = 3/6, Recall@2 = 4/6, Recall@4 = Recall@8 = 6/6
# (only 6 neighbours exist, so Recall@8 looks at all of them).
HAND_X = np.array([[0.0], [1.0], [2.5], [4.5], [5.2], [9.5], [20.0]], dtype=np.float32)
HAND_Y = np.array(["A", "A", "B", "A", "B", "B", "C"])


def test_hand_worked_self_excluded() -> None:
    got = evaluate_retrieval(HAND_X, HAND_Y, nmi=False)
    expected = {
        "precision_at_1": 3 / 6, "r_precision": 2 / 6, "mean_average_precision_at_r": 7 / 24,
        "recall_at_1": 3 / 6, "recall_at_2": 4 / 6, "recall_at_4": 1.0, "recall_at_8": 1.0,
    }
    assert got == pytest.approx(expected, abs=1e-12)


def test_hand_worked_query_to_gallery() -> None:
    # Gallery = the 6 labelled A/B points above; R = 3 for both queries (no self to drop).
    #   q 0.9(A): 1A(0.1) 0A(0.9) 2B(1.6) 3A(3.6) ...  P@1=1 RP=2/3 AP@R=(1/1+2/2)/3=2/3
    #   q 9.6(B): 5B(0.1) 4B(4.4) 3A(5.1) 2B(7.1) ...  P@1=1 RP=2/3 AP@R=2/3
    #   q 30(D): no D in the gallery -> lone, excluded.
    query = np.array([[0.9], [9.6], [30.0]], dtype=np.float32)
    got = evaluate_retrieval(query, np.array(["A", "B", "D"]), HAND_X[:6], HAND_Y[:6],
                             nmi=False, recall_ks=(1, 2))
    expected = {"precision_at_1": 1.0, "r_precision": 2 / 3,
                "mean_average_precision_at_r": 2 / 3, "recall_at_1": 1.0, "recall_at_2": 1.0}
    assert got == pytest.approx(expected, abs=1e-12)


def test_ties_lower_index_first() -> None:
    # Query 0 sits at 0; 5 duplicates it; 1, 2, 3 tie at distance 1; 4 is at distance 2.
    x = np.array([[0.0], [1.0], [1.0], [1.0], [2.0], [0.0]], dtype=np.float32)
    self_index = np.arange(6)
    nn = nearest_neighbours(x, x, 3, self_index=self_index)
    assert nn[0].tolist() == [5, 1, 2]  # tie straddling position 3: lowest indices kept
    assert nn[5].tolist() == [0, 1, 2]
    assert nn[2].tolist() == [1, 3, 0]  # duplicates 1 and 3 (distance 0) before 0 and 4
    assert np.array_equal(nn, nearest_neighbours(x, x, 3, self_index=self_index))


def brute_force(query: np.ndarray, reference: np.ndarray, k: int,
                self_index: np.ndarray | None) -> np.ndarray:
    d = ((query[:, None, :].astype(np.float64) - reference[None]) ** 2).sum(-1)
    if self_index is not None:
        d[np.arange(len(query)), self_index] = np.inf
    idx = np.broadcast_to(np.arange(len(reference)), d.shape)
    return np.lexsort((idx, d), axis=-1)[:, :k]


@pytest.mark.parametrize("seed", [0, 1])
def test_ties_match_brute_force_on_integer_grid(seed: int) -> None:
    # Small integer coordinates: every distance is exact in float32 (faiss and numpy alike), so
    # there are many genuine ties and duplicates, and the expected order is unambiguous.
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(300, 3)).astype(np.float32)
    for k in (1, 5, 17):
        got = nearest_neighbours(x, x, k, self_index=np.arange(len(x)))
        assert np.array_equal(got, brute_force(x, x, k, np.arange(len(x))))
        got = nearest_neighbours(x[:50], x[50:], k)
        assert np.array_equal(got, brute_force(x[:50], x[50:], k, None))
    y = rng.integers(0, 4, size=len(x))
    assert evaluate_retrieval(x, y, nmi=False) == evaluate_retrieval(x, y, nmi=False)


def neg_sq_distance(block: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return -((block[:, None, :].astype(np.float64) - reference[None]) ** 2).sum(-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_score_fn_matches_l2(seed: int) -> None:
    x, y = random_set(np.random.default_rng(seed), CLASS_LAYOUTS["uneven_with_singletons"])
    l2 = evaluate_retrieval(x, y, nmi=False)
    scored = evaluate_retrieval(x, y, nmi=False, score_fn=neg_sq_distance, chunk_size=7)
    assert scored == pytest.approx(l2, abs=1e-12)
    l2 = evaluate_retrieval(x[:30], y[:30], x[30:], y[30:], nmi=False)
    scored = evaluate_retrieval(x[:30], y[:30], x[30:], y[30:], nmi=False,
                                score_fn=neg_sq_distance, chunk_size=4)
    assert scored == pytest.approx(l2, abs=1e-12)


def test_score_fn_ties_on_integer_grid() -> None:
    x = np.random.default_rng(3).integers(0, 3, size=(200, 2)).astype(np.float32)
    got = nearest_neighbours(x, x, 9, self_index=np.arange(200), score_fn=neg_sq_distance,
                             chunk_size=16)
    assert np.array_equal(got, brute_force(x, x, 9, np.arange(200)))


def test_large_label_ids_do_not_collide() -> None:
    # float32 cannot tell 2**24 from 2**24 + 1; labels are remapped to 0..C-1 first.
    x, y = random_set(np.random.default_rng(5), [6, 6, 6])
    big = np.array([2**24, 2**24 + 1, 2**24 + 2])[y]
    assert evaluate_retrieval(x, big, nmi=False) == evaluate_retrieval(x, y, nmi=False)


def test_torch_inputs_accepted() -> None:
    x, y = random_set(np.random.default_rng(6), [5, 5, 5])
    ours = evaluate_retrieval(torch.from_numpy(x).double(), torch.from_numpy(y), nmi=False)
    assert ours == evaluate_retrieval(x, y, nmi=False)


def test_all_lone_queries_give_nan() -> None:
    x = np.eye(3, dtype=np.float32)
    with pytest.warns(UserWarning, match="no query has a relevant reference"):
        got = evaluate_retrieval(x, [0, 1, 2], nmi=False)
    assert all(np.isnan(v) for v in got.values())


GOOD_X = np.zeros((4, 2), dtype=np.float32)
GOOD_Y = np.array([0, 0, 1, 1])
NAN_X = np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0], [2.0, 2.0]], dtype=np.float32)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"query": GOOD_X, "query_labels": GOOD_Y[:3]}, "query_labels: has 3 entries but there are 4"),
    ({"query": NAN_X, "query_labels": GOOD_Y}, "query: 1 of 4 rows contain NaN or inf"),
    ({"query": np.zeros((0, 2)), "query_labels": []}, "query: is empty"),
    ({"query": GOOD_X, "query_labels": GOOD_Y, "reference": np.zeros((0, 2)),
      "reference_labels": []}, "reference: is empty"),
    ({"query": GOOD_X, "query_labels": GOOD_Y, "reference": np.zeros((4, 3)),
      "reference_labels": GOOD_Y}, "reference: has dimension 3 but query has 2"),
    ({"query": GOOD_X, "query_labels": GOOD_Y, "reference": GOOD_X},
     "reference_labels: is missing"),
    ({"query": GOOD_X[:1], "query_labels": GOOD_Y[:1]}, "needs at least 2 embeddings"),
    ({"query": GOOD_X[0], "query_labels": GOOD_Y}, "must be a 2-D"),
    ({"query": GOOD_X, "query_labels": GOOD_Y, "k": 0}, "k: must be 'max_bin_count'"),
    ({"query": GOOD_X, "query_labels": GOOD_Y, "recall_ks": (0,)}, "recall_ks: must be"),
    ({"query": GOOD_X, "query_labels": GOOD_Y, "score_fn": lambda q, r: np.zeros(3)},
     "score_fn: returned shape (3,)"),
    ({"query": GOOD_X, "query_labels": GOOD_Y,
      "score_fn": lambda q, r: np.full((len(q), len(r)), np.nan)}, "score_fn: returned NaN"),
])
def test_bad_input_raises_bench_error(kwargs: dict, message: str) -> None:
    with pytest.raises(BenchError) as info:
        evaluate_retrieval(**kwargs)
    text = str(info.value)
    assert message in text
    assert text.startswith("evaluate_retrieval: ") and "\n" not in text


def test_own_float32_scores_rank_like_the_checked_float64_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows faiss leaves ambiguous (exact duplicates, ties at k) are re-ranked by this
    module's float32 scorer without the float64 copy a method's scores get: same neighbours."""
    import bench.evaluate.retrieval as retrieval

    rng = np.random.default_rng(5)
    base = rng.standard_normal((400, 16)).astype(np.float32)
    x = np.concatenate([base, base[:120], np.round(base[:80], 1)])  # duplicates, near-ties
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fast = nearest_neighbours(x, x, 12, self_index=np.arange(len(x)), chunk_size=64)
    real = retrieval.dense_neighbours
    monkeypatch.setattr(retrieval, "dense_neighbours",
                        lambda *a, own_scores=False, **k: real(*a, **k))
    checked = nearest_neighbours(x, x, 12, self_index=np.arange(len(x)), chunk_size=64)
    assert np.array_equal(fast, checked)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_by_score_with_ties_and_minus_infinity(dtype) -> None:
    from bench.evaluate.retrieval import top_k_by_score

    rng = np.random.default_rng(7)
    scores = rng.integers(-3, 3, size=(50, 40)).astype(dtype)
    scores[np.arange(50), rng.integers(0, 40, 50)] = -np.inf
    for k in (1, 4, 39):
        idx = np.broadcast_to(np.arange(40), scores.shape)
        expected = np.lexsort((idx, -scores), axis=-1)[:, :k]
        assert np.array_equal(top_k_by_score(scores, k), expected)
