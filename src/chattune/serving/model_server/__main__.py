"""`python -m chattune.serving.model_server ...`: one model-server instance (see `cli.py`)."""

import sys

from chattune.serving.model_server.cli import main

sys.exit(main())
