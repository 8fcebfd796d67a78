"""``python -m embzip``: the same as the ``embzip`` command."""

import sys

from embzip.cli import main

if __name__ == "__main__":
    sys.exit(main())
