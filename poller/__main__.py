"""``python -m poller`` runs the command line."""

import sys

from poller.cli import main

sys.exit(main())
