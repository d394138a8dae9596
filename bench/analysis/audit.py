"""Audit published claims against results measured under fair settings.

A claims file (``protocols/claims/*.yaml``) lists claims; each names its source (paper, table),
the dataset, setting, split, metric and model it is about, and exactly one of:

- ``value`` (with ``tolerance``): a method's mean lies within value ± tolerance;
- ``ordering``: method ``better`` beats method ``worse`` by at least ``by_at_least`` (and, when
  given, by at most ``by_at_most``): the paired difference better - worse lies in that range;
- ``rank_change``: the methods' ranking on ``from_split`` and on ``to_split`` of an FID split
  sequence differ: Kendall tau below ``kendall_tau_below``.

Every claim states a region for one measured quantity; the verdict compares the region with the
quantity's 95 % interval (a t-interval over seeds; for Kendall tau, a seeded bootstrap over
seeds):

- **holds**: the whole interval lies inside the claimed region;
- **does not hold**: the whole interval lies outside it;
- **inconclusive**: the interval straddles the region's edge (or there are too few seeds for an
  interval): more reproductions are needed to decide.

- ``trend``: the metric decays (or rises) with FID along a sequence: Spearman rho of the
  method's mean metric against FID below ``spearman_below`` (with no ``method``: every method's,
  i.e. the largest rho of all methods).

The p-value is that of the test for the claim (H0: the claim is false): one-sided paired t-tests
for an ordering (the larger of the two for a two-sided range), two one-sided tests (TOST) for a
value, and the bootstrap share of resamples with the statistic on the wrong side of the bound for
a rank change or a trend.

Two rules make a verdict one a statistician would sign:

- **minimum reproductions**: a decided verdict (holds / does not hold) needs n >= 3 paired
  reproductions (seeds). With n = 2 the t-interval rests on one degree of freedom: the sample
  SD of two values falls below a tenth of the true SD 8 % of the time (chi-square, 1 df), so two
  differences that happen to agree give a tiny interval and p < 0.001 (seen: "effect -291,
  p < 0.001, n = 2"); with 2 degrees of freedom that chance drops to 1 %, and the bootstrap
  intervals of rank changes and trends have at least 10 distinct resamples per method. Fewer:
  "inconclusive (n < 3)".
- **multiplicity**: the claims of one file are one family; their p-values are Holm-adjusted
  (family-wise error 0.025 one-sided, i.e. 0.05 two-sided) and "holds" also needs the adjusted
  p < 0.025, else the claim is inconclusive ("not significant after Holm"). "does not hold"
  needs the interval wholly outside the region (no correction: it confirms nothing).
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from scipy import stats

from bench.analysis.load import default_split, headline_model
from bench.analysis.numbers import format_number as _num
from bench.analysis.numbers import format_p as _p
from bench.analysis.ood import ranking_tau, spearman_trend
from bench.analysis.stats import holm, paired_test, t_interval
from bench.analysis.subsets import UNTRAINED, base_metric, is_controlled
from bench.errors import BenchError
from bench.evaluate.metric_table import METRICS
from bench.setting_kinds import DEFAULT_SETTING, SETTING_KINDS
from bench.validation import describe, first_error
from bench.yaml_file import read_yaml

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
BOOTSTRAP = 2000
MODEL_PATTERN = rf"concatenated|separate|folds|fold\d+|{UNTRAINED}"
#: a decided verdict needs at least this many paired reproductions (see the module docstring)
MIN_N = 3
#: one-sided family-wise level of a claims file (Holm across its claims)
ALPHA = 0.025
TEST_NOTE = ("tests: one-sided paired t-test (ordering), TOST (value), seeded bootstrap over "
             "reproduction seeds (rank_change: Kendall tau-b; trend: Spearman rho vs FID); "
             f"multiplicity: Holm across the claims of the file, family-wise alpha {ALPHA} "
             f"one-sided; a decided verdict needs n >= {MIN_N} paired reproductions")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(Strict):
    paper: str = Field(min_length=1)
    table: str = Field(min_length=1)
    url: str | None = None


class Ordering(Strict):
    better: str = Field(min_length=1)
    worse: str = Field(min_length=1)
    by_at_least: float | None = None
    by_at_most: float | None = None

    @model_validator(mode="after")
    def _range(self) -> Ordering:
        if self.better == self.worse:
            raise ValueError("better and worse name the same method")
        if self.by_at_least is None and self.by_at_most is None:
            self.by_at_least = 0.0
        if (self.by_at_least is not None and self.by_at_most is not None
                and self.by_at_least > self.by_at_most):
            raise ValueError("by_at_least is larger than by_at_most")
        return self


class RankChange(Strict):
    from_split: str = "default"
    to_split: str = "hardest"
    kendall_tau_below: float = Field(1.0, gt=-1.0, le=1.0)


class Trend(Strict):
    """Spearman rho of the metric (mean over seeds) against FID lies below ``spearman_below``
    (``above``: rises). Without ``method`` the claim is about every method: its quantity is the
    largest rho of all methods (the smallest with ``above``)."""

    spearman_below: float | None = Field(None, gt=-1.0, le=1.0)
    spearman_above: float | None = Field(None, ge=-1.0, lt=1.0)

    @model_validator(mode="after")
    def _one_bound(self) -> Trend:
        if (self.spearman_below is None) == (self.spearman_above is None):
            raise ValueError("give exactly one of spearman_below, spearman_above")
        return self


class Claim(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: Source
    statement: str | None = None
    protocol: str | None = None
    dataset: str = Field(min_length=1)
    setting: Literal[SETTING_KINDS] = DEFAULT_SETTING  # type: ignore[valid-type]
    split: str | None = None
    metric: str
    model: str | None = Field(None, pattern=rf"^({MODEL_PATTERN})$")
    method: str | None = None
    value: float | None = Field(None, ge=0.0, le=1.0)
    tolerance: float | None = Field(None, ge=0.0)
    ordering: Ordering | None = None
    rank_change: RankChange | None = None
    trend: Trend | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, metric: str) -> str:
        if base_metric(metric) not in METRICS or (metric != base_metric(metric)
                                                  and not is_controlled(metric)):
            hint = difflib.get_close_matches(metric, METRICS, n=1)
            raise ValueError(f"unknown metric {metric!r}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + f"; known: {', '.join(METRICS)}, each also as "
                             f"<metric>.controlled (size-controlled)")
        return metric

    @model_validator(mode="after")
    def _kind(self) -> Claim:
        kinds = [k for k in ("value", "ordering", "rank_change", "trend")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of value, ordering, rank_change, trend"
                             + (f" (got {', '.join(kinds)})" if kinds else ""))
        if self.value is not None and self.method is None:
            raise ValueError("a value claim needs the method it is about (method: NAME)")
        if self.value is None and self.tolerance is not None:
            raise ValueError("tolerance belongs to value claims only")
        if self.method is not None and self.value is None and self.trend is None:
            raise ValueError("method belongs to value and trend claims only")
        if self.rank_change is not None and self.split is not None:
            raise ValueError("a rank_change claim names its splits in rank_change, not split")
        if self.trend is not None and self.split is not None:
            raise ValueError("a trend claim is about the whole sequence: no split")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("value", "ordering", "rank_change", "trend")
                    if getattr(self, k) is not None)


class ClaimsFile(Strict):
    description: str | None = None
    claims: list[Claim] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ClaimsFile:
        seen: set[str] = set()
        for claim in self.claims:
            if claim.id in seen:
                raise ValueError(f"claim id {claim.id!r} appears twice")
            seen.add(claim.id)
        return self


@dataclass
class Verdict:
    """One claim's audit. ``estimate``/``low``/``high``: the measured quantity and its 95 %
    interval (a mean, a paired difference or Kendall tau); ``effect_size``: Cohen's d (d_z for
    paired differences) or, for rank changes, tau itself."""

    id: str
    verdict: str
    kind: str
    quantity: str
    claimed: str
    estimate: float
    low: float
    high: float
    effect_size: float
    p_value: float
    n: int
    reason: str
    paper: str
    table: str
    region_low: float = -math.inf
    region_high: float = math.inf
    file: str = ""
    p_holm: float = math.nan

    def line(self) -> str:
        interval = (f"{_num(self.estimate)} [{_num(self.low)}, {_num(self.high)}]")
        return (f"{self.id}: {self.verdict.upper()} — {self.quantity} = {interval}, claimed "
                f"{self.claimed}; effect {_num(self.effect_size, 2)}, p {_p(self.p_value, True)}"
                f" (Holm {_p(self.p_holm, True)}), n = {self.n}; {self.reason}")


# -- loading ---------------------------------------------------------------------------------


def load_claims(path: str | Path) -> ClaimsFile:
    """Parse and validate one claims file; errors name the file and the field."""
    path = Path(path)
    source = str(path)
    data, _ = read_yaml(path, what="claims file")
    if not isinstance(data, dict):
        raise BenchError("expected a mapping with a `claims` list", source=source)
    try:
        return ClaimsFile.model_validate(data)
    except ValidationError as error:
        field, reason = _describe(first_error(error.errors()), data)
        raise BenchError(reason, source=source, field=field) from None


def claims_paths(paths) -> list[Path]:
    """Files named, and the ``*.yaml`` / ``*.yml`` files of directories named."""
    found: list[Path] = []
    for path in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if path.is_dir():
            found += sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        elif path.exists():
            found.append(path)
        else:
            raise BenchError("does not exist", source=str(path))
    return found


def _describe(error: dict, data: dict) -> tuple[str, str]:
    """bench.validation's field and reason, plus the id of the claim it is about."""
    field, reason = describe(error, ClaimsFile, brackets=True)
    loc = tuple(error["loc"])
    if len(loc) >= 2 and loc[0] == "claims" and isinstance(loc[1], int):
        claims = data.get("claims")
        if isinstance(claims, list) and loc[1] < len(claims) and isinstance(claims[loc[1]], dict):
            if claims[loc[1]].get("id"):
                reason += f" (claim {claims[loc[1]]['id']!r})"
    return field, reason


