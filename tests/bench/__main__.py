"""``python -m tests.bench``: runs the benchmark suite (see run.py)."""

import sys

from tests.bench.run import main

sys.exit(main())
