"""The gateway of one online endpoint: keys, traffic, mirror, limits, forwarding (`app.py`)."""
