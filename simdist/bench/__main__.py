"""``python -m simdist.bench``: the schemes on every visible GPU (``simdist.bench.schemes``)."""

import sys

from simdist.bench.schemes import main

if __name__ == "__main__":
    sys.exit(main())
