"""The model identity of a traced call, for `log_models` (MLflow's autolog option, from the wire).

A model version is one distinct configuration: task, model, invocation parameters and prompt
template (the leading system/developer messages of a chat, a Responses call's `instructions`;
a Responses stored prompt's id and version are among the parameters). What the caller asks each
time (the messages, the prompt, the text to embed, a stored prompt's variables) is the input,
not the model. Pure functions: the writer process calls `model_record()` while it builds a batch,
`recorder.model_store` writes the result, `proxy.predict` runs a version again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llmtap.recorder.cassettes import SECRET_PATTERNS
from llmtap.recorder.endpoints import ENDPOINTS, invocation_params, prompt_variables
from llmtap.recorder.matching import canonical_value
from llmtap.recorder.secret_headers import is_secret_value

TASK_ENDPOINTS = {e.name: e for e in ENDPOINTS.values()}
TEMPLATE_ROLES = frozenset({"system", "developer"})
# request fields that say who asks or how the answer travels, not how the model behaves:
# two calls that differ only in these are the same model
NOT_MODEL_FIELDS = frozenset(
    {
        "model",
        "instructions",
        "user",
        "metadata",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
        "store",
        "background",
        "previous_response_id",
        "conversation",
        "encoding_format",  # the SDK asks for base64 on its own; the vectors are the same
    }
)
REDACTED = "[REDACTED]"


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """What one call adds to the model registry; the store gives it its version number."""

    name: str
    """`registered_model_name`, or `EXPERIMENT/MODEL` for a model logged under an experiment."""
    registered: bool
    experiment: str
    config_hash: str
    """SHA-256 of the canonical configuration: equal hashes are one version."""
    model_id: str
    """The logged model's id, `m-` and 32 hex (MLflow 3's LoggedModel ids look alike)."""
    task: str
    model: str
    params: Mapping[str, Any]
    prompt_template: Mapping[str, Any] | None
    """The request fields that frame the input: `{"messages": [...]}` for chat,
    `{"instructions": ..., "input": [...]}` for responses; None when there are none."""
    signature: Mapping[str, Any] | None = None
    input_example: Any = None


def model_record(
    task: str,
    body: Any,
    experiment: str,
    *,
    signatures: bool = False,
    input_examples: bool = False,
    registered_model_name: str | None = None,
) -> ModelRecord | None:
    """The model version a request body belongs to; None when it names no model."""
    if (
        task not in TASK_ENDPOINTS
        or not isinstance(body, dict)
        or not isinstance(body.get("model"), str)
    ):
        return None
    model = body["model"]
    params = {
        k: v
        for k, v in invocation_params(TASK_ENDPOINTS[task], body).items()
        # a credential in the body (a gateway's `"api_key"`) is no setting, and never stored
        if k not in NOT_MODEL_FIELDS and not _credential(k, v)
    }
    template = prompt_template(task, body)
    # one configuration however a client spells it: `temperature: 1` (Node, curl) and `1.0`
    # (Python), `"stop": null` and no stop, `n: 1` and no n, as replay matches them (a
    # configuration with none of these hashes as it did before)
    config = {
        "task": task,
        "model": model,
        "params": canonical_value(params),
        "prompt_template": canonical_value(template, whole_floats=template is not None),
    }
    config_hash = hashlib.sha256(orjson.dumps(config, option=orjson.OPT_SORT_KEYS)).hexdigest()
    # an empty name is no name (`registered_model_name = ""` in a file)
    registered_model_name = registered_model_name or None
    name = registered_model_name or f"{experiment}/{model}"
    return ModelRecord(
        name=name,
        registered=registered_model_name is not None,
        experiment=experiment,
        config_hash=config_hash,
        model_id=model_id(name, config_hash),
        task=task,
        model=model,
        params=params,
        prompt_template=template,
        signature=infer_signature(task, params) if signatures else None,
        input_example=input_example(task, body) if input_examples else None,
    )


CREDENTIAL_FIELDS = frozenset(
    {"api_key", "api-key", "apikey", "key", "token", "access_token", "secret", "password"}
)
"""Request body fields that hold a credential (LiteLLM and other gateways take `api_key` in
the body). Named, not found by the header rule: that one takes `stop_token_ids` (vLLM) for a
credential too."""


def _credential(name: str, value: Any) -> bool:
    if name.lower() in CREDENTIAL_FIELDS:
        return True
    return isinstance(value, str) and is_secret_value(value.encode("utf-8", "replace"))


def model_id(name: str, config_hash: str) -> str:
    """A logged model's id (MLflow 3 style `m-...`): stable for a name and configuration."""
    return "m-" + hashlib.blake2b(f"{name}\0{config_hash}".encode(), digest_size=16).hexdigest()


