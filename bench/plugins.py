"""Plugin loading: importing the modules that register methods, backbones, datasets, presets and
tasks. Kept out of ``bench.registry`` so that the registry imports no other bench module (every
plugin imports the registry; the registry imports none of them)."""
from __future__ import annotations


def load_all() -> None:
    """Import every module that registers entries (methods, backbones, datasets, tasks, presets)."""
    import bench.data  # noqa: F401
    import bench.methods  # noqa: F401
    import bench.models  # noqa: F401
    import bench.presets  # noqa: F401
    import bench.tasks  # noqa: F401
