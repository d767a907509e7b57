"""chattune: fine-tune chat models, register them and serve them, on your own machines."""

__version__ = "0.1.0"
