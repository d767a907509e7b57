"""The HTTP header names chattune's servers and clients share, each defined once here."""

# Client -> gateway (Azure's name): pick a deployment, bypassing the traffic split. The
# gateway also sends it back on answers, naming the deployment that answered.
DEPLOYMENT_HEADER = "azureml-model-deployment"
# Gateway -> model server: the milliseconds left of the request's `request_timeout_ms`.
TIMEOUT_HEADER = "x-chattune-timeout-ms"
# Gateway -> model server: the LoRA adapter of a `--lora-only` deployment.
ADAPTER_HEADER = "x-chattune-adapter"
# Gateway -> model server and back to the client: one id per request, in both logs.
REQUEST_ID_HEADER = "x-request-id"
# Gateway -> model server: `Bearer <instance key>` (`serving/keys.py`), which every instance
# demands on all routes but its probes. Bearer is OpenAI's scheme, so an OpenAI-compatible
# engine (vLLM's `--api-key`) checks the same header. The client's own Authorization (its
# endpoint key) is never passed up.
INSTANCE_AUTH_HEADER = "authorization"
