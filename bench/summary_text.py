"""summary.md: the protocol's settings in words and, per pool, the results tables (headline
and separate models, the FID sequence, ablations, the pseudo-label audit, plug-ins, failures).

Made from the rows read from the storage only (bench.results_source), for `bench run` and
`bench rebuild` alike.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench import plugins
from bench.evaluate.metric_table import reported, run_headline
from bench.plan import Plan
from bench.results import sequence_table, summary_table
from bench.results_source import stored_pseudo_labels
from bench.setting_kinds import SETTINGS
from bench.splits.named import NamedSplit


def selection_sentence(plan: Plan) -> str:
    """How the trained state is chosen: early stopping only under ``checkpoint: best``."""
    p = plan.protocol
    primary = p.evaluation.primary
    if p.train.checkpoint == "last":
        return (f"final state after {p.train.iterations} iterations (checkpoint `last`; "
                f"validation `{primary}` recorded, not used to stop or select).")
    return f"early stopping on validation `{primary}`."


def test_sentence(plan: Plan) -> str:
    p = plan.protocol
    setting = p.setting
    kind = SETTINGS[setting.kind]
    if not kind.reid:
        return (f"Test: query = reference = test classes, self-match excluded, "
                f"k = {p.evaluation.k}.")
    sources = ", ".join(setting.source)
    targets = ", ".join(setting.target)
    return (f"Setting `{setting.kind}`: source {sources}, target {targets} "
            f"({kind.training_data}; each method receives the kinds it declares, see 'data "
            f"used'). Validation on held-out source identities. Test: target identities never "
            f"seen in training, query -> gallery, same identity + same camera gallery entries "
            f"excluded (Market-1501 rules); CMC and mAP in [0, 1].")


def ood_summary(plan: Plan, frame: pd.DataFrame, dataset: str, order: list[str]) -> list[str]:
    """Size-controlled curves, untrained embedding, gain and rho (bench.analysis.ood)."""
    if frame.empty or "fid" not in frame.columns or frame["fid"].isna().all():
        return []
    from bench.analysis.ood import ood_summary_lines

    return ood_summary_lines(frame.assign(unit=frame["seed"].astype(str)), dataset=dataset,
                             metric=plan.protocol.evaluation.primary, method_order=order)


def pseudo_label_audit(stored: dict, dataset: str, methods: list[str]) -> list[str]:
    """The pseudo-label audit from the storage's results (never from run files on disk)."""
    from bench.analysis.ablation import pseudo_label_table

    return pseudo_label_table(None, dataset, methods,
                              read=lambda _runs, pool, method: stored_pseudo_labels(
                                  stored, pool, method))


def header(plan: Plan, device: str) -> list[str]:
    p = plan.protocol
    return [f"# Results: {p.name}", "",
            f"Protocol `{plan.source}` (sha256 {plan.protocol_hash[:16]}). "
            f"Backbone {p.model.backbone}, trunk `{p.model.trunk}`, "
            f"{p.model.embedding_size}-d; {p.folds} class-disjoint fold(s); search budget "
            f"{p.budget.trials} completed trials per method ({p.budget.sampler}); "
            f"{p.reproductions} reproduction(s) (seeds {', '.join(map(str, p.seeds))}); "
            f"{selection_sentence(plan)}",
            test_sentence(plan) + " Values: mean ± 95 % t-interval over reproductions. "
            f"Device {device}.", ""]


def summary(plan: Plan, rows: list[dict], *, states: dict[tuple[str, str], Any],
            splits: dict[str, list[NamedSplit]], stored: dict, device: str) -> str:
    """The whole summary.md; ``states``: (pool, method) -> chosen values, failure, data."""
    p = plan.protocol
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(
        columns=["dataset", "method", "model", "metric", "value", "seed"])
    lines = header(plan, device)
    for name, _ in p.pools:
        lines += pool_section(plan, frame, name, states=states, splits=splits.get(name, []),
                              stored=stored)
    return "\n".join(lines)


def pool_section(plan: Plan, frame: pd.DataFrame, name: str, *, states: dict,
                 splits: list[NamedSplit], stored: dict) -> list[str]:
    """One pool's tables. Long because it is the page's outline, one block per table, in
    the order the page shows them."""
    p = plan.protocol
    reid = SETTINGS[p.setting.kind].reid
    metrics = reported(reid, {"nmi": p.evaluation.nmi})
    headline = run_headline(p.folds)
    failures = {m: s.failure for (d, m), s in states.items() if d == name and s.failure}
    params = {m: s.params or {} for (d, m), s in states.items() if d == name}
    data = {m: s.data for (d, m), s in states.items() if d == name} if reid else None
    default = next((x.id for x in splits if x.is_default), "standard")
    sub = frame[frame["dataset"] == name] if len(frame) else frame
    at_default = sub[sub["split"] == default] if len(sub) else sub
    order = [m.name for m in p.methods]
    where = "" if default == "standard" else f", default split {default}"
    table = dict(metrics=metrics, method_order=order, failures=failures, params=params,
                 data=data)
    lines = [f"## {name}{where}: {headline}"
             + (" (fold models' embeddings concatenated)" if p.folds > 1 else ""), ""]
    lines += summary_table(at_default, model=headline, **table)
    if p.folds > 1:
        lines += ["", f"## {name}{where}: separate (mean of the {p.folds} fold models)", ""]
        lines += summary_table(at_default, model="separate", **table)
    if len(splits) > 1:
        lines += ["", f"## {name}: {p.evaluation.primary} ({headline}) along the "
                  "FID sequence (mean over reproductions; * = default split)", ""]
        lines += sequence_table(sub, splits, model=headline, metric=p.evaluation.primary,
                                method_order=order)
        lines += ood_summary(plan, sub, name, order)
    pairs = {m.name: m.ablation_of for m in p.methods if m.ablation_of}
    if pairs:
        from bench.analysis.ablation import ablation_table

        lines += ["", f"## {name}: each method against its own ablation ({headline}; method "
                  "minus ablation, paired by seed, mean ± 95 % t-interval)", ""]
        lines += ablation_table(at_default, pairs, model=headline, metrics=metrics)
    audit = pseudo_label_audit(stored, name, order)
    if audit:
        lines += ["", f"## {name}: target pseudo-labels per epoch against the hidden "
                  "target training identities (audit only, mean over seeds; purity "
                  "over clustered rows)", ""] + audit
    used = {m: plugins.describe(u) for m, u in plan.plugins.items() if u}
    if used:
        lines += ["", "Plug-ins (installed distributions):", ""]
        lines += [f"- {m}: {text}" for m, text in used.items()]
    if failures:
        lines += ["", "Failed methods:", ""]
        lines += [f"- {m}: {reason}" for m, reason in failures.items()]
    lines.append("")
    return lines
