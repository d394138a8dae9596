"""What optuna-dashboard shows beside a study: the objective's name and what the study is."""

from __future__ import annotations

import optuna

from bench.dashboard import describe_study


def test_study_is_described_once_with_a_named_objective() -> None:
    study = optuna.create_study(direction="maximize")
    for _ in range(2):  # a second process describing it again changes nothing
        describe_study(study, phase="search", protocol="quick", dataset="glyphs",
                       method="triplet", implementation="pml_loss", split="standard",
                       metric="mean_average_precision_at_r",
                       details={"searched": {"loss_params.margin": {"type": "float"}},
                                "budget": "3 completed trials"})
    assert study.metric_names == ["validation mean_average_precision_at_r (mean over folds)"]
    attrs = study.user_attrs
    assert attrs["method"] == "triplet" and attrs["phase"] == "search"
    assert attrs["split"] == "standard" and attrs["implementation"] == "pml_loss"
    assert attrs["searched"] == '{"loss_params.margin": {"type": "float"}}'
