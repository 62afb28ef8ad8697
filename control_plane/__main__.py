"""`python -m control_plane`: the control plane alone (xDS + admin API), or its tools
(control_plane/cli/main.py)."""

import sys

from control_plane.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
