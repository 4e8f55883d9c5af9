"""``python -m lapsd``: the ``lapsd`` command."""

import sys

from lapsd.cli import main

sys.exit(main())
