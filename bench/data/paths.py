"""Where datasets and generated caches live on disk."""
from __future__ import annotations

import os
from pathlib import Path


def data_dir(data_root: Path | None) -> Path:
    """``data_root`` if given, else ``$BENCH_CACHE``, else ``~/.cache/bench``."""
    if data_root is not None:
        return Path(data_root).expanduser()
    env = os.environ.get("BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bench"


def describe_root(data_root: Path | None) -> str:
    """How a message names the directory searched, including how it was chosen."""
    root = data_dir(data_root)
    if data_root is not None:
        return str(root)
    return f"{root} (the default data directory; give a data root or set $BENCH_CACHE)"
