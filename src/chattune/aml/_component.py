"""The `chat_completion_pipeline` component: what `components.get` returns and the seed calls.

Calling the component inside a `@dsl.pipeline` function records a node with its inputs;
`node.outputs.mlflow_model_folder` names an output the pipeline can return. Parameters are
checked when the component is called, every problem at once, as Azure validates a
component's inputs before submitting.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from chattune.aml.entities import Input
from chattune.aml.exceptions import ValidationException
from chattune.errors import InvalidParameter
from chattune.train.params import parse_params

COMPONENT_NAME = "chat_completion_pipeline"
COMPONENT_VERSION = "1"
OUTPUTS = ("pytorch_model_folder", "mlflow_model_folder")
# inputs that are not fine-tuning parameters
MODEL_INPUTS = ("mlflow_model_path", "pytorch_model_path", "model_name")
FILE_INPUTS = {
    "train_file_path": "train_file",
    "validation_file_path": "validation_file",
    "test_file_path": "test_file",
}
COMPUTE_INPUTS = (
    "compute_model_import",
    "compute_preprocess",
    "compute_finetune",
    "compute_model_evaluation",
)
# Azure's per-step SKU overrides: recorded, the local machine runs every step
INSTANCE_TYPE_INPUTS = tuple(
    f"instance_type_{s}" for s in ("model_import", "preprocess", "finetune", "model_evaluation")
)

_MODEL_ID = re.compile(
    r"^azureml://(?:registries/[^/]+|locations/[^/]+/workspaces/[^/]+|"
    r"subscriptions/.+/workspaces/[^/]+)/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$"
)


def model_reference(value: Any) -> str:
    """`NAME:VERSION` (or a folder) for a model input: an `azureml://.../models/N/versions/V`
    id, `azureml:N:V`, `N:V`, `N`, a `Model`, or a local folder."""
    value = getattr(value, "id", None) or getattr(value, "path", None) or value
    text = str(value)
    if m := _MODEL_ID.match(text):
        return f"{m['name']}:{m['version']}"
    if text.startswith("azureml:") and not text.startswith("azureml://"):
        return text[len("azureml:") :]
    return text


@dataclass
class NodeOutput:
    """One output of a component node (`node.outputs.mlflow_model_folder`)."""

    node: ComponentNode
    name: str

    def __repr__(self) -> str:
        return f"<output {self.name} of {COMPONENT_NAME}>"


class _Outputs:
    def __init__(self, node: ComponentNode) -> None:
        self._node = node

    def __getattr__(self, name: str) -> NodeOutput:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in OUTPUTS:
            raise AttributeError(
                f"{COMPONENT_NAME} has no output {name!r}; its outputs are {', '.join(OUTPUTS)}"
            )
        return NodeOutput(self._node, name)

    def __getitem__(self, name: str) -> NodeOutput:
        return getattr(self, name)


@dataclass
class ComponentNode:
    """A call of the component: its inputs, split into model, files, computes, parameters."""

    model: str
    files: dict[str, str]
    compute: str
    parameters: dict[str, Any]
    computes: dict[str, str] = field(default_factory=dict)

    @property
    def outputs(self) -> _Outputs:
        return _Outputs(self)


# nodes created while a @dsl.pipeline function runs (per thread)
_building = threading.local()


def recording() -> list[ComponentNode] | None:
    return getattr(_building, "nodes", None)


def start_recording() -> list[ComponentNode]:
    _building.nodes = []
    return _building.nodes


def stop_recording() -> None:
    _building.nodes = None


class PipelineComponent:
    """As the registry's `chat_completion_pipeline` component (`components.get(...)`).

    Call it with the seed's keyword arguments inside a `@dsl.pipeline` function.
    """

    name = COMPONENT_NAME
    version = COMPONENT_VERSION
    type = "pipeline"
    outputs = dict.fromkeys(OUTPUTS, "uri_folder")

    @property
    def id(self) -> str:
        return f"azureml://registries/azureml/components/{self.name}/versions/{self.version}"

    def __repr__(self) -> str:
        return f"PipelineComponent(name={self.name!r}, version={self.version!r})"

    def __call__(self, **kwargs: Any) -> ComponentNode:
        problems: list[str] = []
        model = next((kwargs.pop(k) for k in MODEL_INPUTS if k in kwargs), None)
        if model is None:
            problems.append("`mlflow_model_path` is required (the foundation model's .id)")
        files: dict[str, str] = {}
        for key, field_name in FILE_INPUTS.items():
            value = kwargs.pop(key, None)
            if value is None:
                continue
            path = value.path if isinstance(value, Input) else value
            if not path:
                problems.append(f"`{key}` has no path")
            else:
                files[field_name] = str(path)
        if "train_file" not in files:
            problems.append("`train_file_path` is required: Input(type='uri_file', path=...)")
        computes = {k: str(kwargs.pop(k)) for k in COMPUTE_INPUTS if k in kwargs}
        for k in INSTANCE_TYPE_INPUTS:
            kwargs.pop(k, None)
        params = {k: v for k, v in kwargs.items() if v is not None}
        try:
            parse_params(params)
        except InvalidParameter as exc:
            problems.append(exc.message.rstrip("."))
            fix = exc.fix
        else:
            fix = None
        if problems:
            raise ValidationException(
                f"{COMPONENT_NAME}: {'; '.join(problems)}.",
                fix=fix or "pass the inputs named above.",
            )
        node = ComponentNode(
            model=model_reference(model),
            files=files,
            compute=computes.get("compute_finetune", "local"),
            parameters=params,
            computes=computes,
        )
        nodes = recording()
        if nodes is not None:
            nodes.append(node)
        return node
