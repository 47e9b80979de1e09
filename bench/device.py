"""Devices and mixed precision, named and validated in one place for every entry point."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional

import torch

from bench.errors import BenchError

DEVICES = "auto, cpu, cuda, cuda:N"
# The one AMP vocabulary: recipes, the cost task and `bench profile` all take these names.
AMP_DTYPES: dict[str, Optional[torch.dtype]] = {"none": None, "bf16": torch.bfloat16,
                                                "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto", param: str = "device") -> torch.device:
    """``auto`` -> CUDA when present, else the CPU; an explicit device must exist here."""
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device).strip().lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    valid = name in ("cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    if not valid:
        raise BenchError(f"{param} {name!r} is not a device; valid: {DEVICES}", param)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BenchError(f"{param} {name} requested but no CUDA device is available; use cpu "
                             f"or auto", param)
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise BenchError(f"{param} {name}: only {torch.cuda.device_count()} CUDA device(s)",
                             param)
    return torch.device(name)


def amp_dtype(amp: str, param: str = "amp") -> Optional[torch.dtype]:
    """The autocast dtype of an AMP name (``none`` -> None)."""
    key = str(amp or "none").strip().lower()
    if key not in AMP_DTYPES:
        raise BenchError(f"{param} {amp!r} is not a precision; valid: {', '.join(AMP_DTYPES)}",
                         param)
    return AMP_DTYPES[key]


def autocast(device: torch.device, amp: str) -> Any:
    """The AMP context for ``device`` (a no-op for ``none``)."""
    dtype = amp_dtype(amp)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously), so that a clock read
    next includes it; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
