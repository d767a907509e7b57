import sys

from chattune.cli.main import main

sys.exit(main())
