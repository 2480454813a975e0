"""`python -m ustack` runs the command line."""

import sys

from ustack.cli import main

sys.exit(main())
