"""`python -m shim` runs the shim binary's command line (see shim/cli.py)."""

from __future__ import annotations

import sys

from shim.cli import main

sys.exit(main())
