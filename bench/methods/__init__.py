"""Methods, one module each; importing this package registers every module found in it."""
import importlib
import pkgutil

from bench.methods.base import Batch, GapFc, MethodNet, StepOutput

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Batch", "GapFc", "MethodNet", "StepOutput"]
