"""Claim audits: verdicts on synthetic results with known truth, and claims-file validation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.analysis import audit
from bench.analysis.audit import FAILS, HOLDS, INCONCLUSIVE, ClaimsFile
from bench.cli import main
from bench.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures"
METRIC = "mean_average_precision_at_r"


def results(values: dict[str, list[float]], split: str = "standard", **extra) -> pd.DataFrame:
    return pd.DataFrame([{"protocol": "synthetic", "dataset": "d", "split": split,
                          "setting": "dml", "method": method, "seed": seed,
                          "model": "concatenated", "metric": METRIC, "value": value, **extra}
                         for method, series in values.items()
                         for seed, value in enumerate(series)])


# Known truth: "strong" is 0.10 better than "base" (tiny seed noise); "close" equals "base" on
# average, but its per-seed differences are noisy and only 3 seeds are run (underpowered).
BASE = [0.30, 0.31, 0.29, 0.305, 0.295]
KNOWN = results({"base": BASE,
                 "strong": [0.401, 0.409, 0.392, 0.404, 0.396],
                 "close": [0.33, 0.29, 0.295, None, None]}).dropna()


def claims(*entries: dict) -> ClaimsFile:
    base = {"source": {"paper": "P", "table": "T"}, "dataset": "d", "metric": METRIC}
    return ClaimsFile.model_validate({"claims": [{**base, **e} for e in entries]})


def test_known_truth_verdicts():
    verdicts = audit.audit(claims(
        {"id": "true", "ordering": {"better": "strong", "worse": "base", "by_at_least": 0.05}},
        {"id": "false", "ordering": {"better": "base", "worse": "strong"}},
        {"id": "underpowered", "ordering": {"better": "close", "worse": "base"}},
        {"id": "value-true", "method": "strong", "value": 0.40, "tolerance": 0.02},
        {"id": "value-false", "method": "base", "value": 0.40, "tolerance": 0.02},
        {"id": "barely", "ordering": {"better": "strong", "worse": "base", "by_at_most": 0.03}},
    ), KNOWN)
    by_id = {v.id: v for v in verdicts}
    assert {k: v.verdict for k, v in by_id.items()} == {
        "true": HOLDS, "false": FAILS, "underpowered": INCONCLUSIVE, "value-true": HOLDS,
        "value-false": FAILS, "barely": FAILS}
    true = by_id["true"]
    assert true.n == 5 and true.estimate == pytest.approx(0.1004)
    assert true.low > 0.05 and true.p_value < 0.025 and true.effect_size > 5
    assert "inside the claimed region" in true.reason
    assert by_id["underpowered"].n == 3 and by_id["underpowered"].low < 0 < \
        by_id["underpowered"].high
    assert "straddles" in by_id["underpowered"].reason
    assert by_id["false"].p_value > 0.975
    line = true.line()
    assert line.startswith("true: HOLDS") and "\n" not in line and "p < 0.001" in line


def test_rank_change_verdicts():
    fids = {"s1": 10.0, "s2": 40.0, "s3": 90.0}

    def sequence(curves: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
        parts = [results({m: v for m, v in by_method.items()}, split=split, fid=fids[split],
                         is_default_split=split == "s2") for split, by_method in curves.items()]
        return pd.concat(parts, ignore_index=True)

    stable = {"a": [0.50, 0.51, 0.49], "b": [0.40, 0.41, 0.39], "c": [0.30, 0.31, 0.29]}
    swapped = {"a": [0.20, 0.21, 0.19], "b": [0.40, 0.41, 0.39], "c": [0.30, 0.31, 0.29]}
    noisy = {"a": [0.30, 0.45, 0.30], "b": [0.36, 0.35, 0.37], "c": [0.10, 0.11, 0.09]}
    claim = claims({"id": "rc", "rank_change": {}})
    changes = audit.audit(claim, sequence({"s1": stable, "s2": stable, "s3": swapped}))[0]
    assert changes.verdict == HOLDS and changes.estimate == pytest.approx(-1 / 3)
    assert "s2 and s3" in changes.reason  # default and hardest
    same = audit.audit(claim, sequence({"s1": stable, "s2": stable, "s3": stable}))[0]
    assert same.verdict == FAILS and same.estimate == 1.0 and same.p_value == 1.0
    unsure = audit.audit(claim, sequence({"s1": stable, "s2": stable, "s3": noisy}))[0]
    assert unsure.verdict == INCONCLUSIVE


def test_fixture_claims_through_the_cli(tmp_path, capsys):
    out = tmp_path / "verdicts.json"
    code = main(["audit", str(FIXTURE / "claims.yaml"), "--results", str(FIXTURE / "results"),
                 "--json", str(out), "--markdown", str(tmp_path / "v.md")])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert printed[-1] == "5 claim(s): 2 hold, 1 do not hold, 2 inconclusive"
    assert "Holm across the claims of the file" in printed[0] and "n >= 3" in printed[0]
    verdicts = {v["id"]: v["verdict"] for v in json.loads(out.read_text())}
    # p = 0.011 alone would hold; Holm across the file's 5 claims makes it 0.034 > 0.025
    value = next(v for v in json.loads(out.read_text()) if v["id"] == "fixture-contrastive-value")
    assert value["verdict"] == INCONCLUSIVE and value["p_value"] < 0.025 < value["p_holm"]
    assert "not significant after Holm" in value["reason"]
    assert verdicts["fixture-triplet-beats-ms"] == FAILS
    assert verdicts["fixture-ranking-changes"] == HOLDS
    assert "| claim | verdict |" in (tmp_path / "v.md").read_text()
    assert main(["audit", str(FIXTURE / "claims.yaml"), "--results", str(FIXTURE / "results"),
                 "--strict"]) == 1


GOOD = {"id": "c1", "source": {"paper": "P", "table": "T"}, "protocol": "quick",
        "dataset": "glyphs", "metric": METRIC,
        "ordering": {"better": "multi_similarity", "worse": "triplet"}}


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"metric": "map_at_r"}, "claims[0].metric", "unknown metric 'map_at_r'"),
    ({"dataset": None}, "claims[0].dataset", "missing required field"),
    ({"ordering": {"better": "lifted_structure", "worse": "triplet"}},
     "claims[0].ordering.better", "'lifted_structure' is not in the results"),
    ({"colour": "red"}, "claims[0].colour", "unknown key 'colour'"),
    ({"metric": None, "metirc": METRIC}, "claims[0].metirc",
     "unknown key 'metirc' (did you mean 'metric'?)"),
    ({"dataset": None, "colour": "red"}, "claims[0].dataset", "missing required field"),
    ({"value": 26.5, "method": "triplet", "ordering": None}, "claims[0].value", "less than"),
    ({"value": 0.3}, "claims[0]", "exactly one of value, ordering, rank_change, trend"),
])
def test_bad_claims_file_exit_2_one_line(tmp_path, capsys, change, field, words):
    claim = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"claims": [claim]}), encoding="utf-8")
    code = main(["audit", str(path), "--results", str(FIXTURE / "results")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"bench: error: {path}: {field}: ")
    assert words in err


def test_unparsable_claims_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("claims: [\n", encoding="utf-8")
    assert main(["audit", str(path), "--results", str(FIXTURE / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: {path}: not valid YAML") and err.count("\n") == 1


def test_shipped_claims_files_are_valid_and_match_their_protocols():
    reality = audit.load_claims(ROOT / "protocols" / "claims" / "reality_check.yaml")
    quick, _ = load_protocol(ROOT / "protocols" / "quick.yaml")
    methods = {m.name for m in quick.methods}
    pairs = set()
    for claim in reality.claims:
        assert claim.protocol == "quick" and claim.dataset == quick.dataset.name
        assert {claim.ordering.better, claim.ordering.worse} <= methods
        pairs.add((claim.ordering.better, claim.ordering.worse))
    newer = methods - {"contrastive", "triplet"}
    assert pairs == {(m, b) for m in newer for b in ("contrastive", "triplet")}
    oodml = audit.load_claims(ROOT / "protocols" / "claims" / "oodml.yaml")
    assert {c.protocol for c in oodml.claims} == {"oodml_glyphs_stage"}
    older = audit.load_claims(ROOT / "protocols" / "claims" / "oodml_glyphs.yaml")
    assert {c.protocol for c in older.claims} == {"oodml_glyphs"}
    assert all(c.rank_change.to_split == "hardest" for c in older.claims)
    stage, _ = load_protocol(ROOT / "protocols" / "oodml_glyphs_stage.yaml")
    assert stage.reproductions >= audit.MIN_N
    kinds = {c.kind for c in oodml.claims if c.protocol == "oodml_glyphs_stage"}
    assert kinds == {"trend", "rank_change"}  # ooDML's two findings: decay, rank changes
    for claim in oodml.claims:
        assert claim.rank_change is None or claim.rank_change.to_split == "hardest"
        if claim.protocol == "oodml_glyphs_stage":
            assert claim.metric.endswith(".controlled")


def test_two_reproductions_never_decide():
    """Two differences that happen to agree gave "effect -291, p < 0.001, n = 2" before."""
    two = results({"a": [0.400, 0.410], "b": [0.300, 0.3100001]})
    claim = claims({"id": "two", "ordering": {"better": "a", "worse": "b"}},
                   {"id": "two-value", "method": "a", "value": 0.40, "tolerance": 0.05})
    verdicts = audit.audit(claim, two)
    assert [v.verdict for v in verdicts] == [INCONCLUSIVE, INCONCLUSIVE]
    assert all(v.reason.startswith("inconclusive (n < 3)") and v.n == 2 for v in verdicts)
    three = results({"a": [0.400, 0.410, 0.405], "b": [0.300, 0.311, 0.304]})
    assert audit.audit(claim, three)[0].verdict == HOLDS


def test_trend_claims_monotone_decay():
    fids = {"s1": 10.0, "s2": 40.0, "s3": 90.0, "s4": 200.0}

    def sequence(curves: dict[str, list[list[float]]]) -> pd.DataFrame:
        parts = [results({m: [seeds[k] for seeds in by_seed] for m, by_seed in curves.items()},
                         split=split, fid=fid, is_default_split=split == "s2")
                 for k, (split, fid) in enumerate(fids.items())]
        return pd.concat(parts, ignore_index=True)

    decay = [[0.50, 0.45, 0.40, 0.35], [0.51, 0.46, 0.41, 0.34], [0.49, 0.44, 0.39, 0.36]]
    flat = [[0.40, 0.42, 0.39, 0.41], [0.42, 0.39, 0.41, 0.40], [0.39, 0.41, 0.42, 0.40]]
    rise = [[0.30, 0.35, 0.40, 0.45], [0.31, 0.34, 0.41, 0.46], [0.29, 0.36, 0.39, 0.44]]
    every = claims({"id": "decay", "trend": {"spearman_below": 0.0}})
    assert audit.audit(every, sequence({"a": decay, "b": decay}))[0].verdict == HOLDS
    mixed = audit.audit(every, sequence({"a": decay, "b": rise}))[0]
    assert mixed.verdict == FAILS and mixed.estimate == pytest.approx(1.0)  # largest rho
    assert audit.audit(every, sequence({"a": decay, "b": flat}))[0].verdict == INCONCLUSIVE
    one = claims({"id": "a-decays", "method": "a", "trend": {"spearman_below": 0.0}})
    assert audit.audit(one, sequence({"a": decay, "b": rise}))[0].verdict == HOLDS
    short = audit.audit(every, sequence({"a": decay[:2], "b": decay[:2]}))[0]
    assert short.verdict == INCONCLUSIVE and "n < 3" in short.reason
    with pytest.raises(ValueError, match="exactly one of spearman_below"):
        claims({"id": "x", "trend": {}})
