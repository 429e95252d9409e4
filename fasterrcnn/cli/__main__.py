"""``python -m fasterrcnn.cli``: the same as the ``fasterrcnn`` command."""

import sys

from . import main

sys.exit(main())
