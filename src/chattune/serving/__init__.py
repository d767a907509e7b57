"""Serving, split by role.

- `gateway/`: the endpoint gateway (keys, traffic, mirror, limits, forwarding).
- `model_server/`: one instance: thin router, wire models, service, engine.
- `control/`: the supervisor, its instances and probes, the engine interface instances are
  launched through, and the CLI's side of the supervisor (`lifecycle.py`).
- `endpoints.py`, `deployments.py`: the rows; `service.py`: the endpoint/deployment
  operations the CLI and the SDK call.
- `headers.py`, `lifetime.py`, `http_errors.py`, `bodies.py`: header names, deadlines and
  client disconnects, the one HTTP error channel, and request bodies (parsed with a depth
  limit, and documented), shared by the gateway and the model server.
"""
