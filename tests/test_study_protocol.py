"""The protocol hash lives in every study of the storage (issue 13).

A study of the storage belongs to exactly one protocol: its hash is a user attribute written
when the study is created and checked on every step by `bench run`, `bench worker`,
`bench status` and `bench rebuild`. A process with an edited protocol is refused (exit 2, one
line that says what changed) before it reuses or mixes the trials of the original protocol;
whatever the storage (SQLite here; PostgreSQL in tests/test_postgres.py).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY_PROTOCOL

from bench.cli import main
from bench.keys import StudyKey, protocol_studies
from bench.storage import open_storage
from bench.study_protocol import PROTOCOL_HASH

#: the cheapest protocol that still creates a search study and a test-job study
SMALL = {"train": {"iterations": 10, "batch_size": 32, "m_per_class": 4, "validate_every": 10,
                   "patience": 3},
         "methods": [{"name": "contrastive", "params": {"loss": "ContrastiveLoss"},
                      "search": {"loss_params.neg_margin": {"type": "float", "low": 0.4,
                                                            "high": 1.4}}}],
         "budget": {"trials": 1, "sampler": "random", "seed": 0, "max_failures": 1}}


def write(path: Path, iterations: int = 10) -> Path:
    data = yaml.safe_load(yaml.safe_dump(TINY_PROTOCOL))
    data.update(yaml.safe_load(yaml.safe_dump(SMALL)))
    data["train"]["iterations"] = iterations
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def trial_counts(url: str) -> dict[str, int]:
    storage = open_storage(url)
    return {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}


def refused_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished run of the original protocol, on its default SQLite storage."""
    root = tmp_path_factory.mktemp("hash")
    protocol = write(root / "original.yaml")
    assert main(["run", str(protocol), "--results", str(root / "results"), "--no-progress"]) == 0
    return root, f"sqlite:///{root / 'results' / 'tiny' / 'study.db'}"


def test_every_study_carries_the_protocol_hash(first_run) -> None:
    root, url = first_run
    storage = open_storage(url)
    studies = protocol_studies(storage, "tiny")
    assert {k.phase for k in studies} == {"search", "test"}
    for key in studies:
        study = optuna.load_study(study_name=str(key), storage=storage)
        assert len(study.user_attrs[PROTOCOL_HASH]) == 64
        assert StudyKey.parse(str(key)) == key


@pytest.mark.parametrize("command", ["worker", "status", "rebuild", "run"])
def test_an_edited_protocol_is_refused_by_every_command(first_run, command, tmp_path, capsys
                                                        ) -> None:
    root, url = first_run
    edited = write(tmp_path / "edited.yaml", iterations=20)
    before = trial_counts(url)
    # a results root of its own: only the storage can tell that the protocol changed
    argv = [command, str(edited), "--storage", url, "--results", str(tmp_path / "other")]
    if command in ("run", "worker"):
        argv.append("--no-progress")
    capsys.readouterr()
    assert main(argv) == 2
    line = refused_line(capsys)
    assert "train.iterations: 10 -> 20" in line and "--fresh" in line, line
    assert trial_counts(url) == before, "no trial added to the original protocol's studies"


def test_the_unchanged_protocol_is_accepted(first_run, capsys) -> None:
    root, url = first_run
    assert main(["status", str(root / "original.yaml"), "--storage", url]) == 0
    assert main(["worker", str(root / "original.yaml"), "--storage", url, "--no-progress"]) == 0


def test_fresh_deletes_the_protocol_studies_in_a_given_storage(first_run, tmp_path, capsys
                                                               ) -> None:
    """`--fresh --storage URL` deletes this protocol's studies there (and says how many);
    another protocol's study in the same storage is kept."""
    root, url = first_run
    shared = tmp_path / "shared.db"
    shared.write_bytes((root / "results" / "tiny" / "study.db").read_bytes())
    shared_url = f"sqlite:///{shared}"
    optuna.create_study(storage=open_storage(shared_url), study_name="other:glyphs:m:standard")
    old = {s._study_id for s in optuna.get_all_study_summaries(open_storage(shared_url))
           if s.study_name.startswith("tiny:")}
    edited = write(tmp_path / "edited.yaml", iterations=20)
    capsys.readouterr()
    assert main(["run", str(edited), "--fresh", "--storage", shared_url, "--results",
                 str(tmp_path / "results"), "--no-progress"]) == 0
    assert "deleted 2 studies of protocol tiny" in capsys.readouterr().out
    storage = open_storage(shared_url)
    summaries = optuna.get_all_study_summaries(storage)
    assert "other:glyphs:m:standard" in {s.study_name for s in summaries}
    kept = [s for s in summaries if s.study_name.startswith("tiny:")]
    assert kept and not {s._study_id for s in kept} & old
    digest = optuna.load_study(study_name=kept[0].study_name, storage=storage).user_attrs[
        PROTOCOL_HASH]
    assert all(s.user_attrs[PROTOCOL_HASH] == digest for s in kept)


def test_stamp_writes_once_then_refuses_another_protocol(tmp_path) -> None:
    """What the scheduler calls on every step of every study."""
    from types import SimpleNamespace

    from bench.errors import BenchError
    from bench.study_protocol import PROTOCOL_TEXT, stamp

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"),
                                study_name="tiny:glyphs:m:standard")
    first = SimpleNamespace(protocol_hash="a" * 64, protocol_text="train:\n  iterations: 10\n",
                            source="first.yaml")
    stamp(study, first)
    stamp(study, first)  # the same protocol: accepted on every step
    assert study.user_attrs[PROTOCOL_HASH] == "a" * 64
    assert study.user_attrs[PROTOCOL_TEXT] == first.protocol_text
    other = SimpleNamespace(protocol_hash="b" * 64, protocol_text="train:\n  iterations: 20\n",
                            source="other.yaml")
    with pytest.raises(BenchError, match="train.iterations: 10 -> 20") as caught:
        stamp(study, other)
    assert caught.value.source == "other.yaml"
    assert study.user_attrs[PROTOCOL_HASH] == "a" * 64, "the study keeps its protocol"


@pytest.mark.parametrize(("old", "new", "said"), [
    ("a: 1\n", "a: 1  # a comment\n", "comments, layout or the installed plug-in versions"),
    ("a: 1\n", "a: 1\n", "the installed plug-in versions differ"),
    ("a: {b: [1, 2]}\n", "a: {b: [1, 3]}\n", "changed a.b.1: 2 -> 3"),
    ("a: 1\n", "a: 1\nc: x\n", "changed c: (absent) -> 'x'"),
    ("{a: 1, b: 1, c: 1, d: 1, e: 1, f: 1}", "{a: 2, b: 2, c: 2, d: 2, e: 2, f: 2}",
     "and 2 more"),
])
def test_change_summary(old: str, new: str, said: str) -> None:
    from bench.study_protocol import change_summary

    assert said in change_summary(old, new)
