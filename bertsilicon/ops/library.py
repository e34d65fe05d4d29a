"""``torch.library.custom_op`` registrations, so the ops are captured by ``torch.compile`` as opaque
nodes. Each op takes the requested backend as a trailing string ("" = choose) and resolves it when it
runs (outside tracing); ``register_fake`` gives the output metadata for tracing."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import reference as _ref
from ..backends.routing import resolve
from .autograd import reference_backward, save_args, saved_args


def _call(op, backend, *args):
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    return resolve(op, backend or None, device, *args)[1](*args)


@torch.library.custom_op("bertsilicon::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, attention_mask: Optional[Tensor], scale: Optional[float],
              backend: str) -> Tensor:
    return _call("attention", backend, q, k, v, attention_mask, scale)


@attention.register_fake
def _(q, k, v, attention_mask, scale, backend):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("bertsilicon::attention_varlen", mutates_args=())
def attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: Optional[float],
                     backend: str) -> Tensor:
    return _call("attention_varlen", backend, q, k, v, cu_seqlens, max_seqlen, scale)


@attention_varlen.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale, backend):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("bertsilicon::bias_gelu", mutates_args=())
def bias_gelu(x: Tensor, bias: Tensor, approximate: str, backend: str) -> Tensor:
    return _call("bias_gelu", backend, x, bias, approximate)


@bias_gelu.register_fake
def _(x, bias, approximate, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("bertsilicon::add_layernorm", mutates_args=())
def add_layernorm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float, backend: str) -> Tensor:
    return _call("add_layernorm", backend, x, residual, weight, bias, eps)


@add_layernorm.register_fake
def _(x, residual, weight, bias, eps, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("bertsilicon::linear", mutates_args=())
def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str], backend: str) -> Tensor:
    return _call("linear", backend, x, weight, bias, activation)


@linear.register_fake
def _(x, weight, bias, activation, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("bertsilicon::quantize", mutates_args=())
def quantize(x: Tensor, dtype: str, granularity: str, backend: str) -> tuple[Tensor, Tensor]:
    return _call("quantize", backend, x, dtype, granularity)


@quantize.register_fake
def _(x, dtype, granularity, backend):
    dims = _ref.quant_reduce_dims(x, granularity)
    scale_shape = [1 if i in dims else s for i, s in enumerate(x.shape)]
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(scale_shape, dtype=torch.float32)


@torch.library.custom_op("bertsilicon::int8_linear", mutates_args=())
def int8_linear(x_q: Tensor, x_scale: Tensor, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor],
                activation: Optional[str], out_dtype: torch.dtype, backend: str) -> Tensor:
    return _call("int8_linear", backend, x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)


@int8_linear.register_fake
def _(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype, backend):
    return x_q.new_empty((*x_q.shape[:-1], w_q.shape[0]), dtype=out_dtype)


@torch.library.custom_op("bertsilicon::round_to", mutates_args=())
def round_to(x: Tensor, fmt: str, rounding: str, seed: Optional[int], backend: str) -> Tensor:
    return _call("round_to", backend, x, fmt, rounding, seed)


@round_to.register_fake
def _(x, fmt, rounding, seed, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# -- autograd: every op's backward is its reference definition's (ops.autograd.reference_backward), as in eager --
def _setup_context(ctx, inputs, output):
    save_args(ctx, inputs)


def _backward_of(op: str):
    def backward(ctx, *grads):
        *args, _backend = saved_args(ctx)
        return (*reference_backward(op, tuple(args), grads, ctx.needs_input_grad[:-1]), None)
    return backward


for _op in (attention, attention_varlen, bias_gelu, add_layernorm, linear, quantize, int8_linear, round_to):
    _op.register_autograd(_backward_of(_op._name), setup_context=_setup_context)
