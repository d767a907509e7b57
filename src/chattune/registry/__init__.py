"""The model registry: register a folder or a job's output as an immutable model version
with its lineage (job, base model, data hashes, metrics); delete versions no deployment uses.
"""

from chattune.registry.service import delete_model, model_lineage, register_model
from chattune.registry.source import job_reference, parse_asset_type

__all__ = [
    "delete_model",
    "job_reference",
    "model_lineage",
    "parse_asset_type",
    "register_model",
]
