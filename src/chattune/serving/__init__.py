"""Serving: the inference engine, the model server, the endpoint gateway and its supervisor."""
