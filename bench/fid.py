"""Fréchet distance between two sets of class centroids, as ooDML measures a split's difficulty.

ooDML fits one Gaussian to the per-class MEAN features of the train classes and one to those of
the test classes, adds ``eps = 1e-8`` to both covariance diagonals and takes the Fréchet distance

    FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

:func:`fid_plain` is that recipe verbatim (full d x d covariances, ``scipy.linalg.sqrtm``, real
part): the reference. It costs O(d^3) per call and is numerically delicate, because with n << d
centroids both covariances are rank-deficient apart from ``eps``.

:func:`fid_fast` computes the same number in the centroids' own low-rank space.
Let A (d x n1) and B (d x n2) hold the centred centroids, S1 = A A^T/(n1-1) + eps I,
S2 = B B^T/(n2-1) + eps I, and let Q (d x k, orthonormal, k <= d) span a space containing the
columns of both A and B (a QR of [A B]; Q = I when n1 + n2 >= d). With A = Q R1, B = Q R2 and P
an orthonormal basis of the (d - k)-dimensional complement, both covariances are block-diagonal
in the basis [Q P]:

    S1 = [Q P] diag(C1 + eps I_k, eps I_{d-k}) [Q P]^T,   C1 = R1 R1^T/(n1-1)   (same for S2)

so S1 S2 = [Q P] diag((C1 + eps I)(C2 + eps I), eps^2 I) [Q P]^T and

    Tr (S1 S2)^(1/2) = Tr ((C1 + eps I)(C2 + eps I))^(1/2) + (d - k) eps,
    Tr S1 = ||A||_F^2/(n1-1) + d eps.

For the k x k part write C1 + eps I = T1^T T1 (T1 from a QR of [R1^T/sqrt(n1-1); sqrt(eps) I],
which never squares the condition number); the eigenvalues of (C1 + eps I)(C2 + eps I) are those
of (T1 T2^T)(T1 T2^T)^T, so the trace of the square root is the sum of the singular values of
T1 T2^T. Everything costs O(d (n1 + n2)^2) instead of O(d^3).

:class:`ClassSetFid` is the incremental form used by split sequences: classes move between the
train side, the test side and "removed", the side sums (hence the means) are updated in O(d) per
move, and the covariances are never formed: with the Gram matrix G = X X^T of all centroids
(computed once) and per-side row sums of G (updated in O(C) per move), the centred Gram matrix of
the current sides is assembled directly and factored (H = R^T R), which gives R1, R2 above.
"""

from __future__ import annotations

import warnings

import numpy as np

EPS = 1e-8
# Above this many centroids the C x C Gram matrix is not kept (memory, O(m^3) factorisations);
# the engine then works in feature space (still O(d) updates of the means).
GRAM_LIMIT = 4096


