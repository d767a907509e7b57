"""`chattune.aml`: the `azure.ai.ml` calls of the seed, on a chattune workspace.

Replace `azure.ai.ml` with `chattune.aml` and `azure.identity` with `chattune.identity`
in the seed's imports; the rest of its code runs unchanged.
"""

from chattune.aml._client import MLClient
from chattune.aml.entities import Input, Output

__all__ = ["Input", "MLClient", "Output"]
