"""Adapter for ``MobileBertModel`` and its heads: layers fused as
:class:`~bertsilicon.models.layers.FusedMobileBertLayer` (inverted bottlenecks 512 -> 128 -> 512,
``NoNorm`` or LayerNorm, stacked FFNs, Q/K from the shared bottleneck and V from the full-width input)."""
from __future__ import annotations

from transformers.modeling_outputs import BaseModelOutput
from transformers.models.mobilebert import modeling_mobilebert as hf

from .base import Adapter, activation_of
from ..layers import FusedMobileBertLayer, MobileBertParts


def _parts(layer, config) -> MobileBertParts:
    a = layer.attention.self
    q, k, v = ("q", a.query), ("k", a.key), ("v", a.value)
    norms, attn_proj, attn_source = {}, (), None
    if config.use_bottleneck:
        bottleneck = layer.bottleneck
        norms["input"] = bottleneck.input.LayerNorm
        x_proj = (("input", bottleneck.input.dense),)
        if config.use_bottleneck_attention:  # q, k, v all from the input bottleneck
            attn_proj, attn_source = (q, k, v), "input"
        elif config.key_query_shared_bottleneck:  # q, k from the shared bottleneck, v from x
            norms["shared"] = bottleneck.attention.LayerNorm
            x_proj += (("shared", bottleneck.attention.dense), v)
            attn_proj, attn_source = (q, k), "shared"
        else:
            x_proj += (q, k, v)
        out_bottleneck, norm_ob = layer.output.bottleneck.dense, layer.output.bottleneck.LayerNorm
    else:
        x_proj, out_bottleneck, norm_ob = (q, k, v), None, None
    ffn = tuple((f.intermediate.dense, f.output.dense, f.output.LayerNorm) for f in getattr(layer, "ffn", ()))
    return MobileBertParts(
        x_proj=x_proj, attn_proj=attn_proj, attn_source=attn_source, norms=norms, o=layer.attention.output.dense,
        norm_o=layer.attention.output.LayerNorm, ffn=ffn, up=layer.intermediate.dense, down=layer.output.dense,
        norm_out=layer.output.LayerNorm, out_bottleneck=out_bottleneck, norm_ob=norm_ob,
        activation=activation_of(config.hidden_act), num_heads=config.num_attention_heads,
        no_norm=config.normalization_type == "no_norm")


def _unsupported(config):
    if config.normalization_type not in hf.NORM2FN:
        return f"normalization_type={config.normalization_type!r} (fused: {', '.join(hf.NORM2FN)})"
    if activation_of(config.hidden_act) is None:
        return f"unsupported activation hidden_act={config.hidden_act!r} (fused: gelu, gelu_new, gelu_pytorch_tanh, relu)"
    return None


ADAPTER = Adapter(
    family="MobileBERT", pretrained_class=hf.MobileBertPreTrainedModel, base_class=hf.MobileBertModel,
    encoder_attr="encoder", layer_parts=_parts, unsupported_reason=_unsupported,
    encoder_output=lambda h: BaseModelOutput(last_hidden_state=h), max_positions=lambda c: c.max_position_embeddings,
    layer_class=FusedMobileBertLayer)
