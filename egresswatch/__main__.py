"""`python -m egresswatch ...` runs the CLI."""

import sys

from egresswatch.cli import main

sys.exit(main())
