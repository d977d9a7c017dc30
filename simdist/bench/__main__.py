"""``python -m simdist.bench``: see ``simdist/bench/__init__.py``."""

import sys

from simdist.bench import main

if __name__ == "__main__":
    sys.exit(main())
