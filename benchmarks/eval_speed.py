"""Speed and memory of ``bench.evaluate.evaluate_retrieval`` against PML's AccuracyCalculator.

Why: the evaluator runs after every trial of every method, so it must not be slower than the
PML baseline it replaces, must give the same numbers, and must not need an N x N matrix.

Both compute Precision@1, R-Precision, MAP@R and NMI on the same seeded, clustered float32
embeddings (``--per-class`` images per class), self-match excluded; ours also computes
Recall@{1,2,4,8} from the same neighbour list. Ours uses ``seed=1234`` = the faiss k-means
seed PML's FaissKMeans ends up with, so the NMI values are comparable exactly.

* Timing: one fresh process per N runs PML and ours alternately (ABBA order against drift from
  other load on the machine), ``--repeats`` times each, after a small warm-up; medians.
* Memory: one fresh process per (implementation, N) records the growth of peak RSS
  (``resource.getrusage``) over its post-import, post-data baseline during one call.

Run from the repository root: ``python benchmarks/eval_speed.py``

Recorded run (2026-11-22, 2-core CPU VM, 24 GB; other engineers' jobs kept load at ~4 during
the run, so absolute times are inflated ~3x versus an idle machine; the ABBA interleaving keeps
the ratio fair). Output of ``python benchmarks/eval_speed.py`` (long lines wrapped)::

    python 3.11.7, torch 2.14.1+cu130, faiss 1.15.1, torch threads 2, faiss omp threads 2

    N=5000 (250 classes x 20, dim 128); an N x N float32 matrix would be 95 MiB
      pml : median 1.75 s (runs 1.77, 1.74, 1.75); peak RSS growth 21 MiB
      ours: median 1.51 s (runs 1.51, 1.52, 1.45); peak RSS growth 21 MiB
      ratio ours/PML: 0.86
      precision_at_1               pml 0.477400000  ours 0.477400000
      r_precision                  pml 0.205189474  ours 0.205189474
      mean_average_precision_at_r  pml 0.113677827  ours 0.113677827
      nmi                          pml 0.632567064  ours 0.632567064
      ours only: {'recall_at_1': 0.4774, 'recall_at_2': 0.6296, 'recall_at_4': 0.7694,
                  'recall_at_8': 0.8696}

    N=10000 (500 classes x 20, dim 128); an N x N float32 matrix would be 381 MiB
      pml : median 3.11 s (runs 3.05, 3.11, 3.16); peak RSS growth 67 MiB
      ours: median 2.80 s (runs 2.81, 2.74, 2.80); peak RSS growth 35 MiB
      ratio ours/PML: 0.90
      precision_at_1               pml 0.366800000  ours 0.366800000
      r_precision                  pml 0.152405263  ours 0.152405263
      mean_average_precision_at_r  pml 0.076197679  ours 0.076197679
      nmi                          pml 0.605096391  ours 0.605096391
      ours only: {'recall_at_1': 0.3668, 'recall_at_2': 0.5085, 'recall_at_4': 0.6521,
                  'recall_at_8': 0.7839}

    N=20000 (1000 classes x 20, dim 128); an N x N float32 matrix would be 1526 MiB
      pml : median 7.62 s (runs 7.54, 7.62, 7.62); peak RSS growth 212 MiB
      ours: median 7.08 s (runs 7.08, 7.23, 7.01); peak RSS growth 72 MiB
      ratio ours/PML: 0.93
      precision_at_1               pml 0.285700000  ours 0.285700000
      r_precision                  pml 0.112771053  ours 0.112771053
      mean_average_precision_at_r  pml 0.052055321  ours 0.052055321
      nmi                          pml 0.596689410  ours 0.596689410
      ours only: {'recall_at_1': 0.2857, 'recall_at_2': 0.4073, 'recall_at_4': 0.54055,
                  'recall_at_8': 0.6712}

Reading: the values agree exactly; ours is 7-14% faster (both spend most of the time in the
same faiss search and k-means; ours skips PML's (classes x N) label-count matrix); our peak
RSS growth is ~linear in N (21 -> 35 -> 72 MiB), PML's grows faster (21 -> 67 -> 212 MiB).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PML_SEED = 1234
COMPARED = ("precision_at_1", "r_precision", "mean_average_precision_at_r", "nmi")
PML_NAMES = {"precision_at_1": "precision_at_1", "r_precision": "r_precision",
             "mean_average_precision_at_r": "mean_average_precision_at_r", "nmi": "NMI"}


def make_data(n: int, dim: int, per_class: int, seed: int = 0) -> tuple[Any, Any]:
    """Seeded clustered embeddings: class centre * 0.5 + unit Gaussian noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_classes = n // per_class
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.standard_normal((n_classes, dim)).astype(np.float32)
    x = centres[labels] * 0.5 + rng.standard_normal((len(labels), dim), dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32), labels


