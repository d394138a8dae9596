"""One conversion of pydantic errors (bench.validation) for every schema: the protocol, claims
files and each method's parameters name the field with its whole nested path."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.errors import BenchError
from bench.validation import invalid


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float = Field(0.5, gt=0, lt=1)
    steps: list[int] = Field(default_factory=list)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: Inner = Field(default_factory=Inner)
    name: str


def error_of(data: dict, **kwargs) -> BenchError:
    with pytest.raises(ValidationError) as caught:
        Outer.model_validate(data)
    return invalid(caught.value, Outer, source="p.yaml", **kwargs)


@pytest.mark.parametrize(("data", "field", "reason"), [
    ({"name": "a", "inner": {"rate": 2}}, "methods.0.params.inner.rate", "got 2"),
    ({"name": "a", "inner": {"steps": [1, "x"]}}, "methods.0.params.inner.steps.1", "'x'"),
    ({"name": "a", "inner": {"rat": 0.1}}, "methods.0.params.inner.rat",
     "unknown key 'rat' (did you mean 'rate'?); allowed: rate, steps"),
    ({"inner": {}}, "methods.0.params.name", "missing required field"),
])
def test_nested_paths_and_reasons(data: dict, field: str, reason: str) -> None:
    error = error_of(data, prefix="methods.0.params")
    assert error.field == field and reason in error.reason


def test_bracket_style_for_lists() -> None:
    error = error_of({"name": "a", "inner": {"steps": [1, "x"]}}, brackets=True)
    assert error.field == "inner.steps[1]"


def test_a_method_keeps_the_nested_path() -> None:
    """ECN's own copy used to keep only the first part of the path."""
    from bench.methods.ecn import ECN

    with pytest.raises(BenchError) as caught:
        ECN.validate_params({"camera_prob": 3.0}, source="p.yaml", field="methods.1.params")
    assert caught.value.field == "methods.1.params.camera_prob"
