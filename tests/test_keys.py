"""Study names and test jobs are formatted and parsed in one place (bench.keys)."""

from __future__ import annotations

import pytest

from bench.keys import JobKey, Outcome, StudyKey, values_digest


def test_study_keys_round_trip() -> None:
    search = StudyKey("quick", "glyphs", "contrastive", "standard")
    assert str(search) == "quick:glyphs:contrastive:standard" and search.phase == "search"
    test = search.test_study({"lr": 0.1})
    assert str(test) == f"quick:glyphs:contrastive:standard:test:{values_digest({'lr': 0.1})}"
    assert test.phase == "test" and len(test.values) == 12
    for key in (search, test):
        assert StudyKey.parse(str(key)) == key
    assert search.test_study({"lr": 0.1}) == test != search.test_study({"lr": 0.2})


@pytest.mark.parametrize("name", ["other", "a:b:c", "a:b:c:d:search:x", "a::c:d", ""])
def test_foreign_study_names_are_not_keys(name: str) -> None:
    assert StudyKey.try_parse(name) is None
    with pytest.raises(ValueError):
        StudyKey.parse(name)


def test_job_keys_round_trip_and_files() -> None:
    job = JobKey("fid03", 7)
    assert str(job) == "fid03/seed7" and JobKey.parse("fid03/seed7") == job
    assert job.run_stem == "seed7" and JobKey.seed_of("seed7.embeddings.npz") == 7
    assert JobKey.seed_of("notes.json") is None
    for bad in ("fid03", "fid03/7", "/seed1", "fid03/seedx"):
        with pytest.raises(ValueError):
            JobKey.parse(bad)


def test_outcomes() -> None:
    assert Outcome.DONE.finished and Outcome.FAILED.finished
    assert not Outcome.WORKED.finished and not Outcome.BLOCKED.finished
    assert Outcome("blocked") is Outcome.BLOCKED and str(Outcome.WORKED) == "worked"
