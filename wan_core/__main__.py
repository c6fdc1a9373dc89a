"""`python -m wan_core generate|demo` (see wan_core/cli.py)."""
import sys

from .cli import main

sys.exit(main())