# -- checking a claim against results --------------------------------------------------------


def _claim_rows(claim: Claim, index: int, frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The results a claim is about, with errors naming the claim's field when something it
    names is not in the results."""
    where = f"claims[{index}]"

    def absent(field: str, value: object, have) -> BenchError:
        have = sorted(map(str, set(have)))
        hint = difflib.get_close_matches(str(value), have, n=1)
        return BenchError(f"{value!r} is not in the results"
                          + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; have: {', '.join(have) or 'nothing'} (claim {claim.id!r})",
                          source=source, field=f"{where}.{field}")

    rows = frame
    if claim.protocol is not None:
        if claim.protocol not in set(rows["protocol"]):
            raise absent("protocol", claim.protocol, rows["protocol"])
        rows = rows[rows["protocol"] == claim.protocol]
    if claim.dataset not in set(rows["dataset"]):
        raise absent("dataset", claim.dataset, rows["dataset"])
    rows = rows[rows["dataset"] == claim.dataset]
    if "setting" in rows.columns:
        if claim.setting not in set(rows["setting"]):
            raise absent("setting", claim.setting, rows["setting"])
        rows = rows[rows["setting"] == claim.setting]
    if claim.metric not in set(rows["metric"]):
        raise absent("metric", claim.metric, rows["metric"])
    model = claim.model or headline_model(rows)
    if model == "folds":
        fold_rows = rows[rows["model"].str.fullmatch(r"fold\d+")]
        if fold_rows.empty:
            raise absent("model", model, rows["model"])
        rows = fold_rows.assign(unit=fold_rows["seed"].astype(str) + "/" + fold_rows["model"])
    else:
        if model not in set(rows["model"]):
            raise absent("model", model, rows["model"])
        rows = rows[rows["model"] == model].assign(unit=lambda r: r["seed"].astype(str))
    methods = set(rows["method"])
    named = ([("method", claim.method)] if claim.method else []) + (
        [("ordering.better", claim.ordering.better), ("ordering.worse", claim.ordering.worse)]
        if claim.ordering else [])
    for field, method in named:
        if method not in methods:
            raise absent(field, method, methods)
    if claim.rank_change is None and claim.trend is None:
        split = claim.split or _default(rows, source, f"{where}.split")
        if split not in set(rows["split"]):
            raise absent("split", split, rows["split"])
        rows = rows[rows["split"] == split]
    return rows[rows["metric"] == claim.metric].assign(model_used=model)


def _default(rows: pd.DataFrame, source: str, field: str) -> str:
    try:
        return default_split(rows)
    except BenchError as error:
        raise BenchError(error.reason, source=source, field=field) from None


def _decide(low: float, high: float, lower: float, upper: float) -> str:
    if any(math.isnan(v) for v in (low, high)):
        return INCONCLUSIVE
    if low >= lower and high <= upper:
        return HOLDS
    if high < lower or low > upper:
        return FAILS
    return INCONCLUSIVE


def _region(lower: float, upper: float) -> str:
    if math.isinf(upper):
        return f">= {_num(lower)}"
    if math.isinf(lower):
        return f"<= {_num(upper)}"
    return f"in [{_num(lower)}, {_num(upper)}]"


def _enough(verdict: str, n: int) -> str:
    """The minimum-reproductions rule: below MIN_N no verdict is decided."""
    return verdict if n >= MIN_N else INCONCLUSIVE


def _too_few(n: int) -> str:
    return (f"inconclusive (n < {MIN_N}): {n} paired reproduction(s); a decided verdict needs "
            f"n >= {MIN_N}, run more reproductions")


def _reason(verdict: str, quantity: str, region: str, n: int) -> str:
    if n < MIN_N:
        return _too_few(n)
    return {HOLDS: f"the 95 % interval of {quantity} lies inside the claimed region {region}",
            FAILS: f"the 95 % interval of {quantity} lies outside the claimed region {region}",
            INCONCLUSIVE: f"the 95 % interval of {quantity} straddles the edge of {region}: "
                          f"too few seeds or too noisy to decide"}[verdict]


def audit_value(claim: Claim, rows: pd.DataFrame) -> dict:
    rows = rows[rows["method"] == claim.method]
    values = rows.sort_values("unit")["value"].dropna().to_numpy()
    n = len(values)
    mean, half = t_interval(values)
    tol = claim.tolerance or 0.0
    lower, upper = claim.value - tol, claim.value + tol
    sd = float(np.std(values, ddof=1)) if n > 1 else math.nan
    if n > 1 and sd > 0:
        p = max(stats.ttest_1samp(values, lower, alternative="greater").pvalue,
                stats.ttest_1samp(values, upper, alternative="less").pvalue)
    else:
        p = math.nan if n < 2 else float(not (lower <= mean <= upper))
    quantity = f"{claim.method} {claim.metric}"
    verdict = _enough(_decide(mean - half, mean + half, lower, upper), n)
    return {"quantity": quantity, "claimed": f"{_num(claim.value)} ± {_num(tol)}",
            "region_low": lower, "region_high": upper,
            "estimate": mean, "low": mean - half, "high": mean + half,
            "effect_size": (mean - claim.value) / sd if n > 1 and sd > 0 else math.nan,
            "p_value": float(p), "n": n, "verdict": verdict,
            "reason": _reason(verdict, "the mean", _region(lower, upper), n)}


def audit_ordering(claim: Claim, rows: pd.DataFrame) -> dict:
    order = claim.ordering
    table = rows.pivot_table(index="unit", columns="method", values="value", aggfunc="mean")
    both = table[[order.better, order.worse]].dropna()
    lower = -math.inf if order.by_at_least is None else order.by_at_least
    upper = math.inf if order.by_at_most is None else order.by_at_most
    result = paired_test(both[order.better].to_numpy(), both[order.worse].to_numpy())
    n = int(result["n"])
    pvalues = []
    if not math.isinf(lower):
        pvalues.append(paired_test(both[order.better], both[order.worse], delta=lower,
                                   alternative="greater")["p_t"])
    if not math.isinf(upper):
        pvalues.append(paired_test(both[order.better], both[order.worse], delta=upper,
                                   alternative="less")["p_t"])
    verdict = _enough(_decide(result["low"], result["high"], lower, upper), n)
    sd = float(np.std(both[order.better] - both[order.worse], ddof=1)) if n > 1 else math.nan
    return {"quantity": f"{order.better} - {order.worse} {claim.metric}",
            "claimed": _region(lower, upper), "estimate": result["diff"],
            "region_low": lower, "region_high": upper,
            "low": result["low"], "high": result["high"],
            "effect_size": result["diff"] / sd if n > 1 and sd > 0 else math.nan,
            "p_value": float(max(pvalues)), "n": n, "verdict": verdict,
            "reason": _reason(verdict, "the paired difference", _region(lower, upper), n)}


def _fid_sequence_rows(claim: Claim, rows: pd.DataFrame, source: str, field: str
                       ) -> pd.DataFrame:
    """The rows of FID-sequence splits; a claim about OOD shift on other results is refused."""
    if "fid" not in rows.columns or rows["fid"].isna().all():
        raise BenchError(f"the results for dataset {claim.dataset!r} are not an FID split "
                         f"sequence (no fid column) (claim {claim.id!r})", source=source,
                         field=field)
    return rows[rows["fid"].notna()]


def audit_rank_change(claim: Claim, rows: pd.DataFrame, source: str, index: int,
                      seed: int = 0) -> dict:
    change = claim.rank_change
    field = f"claims[{index}].rank_change"
    rows = _fid_sequence_rows(claim, rows, source, field)
    fids = rows.groupby("split")["fid"].first().sort_values()
    names = {"default": _default(rows, source, f"{field}.from_split"),
             "hardest": str(fids.index[-1]), "easiest": str(fids.index[0])}
    splits = []
    for key in ("from_split", "to_split"):
        split = names.get(getattr(change, key), getattr(change, key))
        if split not in fids.index:
            raise BenchError(f"split {split!r} is not in the results; have "
                             f"{', '.join(fids.index)} (or default, hardest, easiest) "
                             f"(claim {claim.id!r})", source=source, field=f"{field}.{key}")
        splits.append(split)
    a, b = splits
    means = rows.groupby(["split", "method"])["value"].mean()
    tau = ranking_tau(means[a], means[b])
    # Bootstrap over seeds: per method, resample its seeds with replacement and use the same
    # resampled seeds on both splits (a seed's model quality is shared across splits).
    rng = np.random.default_rng(seed)
    per_method = [sub.pivot_table(index="unit", columns="split", values="value")[[a, b]]
                  .dropna().to_numpy() for _, sub in rows.groupby("method")]
    per_method = [v for v in per_method if len(v)]
    drawn = np.stack([v[rng.integers(0, len(v), (BOOTSTRAP, len(v)))].mean(axis=1)
                      for v in per_method], axis=1)  # (resample, method, split)
    taus = kendall_tau_b(drawn[..., 0], drawn[..., 1])
    taus = taus[~np.isnan(taus)]
    n_seeds = min((len(v) for v in per_method), default=0)
    if len(taus) and n_seeds >= 2:
        low, high = (float(q) for q in np.quantile(taus, [0.025, 0.975]))
        p = float(np.mean(taus >= change.kendall_tau_below))
    else:
        low = high = p = math.nan
    bound = change.kendall_tau_below
    verdict = _enough(_decide(low, high, -math.inf, bound - 1e-12), n_seeds)
    region = f"< {_num(bound)}"
    if n_seeds < MIN_N:
        reason = _too_few(n_seeds) + " per method"
    else:
        reason = {HOLDS: f"even the bootstrap interval's upper end is {region}: the ranking "
                         f"changes between {a} and {b}",
                  FAILS: f"the whole bootstrap interval is >= {_num(bound)}: the ranking does "
                         f"not change between {a} and {b}",
                  INCONCLUSIVE: f"the bootstrap interval straddles {_num(bound)}: seed noise "
                                f"alone can reorder the methods between {a} and {b}"}[verdict]
    return {"quantity": f"Kendall tau of {claim.metric} rankings, {a} vs {b}",
            "claimed": region, "estimate": tau, "low": low, "high": high,
            "region_low": -1.0, "region_high": bound,
            "effect_size": tau, "p_value": p, "n": n_seeds, "verdict": verdict,
            "reason": reason}


def audit_trend(claim: Claim, rows: pd.DataFrame, source: str, index: int,
                seed: int = 0) -> dict:
    """Spearman rho of the metric vs FID (mean over seeds) per method, bootstrap over seeds;
    without ``method``, the extreme rho over methods (every method must satisfy the bound)."""
    trend = claim.trend
    field = f"claims[{index}].trend"
    rows = _fid_sequence_rows(claim, rows, source, field)
    if claim.method:
        rows = rows[rows["method"] == claim.method]
    below = trend.spearman_below is not None
    bound = trend.spearman_below if below else trend.spearman_above
    rng = np.random.default_rng(seed)
    per_method, estimates = [], []
    for _, sub in rows.groupby("method", sort=True):
        table = sub.pivot_table(index="unit", columns="fid", values="value").dropna()
        per_method.append(table)
        estimates.append(spearman_trend(sub, metric=claim.metric, model=sub["model"].iloc[0],
                                        draws=1)["rho"].iloc[0])
    n_seeds = min((len(t) for t in per_method), default=0)
    splits = min((t.shape[1] for t in per_method), default=0)
    pick = np.nanmax if below else np.nanmin
    estimate = float(pick(estimates)) if estimates else math.nan
    low = high = p = math.nan
    if n_seeds >= 2 and splits >= 3:
        draws = []
        for table in per_method:  # resample whole seeds per method: a seed's curve stays whole
            values = table.to_numpy()
            curves = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(axis=1)
            fid_ranks = stats.rankdata(table.columns.to_numpy(dtype=float))
            ranks = stats.rankdata(curves, axis=1)
            centred = ranks - ranks.mean(axis=1, keepdims=True)
            f = fid_ranks - fid_ranks.mean()
            with np.errstate(invalid="ignore", divide="ignore"):
                draws.append((centred @ f) / np.sqrt((centred ** 2).sum(axis=1) * (f ** 2).sum()))
        rho = pick(np.stack(draws, axis=1), axis=1)
        rho = rho[~np.isnan(rho)]
        if len(rho):
            low, high = (float(q) for q in np.quantile(rho, [0.025, 0.975]))
            p = float(np.mean(rho >= bound) if below else np.mean(rho <= bound))
    region = f"{'<' if below else '>'} {_num(bound)}"
    verdict = _decide(low, high, -math.inf, bound - 1e-12) if below else _decide(
        low, high, bound + 1e-12, math.inf)
    verdict = _enough(verdict, n_seeds)
    who = claim.method or ("every method (largest rho)" if below else
                           "every method (smallest rho)")
    if n_seeds < MIN_N:
        reason = _too_few(n_seeds) + " per method"
    elif splits < 3:
        reason = "fewer than 3 splits: no rank correlation"
    else:
        reason = {HOLDS: f"the bootstrap interval lies wholly {region}",
                  FAILS: f"the bootstrap interval lies wholly outside {region}",
                  INCONCLUSIVE: f"the bootstrap interval straddles {_num(bound)}"}[verdict]
    return {"quantity": f"Spearman rho of {claim.metric} vs FID, {who}", "claimed": region,
            "estimate": estimate, "low": low, "high": high,
            "region_low": -1.0 if below else bound, "region_high": bound if below else 1.0,
            "effect_size": estimate, "p_value": p, "n": n_seeds, "verdict": verdict,
            "reason": reason}


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between the rows of ``x`` and ``y`` (shape (draws, items)), vectorised
    for the bootstrap: (concordant - discordant) / sqrt(untied pairs in x * untied in y), the
    statistic :func:`scipy.stats.kendalltau` computes; NaN when either row is constant."""
    i, j = np.triu_indices(x.shape[1], k=1)
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[:, i] - y[:, j])
    denominator = np.sqrt((sx != 0).sum(axis=1) * (sy != 0).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (sx * sy).sum(axis=1) / denominator, np.nan)


