"""Base models: the catalog of cards, import into plain checkpoints, workspace versions."""
