"""``python -m toy_cli ARGS`` with tests/ on the path: bench's command line with conftest's test
datasets registered, for tests that run bench in other processes (torchrun)."""
import sys

import conftest  # noqa: F401  (registers toy-quadrants and toy-grid)
from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
