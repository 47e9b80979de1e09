"""Parameters, memory traffic and training activation memory of a network.

- ``count_params``: exact number of distinct parameters (shared ones once).
- ``memory_access_bytes``: the memory access cost of ShuffleNet V2 (Ma et al. 2018): bytes read and
  written by every operator while the network runs (its tensor inputs, weights included, plus its
  outputs), intercepted at the dispatcher with a TorchDispatchMode. A tensor read by three ops
  counts three times. Not counted: views (ops whose schema says the output aliases an input:
  ``view``, ``t``, ``expand``, ``slice``, ``detach``, ...) and ``_unsafe_view``, which only relabel
  memory; ops returning no tensor (``size``, ``stride``); allocations that write nothing
  (``empty``, ``empty_like``, ``empty_strided``, ``new_empty``). A broadcast (stride-0) dimension
  is read once: a tensor counts the elements it actually holds. In-place ops read and write.
- ``saved_activation_bytes``: bytes of the tensors autograd saves for backward during one call
  (``saved_tensors_hooks``). Tensors that share storage (a view and its base, an in-place ReLU's
  output and its input) count once, with their whole storage, which is what stays alive; the
  model's parameters and buffers are not activations and are left out. The input batch, saved by
  the first convolution, counts.
- ``peak_cuda_bytes``: torch.cuda.max_memory_allocated over one call, after resetting the peak.

Bytes are element counts times element size; callers report MB = 10^6 bytes.
"""
from __future__ import annotations

import math
import weakref
from collections import Counter
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Dispatcher ops that allocate without writing, or reshape a fresh tensor without a copy.
NO_TRAFFIC = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
              "_unsafe_view")


def count_params(module: nn.Module) -> int:
    """Exact number of parameters (``parameters()`` yields a shared parameter once)."""
    return sum(p.numel() for p in module.parameters())


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds: its elements (a broadcast dimension once) times their size."""
    held = math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0)
    return held * t.element_size()


class MemoryTraffic(TorchDispatchMode):
    """Sums the bytes every intercepted operator reads and writes, in total and per op."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_op: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        name = func._overloadpacket.__name__
        if outputs and not func.is_view and name not in NO_TRAFFIC:
            inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            moved = sum(tensor_bytes(t) for t in inputs + outputs)
            self.total += moved
            self.by_op[name] += moved
        return out


def memory_access_bytes(fn: Callable[[], Any]) -> MemoryTraffic:
    """The traffic of everything ``fn()`` executes (run it under no_grad for inference)."""
    traffic = MemoryTraffic()
    with traffic:
        fn()
    return traffic


def saved_activation_bytes(model: nn.Module, fn: Callable[[], Any]) -> int:
    """Bytes saved for backward by ``fn()`` and still held by its graph when it returns (the
    graph of a discarded branch is freed), one per storage, ``model``'s parameters and buffers
    excluded."""
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    saved: list[tuple[weakref.ref, int, int]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in own:
            saved.append((weakref.ref(t), storage.data_ptr(), storage.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    # A live tensor keeps its storage alive, so the live entries' addresses are distinct storages.
    held = {ptr: nbytes for ref, ptr, nbytes in saved if ref() is not None}
    del result
    return sum(held.values())


def peak_cuda_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """torch.cuda.max_memory_allocated during ``fn()`` (everything allocated, weights included)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)
