"""As `azure.ai.ml.dsl`: the `@pipeline` decorator.

Example:
    >>> @pipeline(name="smol-chitchat")
    ... def create_pipeline():
    ...     node = chat_completion(mlflow_model_path=model.id, train_file_path=Input(...))
    ...     return {"trained_model": node.outputs.mlflow_model_folder}
    >>> job = create_pipeline()          # a PipelineJob, not yet submitted
    >>> job.settings.force_rerun = True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from chattune.aml._component import NodeOutput, start_recording, stop_recording
from chattune.aml.entities import Output, PipelineJob, PipelineJobSettings
from chattune.aml.exceptions import ValidationException


def pipeline(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    display_name: str | None = None,
    description: str | None = None,
    experiment_name: str | None = None,
    default_compute: str | None = None,
    tags: dict[str, str] | None = None,
    **_kwargs: Any,
) -> Any:
    """Turn a function that calls the `chat_completion_pipeline` component into a function
    that returns a `PipelineJob`.

    The function must call the component once and may return a dict of pipeline output
    names to node outputs (the seed returns `{"trained_model": ...mlflow_model_folder}`).

    Raises:
        ValidationException: the function called no component, or several, or returned
            something other than a dict of node outputs.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., PipelineJob]:
        @functools.wraps(fn)
        def build(*args: Any, **kwargs: Any) -> PipelineJob:
            nodes = start_recording()
            try:
                returned = fn(*args, **kwargs)
            finally:
                stop_recording()
            if len(nodes) != 1:
                raise ValidationException(
                    f"pipeline {name or fn.__name__!r} called the chat_completion_pipeline "
                    f"component {len(nodes)} times; chattune runs pipelines of one call.",
                    fix="call the component exactly once inside the @pipeline function.",
                )
            outputs: dict[str, Any] = {}
            for key, value in (returned or {}).items():
                if not isinstance(value, NodeOutput):
                    raise ValidationException(
                        f"pipeline output {key!r} is {value!r}, not a component output.",
                        fix="return {name: node.outputs.mlflow_model_folder} or "
                        "node.outputs.pytorch_model_folder.",
                    )
                outputs[key] = Output(type="uri_folder", path=value.name)
            return PipelineJob(
                display_name=display_name or name or fn.__name__,
                experiment_name=experiment_name,
                description=description,
                outputs=outputs,
                settings=PipelineJobSettings(default_compute=default_compute),
                tags=dict(tags or {}),
                _node=nodes[0],
            )

        return build

    return decorate(func) if func is not None else decorate
