"""Base models: the catalog of cards, import into plain checkpoints, workspace versions, and
the one model stack (`checkpoint`: folder layouts; `loading`: dtype rule, tokenizer, weights)."""
