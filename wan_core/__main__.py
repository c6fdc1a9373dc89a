"""`python -m wan_core generate|demo|doctor` (see wan_core/cli.py)."""
import sys

from .cli import main

sys.exit(main())