def class_centroids(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted class ids, per-class mean features in float64), one row per class present."""
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not match")
    classes, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(classes))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(features[order].astype(np.float64), starts, axis=0)
    return classes, sums / counts[:, None]


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (n, d) arrays with the same d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each set needs at least 2 centroids, got {len(a)} and {len(b)}")
    return a, b


def fid_plain(centroids_a: np.ndarray, centroids_b: np.ndarray, eps: float = EPS) -> float:
    """The reference: full covariances + eps I, ``scipy.linalg.sqrtm`` of S1 S2, real part."""
    import scipy.linalg

    a, b = _check_pair(centroids_a, centroids_b)
    d = a.shape[1]
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1 = np.atleast_2d(np.cov(a, rowvar=False)) + eps * np.eye(d)
    s2 = np.atleast_2d(np.cov(b, rowvar=False)) + eps * np.eye(d)
    with warnings.catch_warnings():  # near-singular products are expected here
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _trace_sqrt(f1: np.ndarray, f2: np.ndarray, eps: float) -> float:
    """Tr ((f1 f1^T + eps I)(f2 f2^T + eps I))^(1/2) for k x n1 and k x n2 factors."""
    k = f1.shape[0]
    if k == 0:
        return 0.0
    ridge = np.sqrt(eps) * np.eye(k)
    t1 = np.linalg.qr(np.concatenate([f1.T, ridge]), mode="r")  # t1^T t1 = f1 f1^T + eps I
    t2 = np.linalg.qr(np.concatenate([f2.T, ridge]), mode="r")
    return float(np.linalg.svd(t1 @ t2.T, compute_uv=False).sum())


def _fid_from_factors(diff: np.ndarray, f1: np.ndarray, f2: np.ndarray, d: int,
                      eps: float) -> float:
    """FID from the mean difference and scaled coordinates f_s = R_s/sqrt(n_s - 1) (k x n_s)."""
    k = f1.shape[0]
    if k > d:
        raise ValueError(f"frame of {k} dimensions in a {d}-dimensional space")
    trace_1 = float(np.einsum("ij,ij->", f1, f1)) + d * eps
    trace_2 = float(np.einsum("ij,ij->", f2, f2)) + d * eps
    trace_sqrt = _trace_sqrt(f1, f2, eps) + (d - k) * eps
    return float(diff @ diff) + trace_1 + trace_2 - 2.0 * trace_sqrt


def fid_fast(centroids_a: np.ndarray, centroids_b: np.ndarray, eps: float = EPS) -> float:
    """Same value as :func:`fid_plain`, computed in the span of the centred centroids."""
    a, b = _check_pair(centroids_a, centroids_b)
    (n1, d), n2 = a.shape, len(b)
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    y1, y2 = (a - mu1).T, (b - mu2).T  # d x n1, d x n2
    if n1 + n2 < d:  # coordinates in an orthonormal basis of span([A B])
        r = np.linalg.qr(np.concatenate([y1, y2], axis=1), mode="r")
        y1, y2 = r[:, :n1], r[:, n1:]
    return _fid_from_factors(mu1 - mu2, y1 / np.sqrt(n1 - 1), y2 / np.sqrt(n2 - 1), d, eps)


TRAIN, TEST, REMOVED = 0, 1, -1


class ClassSetFid:
    """FID between the train and test sides of one centroid table, kept up to date as classes move.

    ``side[c]`` is ``TRAIN`` (0), ``TEST`` (1) or ``REMOVED`` (-1). :meth:`move` updates the side
    sums (and, in Gram mode, the per-side row sums of the Gram matrix) in O(d + C); :meth:`fid`
    then costs O(m^3) for the m classes on the two sides, independent of d.
    ``mode``: ``"gram"``, ``"features"`` or ``"auto"`` (Gram when at most ``GRAM_LIMIT`` classes).
    """

    def __init__(self, centroids: np.ndarray, train, test, *, eps: float = EPS,
                 mode: str = "auto") -> None:
        x = np.asarray(centroids, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"centroids must be (classes, dim), got {x.shape}")
        # FID and the distances below are translation invariant: centring once keeps the
        # Gram entries small (less cancellation when the features share a large offset).
        self.x = x - x.mean(axis=0)
        self.eps = float(eps)
        count, self.dim = self.x.shape
        if mode == "auto":
            mode = "gram" if count <= GRAM_LIMIT else "features"
        if mode not in ("gram", "features"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.side = np.full(count, REMOVED, dtype=np.int8)
        self.side[np.asarray(train, dtype=np.int64)] = TRAIN
        test = np.asarray(test, dtype=np.int64)
        if np.any(self.side[test] != REMOVED):
            raise ValueError("train and test share classes")
        self.side[test] = TEST
        self.counts = np.array([np.sum(self.side == s) for s in (TRAIN, TEST)], dtype=np.int64)
        self.sums = np.stack([self.x[self.side == s].sum(axis=0) for s in (TRAIN, TEST)])
        self.gram = None
        if mode == "gram":
            self.gram = self.x @ self.x.T
            self.gram_sums = np.stack([self.gram[:, self.side == s].sum(axis=1)
                                       for s in (TRAIN, TEST)])

    def members(self, side: int) -> np.ndarray:
        """Class indices (sorted) on ``side``."""
        return np.flatnonzero(self.side == side)

    def mean(self, side: int) -> np.ndarray:
        return self.sums[side] / self.counts[side]

    def move(self, cls: int, to: int) -> None:
        """Put class ``cls`` on side ``to`` (TRAIN, TEST or REMOVED)."""
        old = int(self.side[cls])
        if old == to:
            return
        if old != REMOVED:
            self.sums[old] -= self.x[cls]
            self.counts[old] -= 1
            if self.gram is not None:
                self.gram_sums[old] -= self.gram[:, cls]
        if to != REMOVED:
            self.sums[to] += self.x[cls]
            self.counts[to] += 1
            if self.gram is not None:
                self.gram_sums[to] += self.gram[:, cls]
        self.side[cls] = to

    def distances(self, classes: np.ndarray, side: int) -> np.ndarray:
        """Euclidean distance of each class centroid to the mean of ``side``."""
        return np.linalg.norm(self.x[classes] - self.mean(side), axis=1)

    def fid(self) -> float:
        idx1, idx2 = self.members(TRAIN), self.members(TEST)
        n1, n2 = len(idx1), len(idx2)
        if n1 < 2 or n2 < 2:
            raise ValueError(f"each side needs at least 2 classes, got {n1} and {n2}")
        diff = self.mean(TRAIN) - self.mean(TEST)
        if self.gram is None:
            y1 = (self.x[idx1] - self.mean(TRAIN)).T
            y2 = (self.x[idx2] - self.mean(TEST)).T
            if n1 + n2 < self.dim:
                r = np.linalg.qr(np.concatenate([y1, y2], axis=1), mode="r")
                y1, y2 = r[:, :n1], r[:, n1:]
            return _fid_from_factors(diff, y1 / np.sqrt(n1 - 1), y2 / np.sqrt(n2 - 1),
                                     self.dim, self.eps)
        # Centred Gram matrix H_ij = (x_i - mu_s(i)) . (x_j - mu_s(j)) of both sides.
        idx = np.concatenate([idx1, idx2])
        is_test = np.arange(n1 + n2) >= n1
        # dot[i, j] = x_i . mu_s(j), from the incrementally kept row sums of G.
        to_mean = np.stack([self.gram_sums[TRAIN][idx] / n1, self.gram_sums[TEST][idx] / n2])
        dot = np.where(is_test[None, :], to_mean[TEST][:, None], to_mean[TRAIN][:, None])
        mu = np.stack([self.mean(TRAIN), self.mean(TEST)])
        mu_dot = (mu @ mu.T)[is_test.astype(int)][:, is_test.astype(int)]
        h = self.gram[np.ix_(idx, idx)] - dot - dot.T + mu_dot
        h = (h + h.T) / 2
        values, vectors = np.linalg.eigh(h)
        k = min(n1 + n2, self.dim)  # H has rank <= d: keep the top k eigenpairs
        values, vectors = np.clip(values[-k:], 0.0, None), vectors[:, -k:]
        r = np.sqrt(values)[:, None] * vectors.T  # r^T r = H: coordinates in a k-dim frame
        return _fid_from_factors(diff, r[:, :n1] / np.sqrt(n1 - 1), r[:, n1:] / np.sqrt(n2 - 1),
                                 self.dim, self.eps)
