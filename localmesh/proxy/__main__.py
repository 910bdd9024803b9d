"""`python -m localmesh.proxy`: one gateway or sidecar process (see localmesh.proxy.server)."""

import sys

from localmesh.proxy.server import main

sys.exit(main())