def audit(claims: ClaimsFile, frame: pd.DataFrame, *, source: str = "claims") -> list[Verdict]:
    """A verdict per claim. Raises :class:`BenchError` (naming ``source`` and the claim's field)
    when a claim names something absent from ``frame``; no verdict is given then."""
    prepared = [(claim, _claim_rows(claim, i, frame, source))
                for i, claim in enumerate(claims.claims)]
    verdicts = []
    for i, (claim, rows) in enumerate(prepared):
        if claim.kind == "value":
            result = audit_value(claim, rows)
        elif claim.kind == "ordering":
            result = audit_ordering(claim, rows)
        elif claim.kind == "rank_change":
            result = audit_rank_change(claim, rows, source, i)
        else:
            result = audit_trend(claim, rows, source, i)
        verdicts.append(Verdict(id=claim.id, kind=claim.kind, paper=claim.source.paper,
                                table=claim.source.table, file=source, **result))
    return correct_for_multiplicity(verdicts)


def correct_for_multiplicity(verdicts: list[Verdict]) -> list[Verdict]:
    """Holm-adjust the p-values of one claims file; a claim whose interval lies inside its
    region but whose adjusted p is not below ALPHA becomes inconclusive."""
    adjusted = holm([v.p_value for v in verdicts])
    for verdict, p_holm in zip(verdicts, adjusted, strict=True):
        verdict.p_holm = float(p_holm)
        if verdict.verdict == HOLDS and not p_holm < ALPHA:
            verdict.verdict = INCONCLUSIVE
            verdict.reason = (f"not significant after Holm across the file's {len(verdicts)} "
                              f"claims (adjusted p {_p(p_holm, True)}, needs < {ALPHA}); "
                              + verdict.reason)
    return verdicts


