"""Bad input gets one line naming the file, the key and the reason; exit 2; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"train": {"iterationz": 10}}, ["train.iterationz", "unknown key", "iterations"]),
        ({"train": {"iterations": "lots"}}, ["train.iterations", "valid integer", "'lots'"]),
        ({"train": {"batch_size": 30, "m_per_class": 4}}, ["train", "multiple of m_per_class"]),
        ({"methods": [{"name": "x", "params": {"loss": "NoSuchLoss"}}]},
         ["methods.0.params.loss", "unknown loss 'NoSuchLoss'"]),
        ({"methods": [{"name": "x", "method": "nope", "params": {}}]},
         ["methods.0.method", "unknown method 'nope'"]),
        ({"methods": [{"name": "x", "params": {"loss": "ArcFaceLoss",
                                               "loss_params": {"margn": 1}}}]},
         ["methods.0.params.loss_params", "ArcFaceLoss rejects", "margn"]),
        ({"dataset": {"name": "imagenet42"}}, ["dataset.name", "imagenet42"]),
        ({"model": {"backbone": "vgg11"}}, ["model.backbone", "vgg11"]),
        ({"reproductions": "two"}, ["reproductions", "valid integer"]),
    ],
)
def test_bad_protocol_one_line_exit_2_nothing_written(
    changes, expected, write_protocol, tmp_path: Path, capsys
) -> None:
    path = write_protocol(changes)
    results = tmp_path / "results"
    code, err = run_cli(["run", str(path), "--results", str(results), "--no-progress"], capsys)
    assert code == 2
    assert err.count("\n") == 0, err
    assert str(path) in err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert not results.exists()


def test_unknown_dataset_option_names_it(write_protocol, tmp_path: Path, capsys) -> None:
    path = write_protocol({"dataset": {"name": "glyphs", "options": {"image_sise": 32}}})
    results = tmp_path / "results"
    code, err = run_cli(["run", str(path), "--results", str(results), "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 0
    assert "image_sise" in err and str(path) in err
    assert not results.exists()


def test_missing_file_and_bad_yaml(tmp_path: Path, capsys) -> None:
    code, err = run_cli(["validate", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml" in err and "cannot read" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    code, err = run_cli(["validate", str(bad)], capsys)
    assert code == 2 and "bad.yaml" in err and "not valid YAML" in err


def test_shipped_protocol_validates(capsys) -> None:
    root = Path(__file__).resolve().parents[1]
    assert main(["validate", str(root / "protocols" / "quick.yaml")]) == 0
    assert "valid" in capsys.readouterr().out



def test_misspelt_required_key_is_reported_as_the_typo(write_protocol) -> None:
    import yaml

    from bench.errors import BenchError
    from bench.protocol import parse_protocol

    data = yaml.safe_load(write_protocol().read_text(encoding="utf-8"))
    methods = data.pop("methods")
    with pytest.raises(BenchError) as caught:
        parse_protocol({**data, "methds": methods}, source="p.yaml")
    assert caught.value.field == "methds"
    assert "unknown key 'methds' (did you mean 'methods'?)" in caught.value.reason
    # an unknown key that is not close to the missing one: the missing key is the error
    with pytest.raises(BenchError) as caught:
        parse_protocol({**data, "colour": "red"}, source="p.yaml")
    assert caught.value.field == "methods" and "missing required field" in caught.value.reason
