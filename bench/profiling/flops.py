"""Multiply-accumulate counts of a network, per image, in MACs (one multiply-add = 1).

fvcore, torchvision and timm count this way (ResNet-50 at 224x224: 4.11 G), so ``gmacs`` is
comparable with their "GFLOPs"; torch.utils.flop_counter counts 2 FLOPs per MAC and is halved here.

- ``count_traced(model, x)``: one torch.jit trace by fvcore's FlopCountAnalysis, giving both
  ``default`` (fvcore's default op set: convolutions, matrix products, batch/group/layer norm,
  adaptive average pooling, upsampling, grid sampling; element-wise ops count 0) and ``all``
  (the default set plus the rule table below). Only the traced path counts: pass the deployed
  network in eval mode.
- ``count_dispatched(fn)``: counts every op ``fn`` runs as it reaches the dispatcher (a
  TorchDispatchMode) with FlopCounterMode's formulas plus the same rule table (and fvcore's rules
  for the norms and pooling it counts by default), so it is the "all" count of whatever ``fn``
  executes: a whole ``training_loss`` call, with its training-only branches, extra forward passes
  and any gradients taken inside the loss (double backward counts its ``convolution_backward``
  work). Ops are counted as they arrive, never decomposed further, so the count does not depend on
  which ops a torch version gives Python decompositions.

Rule table (added to fvcore's default handles; "element" = one tensor element; every elementary
pass over a tensor is one op per element, whatever the function):

| ops                                                           | count                          |
|---------------------------------------------------------------|--------------------------------|
| add sub rsub mul div neg abs pow sqrt rsqrt reciprocal exp log | 1 per output element           |
| sigmoid hardsigmoid tanh relu relu6 leaky_relu elu gelu silu   |                                |
| hardswish hardtanh clamp clamp_min clamp_max minimum maximum,  |                                |
| max/min of two tensors                                        |                                |
| mean sum prod amax amin logsumexp norm linalg_vector_norm      | 1 per input element            |
| adaptive_max_pool2d, max/min over dimensions                  |                                |
| var std                                                       | 2 per input element (1)        |
| softmax log_softmax                                           | 5 per element (2)              |
| max_pool2d avg_pool2d                                         | 1 per output x kernel element  |
| nll_loss (the end of cross-entropy)                           | 1 per target                   |
| cat stack views copies padding dropout                        | 0 (data movement; see memory.py) |

(1) a mean pass and a squared-deviation pass. (2) max, subtract, exp, sum, divide.
In-place variants (``relu_``, ``add_``) count like their op. fvcore's own rules, reproduced at the
dispatcher level: batch norm 2 per element in eval mode with affine parameters (1 without), 5 (4)
in training mode; group/layer norm 5 (4); adaptive average pooling 1 per input element; nearest
upsampling 1 and bilinear upsampling or grid sampling 4 per output element. Ops in neither table
are listed in ``FlopCount.uncounted`` (e.g. the element-wise backward ops of a double backward).
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class Shape(tuple):
    """A tensor argument seen by a rule: its shape (other arguments are passed as they are)."""


Rule = Callable[[list, Optional[Shape]], int]  # (arguments, first output's shape) -> MACs


def _numel(shape: Optional[Shape]) -> int:
    return math.prod(shape) if isinstance(shape, Shape) else 0


def per_output(factor: int) -> Rule:
    """``factor`` per element of the (first) output: element-wise ops."""
    return lambda args, out: factor * _numel(out)


def per_input(factor: int) -> Rule:
    """``factor`` per element of the first input: reductions."""
    return lambda args, out: factor * _numel(args[0])


def _binary_or_reduction(args: list, out: Optional[Shape]) -> int:
    """``max``/``min``: element-wise of two tensors, or a reduction of one."""
    if len(args) > 1 and isinstance(args[1], Shape):
        return _numel(out)
    return _numel(args[0])


def _window(args: list, out: Optional[Shape]) -> int:
    """Pooling: each output element reads one window (``kernel_size`` is argument 1). A kernel
    computed from sizes (global pooling) is not a constant of the trace: the windows then tile the
    input (stride = kernel, the default), one read per input element."""
    kernel = [args[1]] if isinstance(args[1], int) else args[1]
    if kernel is None or None in kernel:
        return _numel(args[0])
    if len(kernel) == 1:
        kernel = kernel * 2
    return _numel(out) * math.prod(kernel)


def _per_target(args: list, out: Optional[Shape]) -> int:
    """``nll_loss``: one read-and-add per target (argument 1)."""
    return _numel(args[1])


def _norm(affine_index: int, train_factor: int, eval_factor: int, training_index: Optional[int],
          default_training: bool = True) -> Rule:
    """fvcore's norm rules: ``train_factor`` (+1 for affine) per input element in training mode,
    ``eval_factor`` (+1 for affine) in eval mode; the mode is argument ``training_index``."""
    def rule(args: list, out: Optional[Shape]) -> int:
        affine = isinstance(args[affine_index], Shape)
        training = default_training if training_index is None else bool(args[training_index])
        return _numel(args[0]) * ((train_factor if training else eval_factor) + affine)
    return rule


ELEMENTWISE = ("add", "sub", "rsub", "mul", "div", "neg", "abs", "pow", "sqrt", "rsqrt",
               "reciprocal", "exp", "log", "sigmoid", "hardsigmoid", "tanh", "relu", "relu6",
               "leaky_relu", "elu", "gelu", "silu", "hardswish", "hardtanh", "clamp", "clamp_min",
               "clamp_max", "minimum", "maximum")
REDUCTIONS = ("mean", "sum", "prod", "amax", "amin", "logsumexp", "norm", "linalg_vector_norm",
              "adaptive_max_pool2d")

# The rule table, by op name (no namespace, no trailing "_"): the same names at both levels.
ADDED_RULES: dict[str, Rule] = {
    **{name: per_output(1) for name in ELEMENTWISE},
    **{name: per_input(1) for name in REDUCTIONS},
    "max": _binary_or_reduction,
    "min": _binary_or_reduction,
    "var": per_input(2),
    "std": per_input(2),
    "softmax": per_output(5),
    "log_softmax": per_output(5),
    "max_pool2d": _window,
    "avg_pool2d": _window,
    "nll_loss": _per_target,
}

# Names the dispatcher uses for the same ops (after autograd decomposed the public ones).
DISPATCH_ALIASES = {"_softmax": "softmax", "_log_softmax": "log_softmax",
                    "max_pool2d_with_indices": "max_pool2d", "nll_loss_forward": "nll_loss"}

# fvcore's default rules for non-matmul ops, at the dispatcher level (its jit names differ).
DISPATCH_FVCORE_RULES: dict[str, Rule] = {
    "native_batch_norm": _norm(1, 4, 1, training_index=5),
    "cudnn_batch_norm": _norm(1, 4, 1, training_index=5),
    "miopen_batch_norm": _norm(1, 4, 1, training_index=5),
    "_native_batch_norm_legit": _norm(1, 4, 1, training_index=5),
    "_native_batch_norm_legit_no_training": _norm(1, 4, 1, None, default_training=False),
    "native_group_norm": _norm(1, 4, 4, None),
    "native_layer_norm": _norm(2, 4, 4, None),
    "adaptive_avg_pool2d": per_input(1),
    "_adaptive_avg_pool2d": per_input(1),
    "upsample_nearest2d": per_output(1),
    "upsample_bilinear2d": per_output(4),
    "grid_sampler_2d": per_output(4),
}

# jit ops that move or relabel data without arithmetic: counted 0 by the "all" count, not reported.
DATA_MOVEMENT = ("cat", "stack", "slice", "select", "unsqueeze", "squeeze", "view", "view_as",
                 "reshape", "reshape_as", "expand", "expand_as", "flatten", "unflatten", "permute",
                 "transpose", "t", "contiguous", "clone", "copy_", "to", "type_as", "detach",
                 "split", "chunk", "unbind", "narrow", "repeat", "pad", "constant_pad_nd",
                 "dropout", "feature_dropout", "size", "numel", "Int", "ScalarImplicit",
                 "zeros", "zeros_like", "ones", "ones_like", "empty_like", "full_like")


@dataclass
class FlopCount:
    """A count in MACs: its total, per op, and the ops that ran but that no rule counted."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)

    @property
    def giga(self) -> float:
        return self.total / 1e9


