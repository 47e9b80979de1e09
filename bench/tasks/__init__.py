"""Tasks, one module each; importing this package registers every module found in it."""
from bench.registry import import_submodules

import_submodules(__name__, __path__)
