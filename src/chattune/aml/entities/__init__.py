"""As `azure.ai.ml.entities`: the objects the seed builds and gets back."""

from chattune.aml.entities._assets import Input, Model, Output
from chattune.aml.entities._compute import AmlCompute, VmSize
from chattune.aml.entities._job import PipelineJob, PipelineJobSettings
from chattune.aml.entities._online import (
    EndpointAuthKeys,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    OnlineRequestSettings,
    ProbeSettings,
)

__all__ = [
    "AmlCompute",
    "EndpointAuthKeys",
    "Input",
    "ManagedOnlineDeployment",
    "ManagedOnlineEndpoint",
    "Model",
    "OnlineRequestSettings",
    "Output",
    "PipelineJob",
    "PipelineJobSettings",
    "ProbeSettings",
    "VmSize",
]
