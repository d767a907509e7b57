"""The `chattune` command line: one sub-command group per resource."""
