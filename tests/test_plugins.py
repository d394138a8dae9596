"""Plug-ins by entry point: discovery, listing with origin, clashes, unknown names, and the
example package running inside a protocol next to built-in losses."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from plugin_env import EXAMPLE, fake_distribution, install_example

from bench.cli import main
from bench.errors import BenchError
from bench.methods import method_class
from bench.methods.base import Method
from bench.methods.pml_loss import find_class
from bench.plan import plan_protocol, protocol_plugins


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return tmp_path / "site"


def test_example_is_discovered_and_listed_with_its_distribution(site, monkeypatch, capsys):
    project = install_example(site, monkeypatch)
    cls = method_class("center_contrastive")
    assert issubclass(cls, Method) and cls.__module__ == "bench_example.method"
    assert find_class("losses", "SoftContrastiveLoss").__module__ == "bench_example.losses"
    assert main(["methods", "list"]) == 0
    out = capsys.readouterr().out
    origin = f"{project['name']} {project['version']}"
    assert any(line.split()[:1] == ["center_contrastive"] and line.endswith(origin)
               for line in out.splitlines())
    assert any(line.split()[:1] == ["SoftContrastiveLoss"] and line.endswith(origin)
               for line in out.splitlines())
    assert any(line.split()[:2] == ["pml_loss", "built-in"] for line in out.splitlines())


def test_without_the_distribution_the_names_are_unknown(write_protocol, capsys):
    protocol = write_protocol({"methods": [{"name": "c", "method": "center_contrastive"}]})
    assert main(["validate", str(protocol)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'bench.methods'" in err and "center_contrastive" in err and "methods.0" in err
    protocol = write_protocol({"methods": [{"name": "s", "params": {
        "loss": "SoftContrastiveLoss"}}]})
    assert main(["validate", str(protocol)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'bench.losses'" in err and "params.loss" in err
    protocol = write_protocol({"dataset": {"name": "my_images"}})
    assert main(["validate", str(protocol)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'bench.datasets'" in err and "dataset.name" in err


@pytest.mark.parametrize(("group", "name", "target"), [
    ("bench.methods", "pml_loss", "bench_example.method:CenterContrastive"),
    ("bench.losses", "ContrastiveLoss", "bench_example.losses:SoftContrastiveLoss"),
    ("bench.datasets", "glyphs", "bench_example.losses:SoftContrastiveLoss"),
])
def test_a_plugin_claiming_a_builtin_name_is_refused(site, monkeypatch, write_protocol, capsys,
                                                     group, name, target):
    install_example(site, monkeypatch)
    fake_distribution(site, "clashy", "2.0", {group: {name: target}})
    assert main(["validate", str(write_protocol())]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "built-in" in err and "clashy 2.0" in err and repr(name) in err


def test_two_distributions_claiming_one_name_are_refused(site, monkeypatch, write_protocol,
                                                         capsys):
    install_example(site, monkeypatch)
    fake_distribution(site, "other-plugin", "1.2.3",
                      {"bench.methods": {"center_contrastive": "bench_example.method:X"}})
    protocol = write_protocol({"methods": [{"name": "c", "method": "center_contrastive"}]})
    assert main(["validate", str(protocol)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bench-example-plugin 0.1.0" in err and "other-plugin 1.2.3" in err
    assert main(["methods", "list"]) == 2
    assert "two installed distributions" in capsys.readouterr().err
    with pytest.raises(BenchError, match="two installed distributions"):
        method_class("pml_loss")  # even a built-in lookup: the environment is ambiguous


def test_a_broken_or_wrong_entry_point_is_one_line(site, monkeypatch, write_protocol, capsys):
    fake_distribution(site, "broken", "0.0.1", {"bench.methods": {
        "missing_module": "no_such_module_xyz:Thing", "not_a_method": "json:JSONDecoder"}})
    monkeypatch.syspath_prepend(str(site))
    for name, reason in (("missing_module", "ModuleNotFoundError"),
                         ("not_a_method", "not a subclass")):
        protocol = write_protocol({"methods": [{"name": "m", "method": name}]})
        assert main(["validate", str(protocol)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err and "broken 0.0.1" in err


def test_dataset_plugin_is_listed_and_loads(site, monkeypatch, tmp_path, capsys):
    module = tmp_path / "mods" / "my_dataset_plugin.py"
    module.parent.mkdir()
    module.write_text(
        "import dataclasses\n"
        "from bench.data.registry import get_spec\n"
        "def spec():\n"
        "    return dataclasses.replace(get_spec('glyphs'), description='glyphs, re-packaged')\n",
        encoding="utf-8")
    monkeypatch.syspath_prepend(str(module.parent))
    fake_distribution(site, "my-data", "3.1", {"bench.datasets": {
        "my_glyphs": "my_dataset_plugin:spec"}})
    monkeypatch.syspath_prepend(str(site))
    assert main(["datasets", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("my_glyphs") and line.endswith("[my-data 3.1]") for line in lines)
    assert any(line.startswith("glyphs ") and line.endswith("[built-in]") for line in lines)
    from bench.data import load_dataset

    ds = load_dataset("my_glyphs", image_size=16, max_classes=5)
    assert ds.num_classes == 5 and ds.meta["version"].endswith("+my-data-3.1")


def test_plugin_version_is_part_of_the_protocol_hash(site, monkeypatch, tmp_path):
    install_example(site, monkeypatch)
    protocol = EXAMPLE / "protocol.yaml"
    first = plan_protocol(protocol)
    assert first.plugins["center_contrastive"] and not first.plugins["contrastive"]
    builtin_only = tmp_path / "builtin.yaml"
    data = yaml.safe_load(protocol.read_text(encoding="utf-8"))
    data["methods"] = data["methods"][:2]
    builtin_only.write_text(yaml.safe_dump(data), encoding="utf-8")
    import hashlib

    assert plan_protocol(builtin_only).protocol_hash == hashlib.sha256(
        builtin_only.read_bytes()).hexdigest()  # no plug-ins: the file's hash, as before
    for dist in site.glob("*.dist-info"):
        (dist / "METADATA").write_text((dist / "METADATA").read_text().replace(
            "Version: 0.1.0", "Version: 0.2.0"))
    second = plan_protocol(protocol)
    assert second.protocol_hash != first.protocol_hash


def small_example(tmp_path: Path) -> Path:
    """The example protocol, scaled down for CI: same methods, fewer trials and iterations."""
    data = yaml.safe_load((EXAMPLE / "protocol.yaml").read_text(encoding="utf-8"))
    data["dataset"]["options"] = {"image_size": 32, "max_classes": 40}
    data["budget"]["trials"] = 1
    data["reproductions"] = 1
    data["train"].update(iterations=20, validate_every=10)
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.slow
def test_example_plugin_runs_next_to_builtins(site, monkeypatch, tmp_path, capsys):
    project = install_example(site, monkeypatch)
    protocol = small_example(tmp_path)
    results = tmp_path / "results"
    args = ["run", str(protocol), "--results", str(results), "--no-progress"]
    assert main(args) == 0
    out_dir = results / "example_plugin"
    rows = pd.read_csv(out_dir / "results.csv")
    assert set(rows["method"]) == {"contrastive", "multi_similarity", "soft_contrastive",
                                   "center_contrastive"}
    origin = f"{project['name']} {project['version']}"
    by_method = rows.groupby("method")["plugins"].first()
    assert by_method["contrastive"] == "none" and by_method["multi_similarity"] == "none"
    assert origin in by_method["soft_contrastive"] and "SoftContrastiveLoss" in \
        by_method["soft_contrastive"]
    assert origin in by_method["center_contrastive"]
    summary = (out_dir / "summary.md").read_text(encoding="utf-8")
    table = [line.split("|")[1].strip() for line in summary.splitlines()
             if line.startswith("| ")][1:]
    assert table == ["contrastive", "multi_similarity", "soft_contrastive", "center_contrastive"]
    assert f"- center_contrastive: center_contrastive (bench.methods) from {origin}" in summary
    assert f"- soft_contrastive: SoftContrastiveLoss (bench.losses) from {origin}" in summary
    recorded = json.loads((out_dir / "plugins.json").read_text(encoding="utf-8"))
    assert recorded["bench.methods:center_contrastive"] == origin

    # an upgraded plug-in is a changed setting: refused on the same results, like an edit
    for dist in site.glob("*.dist-info"):
        (dist / "METADATA").write_text((dist / "METADATA").read_text().replace(
            "Version: 0.1.0", "Version: 0.2.0"))
    before = (out_dir / "results.csv").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "plug-in versions changed" in err and "0.1.0 -> " in err and "0.2.0" in err
    assert (out_dir / "results.csv").read_bytes() == before


def test_a_process_with_other_plugin_versions_is_refused_by_the_study(site, monkeypatch):
    import optuna

    from bench import plugins

    install_example(site, monkeypatch)
    study = optuna.create_study()
    first = plugins.signature(protocol_plugins(plan_protocol(
        EXAMPLE / "protocol.yaml").protocol))
    plugins.check_study(study, first, source="p")
    plugins.check_study(study, first, source="p")  # same versions: fine
    changed = {**first, "bench.methods:center_contrastive": "bench-example-plugin 0.2.0"}
    with pytest.raises(BenchError, match="plug-in versions"):
        plugins.check_study(study, changed, source="p")