def make_sop_like(n: int, n_classes: int, dim: int, seed: int = 0) -> tuple[Any, Any]:
    """SOP-shaped data: ``n_classes`` classes of uneven size (at least 2 each, as SOP's 2-12),
    clustered as ``make_data``, L2-normalised like trained embeddings."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.sort(np.concatenate([np.arange(n_classes), np.arange(n_classes),
                                     rng.integers(0, n_classes, n - 2 * n_classes)]))
    centres = rng.standard_normal((n_classes, dim)).astype(np.float32)
    x = centres[labels] * 0.5 + rng.standard_normal((len(labels), dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32), labels


def sop_worker(impl: str, part: str, n: int, n_classes: int, dim: int,
               device: str) -> dict[str, Any]:
    """One implementation, one part (``knn``: P@1/R-Precision/MAP@R, or ``nmi``), one call:
    wall time and peak-RSS growth over the post-import, post-data baseline (and peak device
    memory for a torch device)."""
    import resource

    import numpy as np
    import torch

    x, labels = make_sop_like(n, n_classes, dim)
    warm_x, warm_labels = make_sop_like(2000, 400, dim, seed=1)
    names = ("nmi",) if part == "nmi" else COMPARED[:3]

    def call(data: Any, lab: Any) -> dict[str, float]:
        if impl == "pml":
            from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

            calc = AccuracyCalculator(include=tuple(PML_NAMES[k] for k in names),
                                      k="max_bin_count", device=torch.device("cpu"))
            raw = calc.get_accuracy(data, lab)
            return {k: float(raw[PML_NAMES[k]]) for k in names}
        from bench.evaluate import evaluate_retrieval
        from bench.evaluate.retrieval import encode_labels, nmi_score

        if part == "nmi":
            ids = encode_labels(lab, lab, "benchmark")[0]
            return {"nmi": nmi_score(data, ids, PML_SEED)}
        out = evaluate_retrieval(data, lab, nmi=False, recall_ks=(1,),
                                 device=None if impl == "ours" else device)
        return {k: out[k] for k in names}

    call(warm_x, warm_labels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    values = call(x, labels)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"seconds": seconds, "peak_rss_growth_mib": (after - before) / 1024,
           "peak_rss_mib": after / 1024, "values": values,
           "classes": int(len(np.unique(labels)))}
    if impl == "torch" and device.startswith("cuda"):
        out["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def report_sop(n: int, n_classes: int, dim: int, impls: list[str], device: str,
               parts: list[str]) -> None:
    """SOP scale: each implementation once per part, in its own process (PML needs ~9 GB)."""
    import os

    print(f"\nSOP scale: N={n}, {n_classes} classes (2-12+ per class), dim {dim}, "
          f"L2-normalised; load {os.getloadavg()}; torch device for 'torch': {device}")
    for part in parts:
        results = {}
        for impl in impls:
            results[impl] = spawn("sop", impl, part, str(n), str(n_classes), str(dim), device)
            r = results[impl]
            extra = (f"; peak device memory {r['peak_device_mib']:.0f} MiB"
                     if "peak_device_mib" in r else "")
            print(f"  {part:3s} {impl:5s}: {r['seconds']:.1f} s; peak RSS {r['peak_rss_mib']:.0f}"
                  f" MiB (growth {r['peak_rss_growth_mib']:.0f} MiB){extra}; "
                  f"{ {k: round(v, 9) for k, v in r['values'].items()} }")
        if "pml" in results:
            for impl in impls:
                if impl != "pml":
                    print(f"  {part:3s} ratio {impl}/PML time: "
                          f"{results[impl]['seconds'] / results['pml']['seconds']:.2f}")
            for impl in impls:
                for key, value in results[impl]["values"].items():
                    assert abs(value - results["pml"]["values"][key]) <= 1e-6, (impl, key)
        if "torch" in results and "ours" in results:
            print(f"  {part:3s} speed-up torch ({device}) over faiss-cpu: "
                  f"{results['ours']['seconds'] / results['torch']['seconds']:.2f}x")
        print(f"  load after {part}: {os.getloadavg()}")


def run_impl(impl: str, x: Any, labels: Any) -> dict[str, float]:
    """One full evaluation; returns the metric values under our key names."""
    if impl == "pml":
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(include=tuple(PML_NAMES.values()), k="max_bin_count",
                                  device=torch.device("cpu"))
        raw = calc.get_accuracy(x, labels)
        return {key: float(raw[name]) for key, name in PML_NAMES.items()}
    from bench.evaluate import evaluate_retrieval

    return evaluate_retrieval(x, labels, nmi=True, seed=PML_SEED)


def timing_worker(n: int, dim: int, per_class: int, repeats: int) -> dict[str, Any]:
    """Alternate PML and ours; report every time, the medians and both value sets."""
    x, labels = make_data(n, dim, per_class)
    warm_x, warm_labels = make_data(1000, dim, per_class, seed=1)
    for impl in ("pml", "ours"):
        run_impl(impl, warm_x, warm_labels)
    times: dict[str, list[float]] = {"pml": [], "ours": []}
    values: dict[str, dict[str, float]] = {}
    for rep in range(repeats):
        for impl in (("pml", "ours") if rep % 2 == 0 else ("ours", "pml")):
            start = time.perf_counter()
            values[impl] = run_impl(impl, x, labels)
            times[impl].append(time.perf_counter() - start)
    return {"times": times, "values": values}


def memory_worker(impl: str, n: int, dim: int, per_class: int) -> dict[str, Any]:
    """Peak-RSS growth (MiB) of one call over the baseline after imports and data creation."""
    import resource

    x, labels = make_data(n, dim, per_class)
    warm_x, warm_labels = make_data(1000, dim, per_class, seed=1)
    run_impl(impl, warm_x, warm_labels)  # imports and lazy initialisation are not the call
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_impl(impl, x, labels)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_growth_mib": (after - before) / 1024}  # ru_maxrss is in KiB on Linux


def spawn(*args: str) -> dict[str, Any]:
    """Run a worker in a fresh interpreter (clean peak RSS); its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], cwd=REPO,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report_size(n: int, dim: int, per_class: int, repeats: int) -> None:
    """Time, compare and measure one size; print a block of results."""
    timing = spawn("timing", str(n), str(dim), str(per_class), str(repeats))
    memory = {impl: spawn("memory", impl, str(n), str(dim), str(per_class))
              for impl in ("pml", "ours")}
    med = {impl: statistics.median(ts) for impl, ts in timing["times"].items()}
    print(f"\nN={n} ({n // per_class} classes x {per_class}, dim {dim}); "
          f"an N x N float32 matrix would be {n * n * 4 / 2**20:.0f} MiB")
    for impl in ("pml", "ours"):
        runs = ", ".join(f"{t:.2f}" for t in timing["times"][impl])
        print(f"  {impl:4s}: median {med[impl]:.2f} s (runs {runs}); "
              f"peak RSS growth {memory[impl]['peak_rss_growth_mib']:.0f} MiB")
    print(f"  ratio ours/PML: {med['ours'] / med['pml']:.2f}")
    pml, ours = timing["values"]["pml"], timing["values"]["ours"]
    for key in COMPARED:
        print(f"  {key:28s} pml {pml[key]:.9f}  ours {ours[key]:.9f}")
    extra = {k: round(v, 6) for k, v in ours.items() if k not in COMPARED}
    print(f"  ours only: {extra}")
    for key in COMPARED:
        assert abs(pml[key] - ours[key]) <= 1e-6, (key, pml[key], ours[key])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sop", action="store_true",
                        help="SOP scale instead of --sizes: one run per implementation and part")
    parser.add_argument("--sop-n", type=int, default=60502)
    parser.add_argument("--sop-classes", type=int, default=11316)
    parser.add_argument("--sop-dim", type=int, default=512)
    parser.add_argument("--impls", nargs="+", default=["pml", "ours"],
                        choices=["pml", "ours", "torch"],
                        help="--sop: pml, ours (faiss-cpu) and/or torch (our torch kNN)")
    parser.add_argument("--parts", nargs="+", default=["knn", "nmi"], choices=["knn", "nmi"])
    parser.add_argument("--device", default="cpu", help="torch device of the 'torch' impl")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(REPO))
        kind, *rest = args.worker
        if kind == "timing":
            out = timing_worker(*(int(v) for v in rest))
        elif kind == "sop":
            impl, part, n, n_classes, dim, device = rest
            out = sop_worker(impl, part, int(n), int(n_classes), int(dim), device)
        else:
            out = memory_worker(rest[0], *(int(v) for v in rest[1:]))
        print(json.dumps(out))
        return
    import faiss
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, faiss "
          f"{faiss.__version__}, torch threads {torch.get_num_threads()}, "
          f"faiss omp threads {faiss.omp_get_max_threads()}")
    if args.sop:
        report_sop(args.sop_n, args.sop_classes, args.sop_dim, args.impls, args.device,
                   args.parts)
        return
    for n in args.sizes:
        report_size(n, args.dim, args.per_class, args.repeats)


if __name__ == "__main__":
    main()
