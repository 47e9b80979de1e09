"""Trained weights kept between runs: one file per run configuration under ``OUT/checkpoints/``,
written atomically, so that a later task (``--tasks wsol``) never retrains and a crash never leaves
a truncated file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def checkpoint_path(out_dir: Path, digest: str) -> Path:
    """Where the run with configuration hash ``digest`` keeps its weights."""
    return Path(out_dir) / "checkpoints" / f"{digest}.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (a checkpoint or a figure
    a remote worker sent back)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
