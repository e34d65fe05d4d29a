"""The BiLSTM student's costs (Tang et al. 2019) in the profiler's terms, so it stands beside the transformers.

``bilstm_ops(config, batch_size, seq_len)`` lists its ops (:class:`~.counts.Op`); ``profile_bilstm`` prices
them with the same roofline (:func:`~.roofline.price`) and hardware table as ``bertsilicon.profile``. ``config``
is any object with ``vocab_size, embedding_dim, hidden_size`` (per direction), ``mlp_hidden`` and
``num_labels`` (``bertsilicon.distill.BiLSTMConfig``). Per direction, with ``T = batch x seq`` tokens and
``h`` the hidden size:

    input projection   T x E x 4h MACs            one GEMM over every token
    recurrence         T x h x 4h MACs            ``seq`` dependent GEMMs of ``batch`` rows each
    gates              ~ 3 x 4h + 5 x h FLOPs per token (sigmoid/tanh, cell update), one kernel per step
"""
from __future__ import annotations

from typing import Dict, List

from .counts import ELEMENTWISE, GATHER, GEMM, Op
from .energy import HOROWITZ
from .hardware import check_precision
from .lookup import get_hardware
from .roofline import price, totals

GATE_FLOPS_PER_UNIT = 17  # 4 gate activations (~3 FLOPs each) + c = f*c + i*g, h = o*tanh(c)


def bilstm_ops(config, batch_size: int, seq_len: int) -> List[Op]:
    for name in ("batch_size", "seq_len"):
        v = {"batch_size": batch_size, "seq_len": seq_len}[name]
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    E, h, m, C = config.embedding_dim, config.hidden_size, config.mlp_hidden, config.num_labels
    T = batch_size * seq_len
    ops = [Op("embeddings", "word gather", GATHER, params=config.vocab_size * E, table_elems_read=T * E,
              act_out_elems=T * E, kernels=1, tokens=T)]
    for d in ("forward", "backward"):
        ops.append(Op(f"lstm.{d}", "input projection", GEMM, macs=T * E * 4 * h, other_flops=T * 4 * h,
                      params=E * 4 * h + 8 * h, weight_elems=E * 4 * h, vector_param_elems=8 * h,
                      gemm_in_elems=T * E, act_out_elems=T * 4 * h, kernels=1, gemm_kernels=1, tokens=T))
        ops.append(Op(f"lstm.{d}", "recurrence", GEMM, macs=T * h * 4 * h, params=h * 4 * h, weight_elems=h * 4 * h,
                      gemm_in_elems=T * h, act_out_elems=T * 4 * h, kernels=seq_len, gemm_kernels=seq_len, tokens=T))
        ops.append(Op(f"lstm.{d}", "gates", ELEMENTWISE, other_flops=T * h * GATE_FLOPS_PER_UNIT,
                      act_in_elems=T * 4 * h * 2, act_out_elems=T * 2 * h, kernels=seq_len, tokens=T))
    ops.append(Op("mlp", "fc1 + relu", GEMM, macs=batch_size * 2 * h * m, other_flops=2 * batch_size * m,
                  params=2 * h * m + m, weight_elems=2 * h * m, vector_param_elems=m, gemm_in_elems=batch_size * 2 * h,
                  act_out_elems=batch_size * m, kernels=1, gemm_kernels=1, tokens=batch_size))
    ops.append(Op("mlp", "fc2", GEMM, macs=batch_size * m * C, other_flops=batch_size * C, params=m * C + C,
                  weight_elems=m * C, vector_param_elems=C, gemm_in_elems=batch_size * m,
                  act_out_elems=batch_size * C, kernels=1, gemm_kernels=1, tokens=batch_size))
    return ops


def profile_bilstm(config, batch_size: int = 1, seq_len: int = 128, precision: str = "fp32",
                   hardware="avx2") -> Dict:
    """Totals (FLOPs, bytes, params, roofline latency, energy) of the BiLSTM student on ``hardware``."""
    hw = get_hardware(hardware)
    precision = check_precision(hw, precision)
    return totals(price(bilstm_ops(config, batch_size, seq_len), hw, precision, HOROWITZ))


__all__ = ["bilstm_ops", "profile_bilstm", "GATE_FLOPS_PER_UNIT"]
