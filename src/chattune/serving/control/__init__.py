"""The control side of endpoints: the supervisor process, its instances and their probes,
the engine interface instances are launched by, and the CLI's side (`lifecycle.py`)."""
