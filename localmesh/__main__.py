"""`python -m localmesh ...`: see localmesh.cli."""

import sys

from localmesh.cli import main

sys.exit(main())
