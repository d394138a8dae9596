"""A whole FID split sequence: the fast incremental path against a plain re-implementation.

Why: ooDML's recipe recomputes a d x d covariance pair and ``scipy.linalg.sqrtm`` of their
product after every swap and removal; with 2048-d features that is O(d^3) per step. bench's
:func:`bench.splits.fid_sequence.generate_sequence` keeps the side means incrementally and computes
each FID in the centroids' own low-rank space (:class:`bench.fid.ClassSetFid`).

Data: ``--classes`` synthetic class centroids in ``--dim`` dimensions (four latent groups + a
low-rank part + isotropic noise, seeded), default split = first half vs second half.

* fast: ``generate_sequence`` (swap stage, removal stage, easier splits), ooDML's parameters.
* plain: an independent, straightforward re-implementation of the same rules that recomputes the
  means with ``numpy.mean`` and every FID with :func:`bench.fid.fid_plain` (full covariances,
  ``scipy.linalg.sqrtm``).

Both runs must produce the same sequence (same class sets at every step, FIDs equal within 1e-6
relative); the script asserts it and prints both times and their ratio. ``--plain-evals N`` times
only N plain FID evaluations (on the fast sequence's splits) and EXTRAPOLATES the plain total from
the number of evaluations the sequence needs; the output says so.

Run from the repository root: ``python benchmarks/fid_splits.py`` (results: benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fid import fid_plain  # noqa: E402
from bench.splits.fid_sequence import SequenceParams, generate_sequence  # noqa: E402


def synthetic_centroids(classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """Seeded class centroids with structure for the swaps to find: 4 groups + rank-24 + noise.

    Scaled so that the FIDs (about 3-9) are of the order the embedded datasets give with
    MobileNetV2 features (0.5-25).
    """
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 4, size=classes)
    centers = rng.normal(size=(4, dim)) * 0.035
    latent = rng.normal(size=(classes, 24)) @ rng.normal(size=(24, dim)) * 0.008
    return centers[groups] + latent + rng.normal(size=(classes, dim)) * 0.025


class PlainSequence:
    """The sequence rules written directly: sets of classes, means and FIDs recomputed each time."""

    def __init__(self, x: np.ndarray, params: SequenceParams) -> None:
        self.x, self.p = x, params
        self.evaluations = 0

    def fid(self, train: list[int], test: list[int]) -> float:
        self.evaluations += 1
        return fid_plain(self.x[sorted(train)], self.x[sorted(test)], self.p.eps)

    def scores(self, own: list[int], other: list[int]) -> dict[int, float]:
        mu_own, mu_other = self.x[own].mean(axis=0), self.x[other].mean(axis=0)
        return {c: float(np.linalg.norm(self.x[c] - mu_other) - np.linalg.norm(self.x[c] - mu_own))
                for c in own}

    @staticmethod
    def ranked(scores: dict[int, float], barred: set[int], highest: bool) -> list[int]:
        candidates = [c for c in scores if c not in barred]
        return sorted(candidates, key=lambda c: (-scores[c] if highest else scores[c], c))

    def swaps(self, train, test, start, *, easier, iterations, stage):
        recent: deque = deque(maxlen=self.p.swap_memory)
        out, current = [], start
        for _ in range(iterations):
            barred = {c for pair in recent for c in pair}
            a = self.ranked(self.scores(train, test), barred, easier)[:self.p.swaps_per_iteration]
            b = self.ranked(self.scores(test, train), barred, easier)[:self.p.swaps_per_iteration]
            pairs = list(zip(a, b, strict=False))
            if not pairs:
                break
            new_train = [c for c in train if c not in a[:len(pairs)]] + b[:len(pairs)]
            new_test = [c for c in test if c not in b[:len(pairs)]] + a[:len(pairs)]
            fid = self.fid(new_train, new_test)
            if not ((fid < current) if easier else (fid > current)):
                break
            recent.extend(pairs)
            train, test, current = new_train, new_test, fid
            out.append((stage, tuple(sorted(train)), tuple(sorted(test)), fid))
        return out, train, test

    def run(self, train: list[int], test: list[int]) -> list[tuple]:
        default = ("default", tuple(sorted(train)), tuple(sorted(test)), self.fid(train, test))
        easier, _, _ = self.swaps(train, test, default[3], easier=True,
                                  iterations=self.p.easier_iterations, stage="easier")
        swaps, train, test = self.swaps(train, test, default[3], easier=False,
                                        iterations=self.p.max_swap_iterations, stage="swap")
        base = min(len(default[1]), len(default[2]))
        step = max(1, round(self.p.removal_fraction * base))
        floor = max(2, math.ceil(self.p.min_fraction * base - 1e-9))
        removals = []
        while min(len(train), len(test)) - step >= floor:
            target = min(len(train), len(test)) - step
            drop_a = self.ranked(self.scores(train, test), set(), False)[:len(train) - target]
            drop_b = self.ranked(self.scores(test, train), set(), False)[:len(test) - target]
            train = [c for c in train if c not in drop_a]
            test = [c for c in test if c not in drop_b]
            removals.append(("removal", tuple(sorted(train)), tuple(sorted(test)),
                             self.fid(train, test)))
        return [*reversed(easier), default, *swaps, *removals]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="fast-path runs (median)")
    parser.add_argument("--plain-evals", type=int, default=0, metavar="N",
                        help="time only N plain FID evaluations and extrapolate (stated)")
    args = parser.parse_args()

    x = synthetic_centroids(args.classes, args.dim, args.seed)
    half = args.classes // 2
    train, test = list(range(half)), list(range(half, args.classes))
    params = SequenceParams()
    print(f"# {args.classes} classes x {args.dim}-d (seed {args.seed}), default split "
          f"{half}/{args.classes - half}; params {params.to_dict()}")
    print(f"# {platform.processor() or platform.machine()}, numpy {np.__version__}, "
          f"python {platform.python_version()}")

    times = []
    for _ in range(args.repeats):  # cheap: repeat and take the median against load noise
        started = time.perf_counter()
        fast = generate_sequence(x, train, test, params)
        times.append(time.perf_counter() - started)
    fast_s = statistics.median(times)
    fast_rows = [(s.stage, s.train, s.test, s.fid) for s in fast]
    stages = {stage: sum(r[0] == stage for r in fast_rows) for stage in
              ("easier", "default", "swap", "removal")}
    print(f"fast : {fast_s:8.3f} s for {len(fast)} splits {stages} (median of {len(times)} runs;"
          f" min {min(times):.3f} s, max {max(times):.3f} s)")

    plain = PlainSequence(x, params)
    if args.plain_evals:
        # Time N plain FIDs on the fast sequence's own splits, then scale by the evaluation
        # count a full plain run needs (every recorded split + the rejected last iterations).
        sample = fast_rows[:args.plain_evals]
        started = time.perf_counter()
        for _, tr, te, value in sample:
            assert abs(plain.fid(list(tr), list(te)) - value) <= 1e-6 * abs(value)
        per_eval = (time.perf_counter() - started) / len(sample)
        needed = len(fast) + (1 if params.easier_iterations else 0) + 1
        plain_s = per_eval * needed
        print(f"plain: EXTRAPOLATED {plain_s:8.1f} s = {per_eval:.2f} s per FID (measured on "
              f"{len(sample)}) x about {needed} FID evaluations; sequence equality NOT checked")
    else:
        started = time.perf_counter()
        plain_rows = plain.run(train, test)
        plain_s = time.perf_counter() - started
        print(f"plain: {plain_s:8.1f} s for {len(plain_rows)} splits "
              f"({plain.evaluations} FID evaluations, {plain_s / plain.evaluations:.2f} s each)")
        assert len(plain_rows) == len(fast_rows), (len(plain_rows), len(fast_rows))
        worst = 0.0
        for (sa, tra, tea, fa), (sb, trb, teb, fb) in zip(fast_rows, plain_rows, strict=True):
            assert (sa, tra, tea) == (sb, trb, teb), f"sequences differ at a {sa} split"
            worst = max(worst, abs(fa - fb) / abs(fb))
        assert worst <= 1e-6, worst
        print(f"same sequence: {len(fast_rows)} splits, identical class sets, FID max relative "
              f"difference {worst:.1e}")
    for stage, tr, te, value in fast_rows:
        print(f"  {stage:8s} {len(tr):4d}/{len(te):<4d} FID {value:10.4f}")
    print(f"speed-up (plain / fast): {plain_s / fast_s:,.0f}x (target >= 50x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
