"""bench: attention mechanisms for CNN classifiers compared on equal terms.

``bench.run`` trains and measures a suite, ``bench.tune`` tunes methods on equal budgets,
``bench.profile`` measures cost, ``bench.build_model`` builds one method's network,
``bench.results`` and ``bench.compare`` return stored results as pandas DataFrames; they are
imported on first use, so that ``import bench.registry`` (or any other leaf module) loads nothing
else.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["build_model", "compare", "list_methods", "profile", "results", "run", "tune",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