@dataclass
class TracedCount:
    """fvcore's default count and the count with the rule table, from one trace."""

    default: FlopCount
    all: FlopCount


def _jit_argument(value: Any) -> Any:
    """A jit graph value as a rule sees it: a Shape for a tensor, else its constant (or None).
    0-dim integer tensors (sizes the tracer records, as in ``h * w - 1``, and counters such as
    ``num_batches_tracked``) are not tensor work and are not shapes."""
    kind = value.type()
    if isinstance(kind, torch._C.TensorType):
        sizes = kind.sizes() if value.isCompleteTensor() else None
        dtype = kind.dtype()
        if sizes is None or (not sizes and not (dtype.is_floating_point or dtype.is_complex)):
            return None
        return Shape(sizes)
    if value.node().kind() == "prim::ListConstruct":  # e.g. a kernel_size given as an int
        return [_jit_argument(v) for v in value.node().inputs()]
    return value.toIValue()


def _jit_handle(name: str, rule: Rule) -> Callable[[list, list], Counter]:
    """An fvcore op handle applying ``rule``; its count is filed under ``name``."""
    def handle(inputs: list, outputs: list) -> Counter:
        out = _jit_argument(outputs[0]) if outputs else None
        return Counter({name: rule([_jit_argument(v) for v in inputs], out)})
    return handle


