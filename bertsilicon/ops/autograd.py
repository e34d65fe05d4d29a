"""Autograd for the fused ops: a C++ or Triton kernel's forward, the reference definition's backward.

The kernels are forward kernels; every backend's backward is :func:`reference_backward`, recomputed from the
saved inputs, so an op's gradient does not depend on the backend that ran its forward (eagerly, and under
``torch.compile`` through :mod:`.library`)."""
from __future__ import annotations

import torch

from .. import reference as _ref


def reference_backward(op: str, args: tuple, grads: tuple, needs_input_grad) -> tuple:
    """Gradients of ``op``'s reference definition (:mod:`bertsilicon.reference`) at ``args``, for the
    incoming ``grads`` (one per output, None for none), one entry per arg (None where not needed).

    The C++ and Triton kernels are forward kernels; every backend's backward is this one, recomputed from
    the saved inputs, so an op's gradient does not depend on the backend that ran its forward (and equals
    what ``backend="reference"`` gives, bit for bit)."""
    inputs = [a.detach().requires_grad_(need) if isinstance(a, torch.Tensor) else a
              for a, need in zip(args, needs_input_grad)]
    with torch.enable_grad():
        outs = getattr(_ref, op)(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    wrt = [a for a, need in zip(inputs, needs_input_grad) if need]
    found = (list(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))
             if pairs else [None] * len(wrt))
    return tuple(found.pop(0) if need else None for need in needs_input_grad)


def save_args(ctx, args) -> None:
    """Keep an op's arguments on an autograd ``ctx``: the tensors saved for backward, the rest as they are."""
    ctx.is_tensor = [isinstance(a, torch.Tensor) for a in args]
    ctx.constants = [None if t else a for a, t in zip(args, ctx.is_tensor)]
    ctx.save_for_backward(*[a for a, t in zip(args, ctx.is_tensor) if t])


def saved_args(ctx) -> tuple:
    saved = iter(ctx.saved_tensors)
    return tuple(next(saved) if t else c for t, c in zip(ctx.is_tensor, ctx.constants))


class KernelForwardReferenceBackward(torch.autograd.Function):
    """``fn(*args)`` (a C++ or Triton kernel) forward; :func:`reference_backward` backward."""

    @staticmethod
    def forward(ctx, op, fn, *args):
        ctx.op = op
        save_args(ctx, args)
        return fn(*args)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        return (None, None, *reference_backward(ctx.op, saved_args(ctx), grads, ctx.needs_input_grad[2:]))
