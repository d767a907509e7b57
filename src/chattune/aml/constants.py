"""As `azure.ai.ml.constants`: the asset type names the seed uses."""

from __future__ import annotations


class AssetTypes:
    """Asset and input types (`AssetTypes.MLFLOW_MODEL` in the seed's registration cell)."""

    MLFLOW_MODEL = "mlflow_model"
    CUSTOM_MODEL = "custom_model"
    TRITON_MODEL = "triton_model"
    URI_FILE = "uri_file"
    URI_FOLDER = "uri_folder"
    MLTABLE = "mltable"


class InputOutputModes:
    """How an input reaches a step; locally every input is read where it is."""

    RO_MOUNT = "ro_mount"
    RW_MOUNT = "rw_mount"
    DOWNLOAD = "download"
    UPLOAD = "upload"
    DIRECT = "direct"