def prompt_template(task: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request fields that frame the input; None when there are none."""
    if task == "chat.completions":
        messages = body.get("messages")
        lead = _leading_template(messages if isinstance(messages, list) else [])
        return {"messages": lead} if lead else None
    if task == "responses":
        template: dict[str, Any] = {}
        if body.get("instructions") is not None:
            template["instructions"] = body["instructions"]
        user_input = body.get("input")
        if isinstance(user_input, list) and (lead := _leading_template(user_input)):
            template["input"] = lead
        return template or None
    return None


def _leading_template(items: list[Any]) -> list[Any]:
    # only the leading run frames the conversation: a system message later on is part of it
    count = 0
    for item in items:
        if not (isinstance(item, dict) and item.get("role") in TEMPLATE_ROLES):
            break
        count += 1
    return items[:count]


def input_example(task: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request's input as the client sent it, under its field's name, secrets scrubbed:
    `{"messages": [...]}` for chat (the whole list, template included, as MLflow's autolog
    keeps it), `{"prompt": ...}`, `{"input": ...}`; a stored prompt's variables beside it,
    each a column (as MLflow's rows hold a template's variables). It is a valid predict input,
    read from that column: one row, or a row per item when it is a list of texts. None when it
    is empty (MLflow then logs no example either)."""
    field = TASK_ENDPOINTS[task].input_field
    example = dict(prompt_variables(body))
    if body.get(field):
        example[field] = body[field]
    return scrub(example) if example else None


def scrub(value: Any) -> Any:
    """A copy with anything shaped like a key or a token replaced (input examples are stored)."""
    if isinstance(value, str):
        for pattern in SECRET_PATTERNS:
            value = pattern.sub(REDACTED, value)
        return value
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    return value


# --- signatures, in the JSON shape of MLflow's ModelSignature.to_dict() columns -------------

_STRING = {"type": "string", "required": True}
_VECTOR = {"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1]}}
_JSON_TYPES = {"string": "string", "integer": "long", "number": "double", "boolean": "boolean"}


def infer_signature(task: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """MLflow's default (string in; string out, or a float64 vector for embeddings), with the
    output's structure when the traffic declares a JSON schema, and the recorded parameters;
    as `ModelSignature.to_dict()` writes it (each part a JSON text, as in an MLmodel file), so
    that `ModelSignature.from_dict` reads it as it is."""
    outputs: list[dict[str, Any]] = [dict(_VECTOR) if task == "embeddings" else dict(_STRING)]
    schema = _output_json_schema(params)
    if schema is not None:
        outputs = [{**_colspec(schema), "required": True}]
    specs = [s for s in (_param_spec(k, v) for k, v in sorted(params.items())) if s]
    signature: dict[str, Any] = {
        "inputs": json.dumps([dict(_STRING)]),
        "outputs": json.dumps(outputs),
        "params": json.dumps(specs) if specs else None,
    }
    if schema is not None:
        signature["output_json_schema"] = schema  # the schema as sent, for non-MLflow readers
    return signature


def signature_params(signature: Any) -> list[dict[str, Any]]:
    """The ParamSpecs of a stored signature (a JSON text, or a list as rows written before
    signatures were kept as MLflow writes them)."""
    params = signature.get("params") if isinstance(signature, dict) else None
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            return []
    return [p for p in params if isinstance(p, dict)] if isinstance(params, list) else []


def _output_json_schema(params: Mapping[str, Any]) -> dict[str, Any] | None:
    fmt = params.get("response_format")  # chat: {"type": "json_schema", "json_schema": {...}}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        inner = fmt.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        return schema if isinstance(schema, dict) else None
    text = params.get("text")  # responses: {"format": {"type": "json_schema", "schema": ...}}
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) else None
    return None


def _colspec(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON schema as an MLflow type: Object, Array or a data type (`any` when unclear)."""
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: nullable, the type is the other one
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object":
        required = set(schema.get("required") or ())
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        return {
            "type": "object",
            "properties": {
                k: {**_colspec(v if isinstance(v, dict) else {}), "required": k in required}
                for k, v in props.items()
            },
        }
    if kind == "array":
        items = schema.get("items")
        return {"type": "array", "items": _colspec(items if isinstance(items, dict) else {})}
    return {"type": _JSON_TYPES.get(str(kind), "any")}


NUMBER_PARAMS = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})
"""The parameters the OpenAI API types as numbers (`float` in its SDKs; chat, completions and
responses have no others): a `double` whatever JSON number the first client wrote. A `long`
from `temperature: 1` (curl, Node) made MLflow refuse `temperature=0.5` against the signature."""


def _param_spec(name: str, value: Any) -> dict[str, Any] | None:
    """MLflow's ParamSpec for a scalar (or list of scalars) parameter; None for objects."""
    scalar = value[0] if isinstance(value, list) and value else value
    kind = _param_type(scalar)
    if kind is None:
        return None
    if kind == "long" and name in NUMBER_PARAMS and not isinstance(value, list):
        kind, value = "double", float(value)  # 1 is 1.0 to the API, and to the config hash
    shape = [-1] if isinstance(value, list) else None
    return {"name": name, "type": kind, "default": value, "shape": shape}


def _param_type(scalar: Any) -> str | None:
    """MLflow's DataType name of a JSON scalar; None for anything else."""
    if isinstance(scalar, bool):  # (a bool is an int to Python)
        return "boolean"
    if isinstance(scalar, int):
        return "long"
    if isinstance(scalar, float):
        return "double"
    return "string" if isinstance(scalar, str) else None
