"""``python -m adamkit``: the same as the ``adamkit`` command."""

import sys

from .cli import main

sys.exit(main())
