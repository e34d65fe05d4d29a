"""The fused encoder layers that replace a model's own, and their prepared GEMMs.

* :mod:`.prepared_linear`: :class:`PreparedLinear`, one GEMM with its weight prepared in its precision;
* :mod:`.base`: :class:`FusedLayerBase`, what every fused layer shares (one C++ call or per op);
* :mod:`.bert`: :class:`FusedEncoderLayer`, the post-LayerNorm BERT block (BERT, DistilBERT, RoBERTa, ...);
* :mod:`.mobilebert`: :class:`FusedMobileBertLayer`, MobileBERT's bottleneck layer.
"""
from .base import FusedLayerBase
from .bert import GEMMS, FusedEncoderLayer, LayerParts
from .mobilebert import FusedMobileBertLayer, MobileBertParts
from .prepared_linear import PRECISIONS, PreparedLinear

__all__ = ["FusedLayerBase", "FusedEncoderLayer", "FusedMobileBertLayer", "LayerParts", "MobileBertParts",
           "PreparedLinear", "GEMMS", "PRECISIONS"]