def import_fvcore():
    """fvcore's FlopCountAnalysis (its import scripts a function, which torch deprecates)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


def count_traced(model: nn.Module, x: torch.Tensor) -> TracedCount:
    """fvcore counts of ``model(x)`` (traced once), with and without the rule table, in MACs."""
    FlopCountAnalysis = import_fvcore()
    analysis = FlopCountAnalysis(model, x)
    analysis.set_op_handle(**{f"aten::{name}{suffix}": _jit_handle(name, rule)
                              for name, rule in ADDED_RULES.items() for suffix in ("", "_")})
    analysis.set_op_handle(**{f"aten::{name}": None for name in DATA_MOVEMENT})
    # fvcore ignores torch.jit.TracerWarning (by category) while tracing: say so explicitly.
    analysis.tracer_warnings("no_tracer_warning")
    # Ops outside both tables are listed in ``uncounted`` instead of fvcore's log lines.
    analysis.unsupported_ops_warnings(False)
    # Modules a deployed network keeps but does not run at inference (ABN's K->K conv, used only
    # by the loss and the class maps) are expected; fvcore would log each one.
    analysis.uncalled_modules_warnings(False)
    by_op = {k: int(v) for k, v in analysis.by_operator().items()}
    unsupported = sorted(analysis.unsupported_ops())
    # The rule table's counts are filed under its own names, which fvcore's handles never use.
    default = {k: v for k, v in by_op.items() if k not in ADDED_RULES}
    added = sorted(f"aten::{k}" for k in by_op if k in ADDED_RULES)
    return TracedCount(FlopCount(sum(default.values()), default, sorted(added + unsupported)),
                       FlopCount(sum(by_op.values()), by_op, unsupported))


# Dispatcher ops that only move, allocate or relabel data (views are recognised by their schema).
DISPATCH_DATA_MOVEMENT = ("cat", "stack", "clone", "copy", "_to_copy", "_unsafe_view", "empty",
                          "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros",
                          "zeros_like", "ones", "ones_like", "full", "full_like", "fill",
                          "scalar_tensor", "constant_pad_nd", "lift_fresh", "lift_fresh_copy",
                          "_local_scalar_dense")


def _as_shape(value: Any) -> Any:
    """A dispatcher argument as a rule sees it; 0-dim integer tensors (counters such as batch
    norm's ``num_batches_tracked``) are not shapes, as in ``_jit_argument``."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() == 0 and not (value.is_floating_point() or value.is_complex()):
        return None
    return Shape(value.shape)


def _dispatch_formula(rule: Rule) -> Callable[..., int]:
    """A FlopCounterMode formula applying ``rule``; it returns FLOPs (2 per MAC) like the others."""
    def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
        out = out_val[0] if isinstance(out_val, (tuple, list)) else out_val
        return 2 * rule([_as_shape(a) for a in args], _as_shape(out))
    formula._get_raw = True  # FlopCounterMode passes tensors, not shapes, to such formulas
    return formula


def _dispatch_mapping() -> dict[Any, Callable[..., int]]:
    """FlopCounterMode's custom mapping: the rule table and fvcore's norm/pool rules, by packet."""
    aliases = {alias: ADDED_RULES[name] for alias, name in DISPATCH_ALIASES.items()}
    rules = {**ADDED_RULES, **aliases, **DISPATCH_FVCORE_RULES}
    mapping = {}
    for name, rule in rules.items():
        for variant in (name, f"{name}_"):
            packet = getattr(torch.ops.aten, variant, None)
            if packet is not None:
                mapping[packet] = _dispatch_formula(rule)
    return mapping


class _DispatchCount(TorchDispatchMode):
    """Counts every op as it reaches the dispatcher with its formula, or records it as uncounted
    (unless it produces no tensor, is a view or only moves data). An op is never decomposed:
    FlopCounterMode in torch 2.14 decomposes any op with a Python CompositeImplicitAutograd kernel
    although it has a formula (nearest upsampling into index arithmetic, batch norm into its
    ``_legit`` variants) and 2.15 does not, so its counts depended on the torch version."""

    def __init__(self, formulas: dict[Any, Callable[..., int]]) -> None:
        super().__init__()
        self.formulas = formulas
        self.flops: Counter = Counter()
        self.uncounted: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = self.formulas.get(packet)
        if formula is not None:
            self.flops[packet] += formula(*args, **kwargs, out_val=out)
        elif (not func.is_view and packet.__name__.rstrip("_") not in DISPATCH_DATA_MOVEMENT
                and any(isinstance(t, torch.Tensor) for t in tree_leaves(out))):
            self.uncounted.add(f"aten::{packet.__name__}")
        return out


def count_dispatched(fn: Callable[[], Any]) -> FlopCount:
    """MACs of everything ``fn()`` executes, counted op by op as the ops reach the dispatcher:
    FlopCounterMode's conv/matmul formulas (halved) plus the rule table."""
    # FlopCounterMode's registry: its own formulas and ours, each taking (*args, out_val=...).
    formulas = FlopCounterMode(display=False, custom_mapping=_dispatch_mapping()).flop_registry
    counter = _DispatchCount(formulas)
    with counter:
        fn()
    by_op = Counter()
    for packet, flops in counter.flops.items():
        name = packet.__name__.rstrip("_")
        by_op[DISPATCH_ALIASES.get(name, name)] += flops // 2
    return FlopCount(sum(by_op.values()), dict(by_op), sorted(counter.uncounted))
