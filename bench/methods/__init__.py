"""Methods, one module each; importing this package registers every module found in it."""
from bench.methods.base import Batch, GapFc, MethodNet, StepOutput
from bench.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["Batch", "GapFc", "MethodNet", "StepOutput"]
