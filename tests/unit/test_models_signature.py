"""The signature's ParamSpecs: typed as OpenAI types the parameters, not as the first client
happened to write them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmtap.recorder.models import model_record


def param_specs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    record = model_record("chat.completions", body, "E", signatures=True)
    assert record is not None and record.signature is not None
    return {spec["name"]: spec for spec in json.loads(record.signature["params"])}


@pytest.mark.parametrize("name", ["temperature", "top_p", "frequency_penalty", "presence_penalty"])
@pytest.mark.parametrize("value", [1, 1.0, 0])
def test_a_number_parameter_is_a_double_however_it_was_written(name: str, value: Any) -> None:
    """`temperature: 1` (curl, Node) made a `long`, and MLflow's ModelSignature then refused
    `temperature=0.5`; `1` and `1.0` are one version, so they are one type too."""
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], name: value}
    spec = param_specs(body)[name]
    assert spec == {"name": name, "type": "double", "default": float(value), "shape": None}
    assert isinstance(spec["default"], float)


def test_integer_and_other_parameters_keep_their_types() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "q"}],
        "max_tokens": 5,
        "seed": 7,
        "logprobs": True,
        "stop": ["a", "b"],
        "temperature": 0.5,
    }
    specs = param_specs(body)
    assert {name: spec["type"] for name, spec in specs.items()} == {
        "max_tokens": "long",
        "seed": "long",
        "logprobs": "boolean",
        "stop": "string",
        "temperature": "double",
    }
    assert specs["stop"]["shape"] == [-1] and specs["max_tokens"]["default"] == 5