def method_note(verdicts: list[Verdict]) -> str:
    """One line per audit output: the tests, the correction and the minimum-n rule."""
    files = sorted({v.file for v in verdicts})
    return (f"{TEST_NOTE}. Claims files (one family each): {', '.join(files) or 'none'}.")


def audit_files(paths, frame: pd.DataFrame, *, only_protocols: set[str] | None = None
                ) -> list[Verdict]:
    """Validate every claims file first (all or nothing), then audit. With ``only_protocols``,
    claims about other protocols (or about none) are skipped."""
    loaded = [(str(p), load_claims(p)) for p in claims_paths(paths)]
    verdicts: list[Verdict] = []
    for source, claims in loaded:
        if only_protocols is not None:
            kept = [c for c in claims.claims if c.protocol in only_protocols]
            if not kept:
                continue
            claims = ClaimsFile.model_construct(description=claims.description, claims=kept)
        verdicts += audit(claims, frame, source=source)
    return verdicts


def verdicts_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([asdict(v) for v in verdicts])


def verdicts_markdown(verdicts: list[Verdict]) -> str:
    lines = [method_note(verdicts), "",
             "| claim | verdict | measured (95 % interval) | claimed | effect | p | p (Holm) "
             "| n | reason |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for v in verdicts:
        lines.append(f"| {v.id} | **{v.verdict}** | {v.quantity} = {_num(v.estimate)} "
                     f"[{_num(v.low)}, {_num(v.high)}] | {v.claimed} | {_num(v.effect_size, 2)} "
                     f"| {_p(v.p_value)} | {_p(v.p_holm)} | {v.n} | {v.reason} |")
    return "\n".join(lines) + "\n"


def verdicts_json(verdicts: list[Verdict]) -> str:
    return json.dumps([{k: _json_float(x) for k, x in asdict(v).items()} for v in verdicts],
                      indent=1)


def summary_line(verdicts: list[Verdict]) -> str:
    counts = {k: sum(v.verdict == k for v in verdicts) for k in (HOLDS, FAILS, INCONCLUSIVE)}
    return (f"{len(verdicts)} claim(s): {counts[HOLDS]} hold, {counts[FAILS]} do not hold, "
            f"{counts[INCONCLUSIVE]} inconclusive")


def _json_float(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


VERDICT_COLORS = {HOLDS: "#2b9348", FAILS: "#d00000", INCONCLUSIVE: "#e09f3e"}


def plot_verdicts(verdicts: list[Verdict], *, columns: int = 3):
    """One small panel per claim: the claimed region shaded, the measured 95 % interval and
    estimate coloured by verdict (green holds, red does not hold, amber inconclusive)."""
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(verdicts)))
    rows = max(1, math.ceil(len(verdicts) / columns))
    figure = Figure(figsize=(3.6 * columns, 1.7 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, v in zip(axes, verdicts, strict=False):
        finite = [x for x in (v.low, v.high, v.estimate, v.region_low, v.region_high)
                  if x is not None and math.isfinite(x)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        pad = (hi - lo) * 0.25 or 0.01
        lo, hi = lo - pad, hi + pad
        ax.axvspan(max(lo, v.region_low), min(hi, v.region_high), color="#4361ee", alpha=0.15,
                   label="claimed")
        color = VERDICT_COLORS[v.verdict]
        if math.isfinite(v.low) and math.isfinite(v.high):
            ax.plot([v.low, v.high], [0, 0], color=color, lw=3, solid_capstyle="butt")
        if math.isfinite(v.estimate):
            ax.plot([v.estimate], [0], "o", color=color)
        ax.set_xlim(lo, hi)
        ax.set_yticks([])
        ax.set_title(f"{v.id}\n{v.verdict}", fontsize=8, color=color)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes[len(verdicts):]:
        ax.set_visible(False)
    return figure
