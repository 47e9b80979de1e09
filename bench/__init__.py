"""bench: attention mechanisms for CNN classifiers compared on equal terms."""
from bench.api import build_model, list_methods

__version__ = "0.1.0"
__all__ = ["build_model", "list_methods", "__version__"]
