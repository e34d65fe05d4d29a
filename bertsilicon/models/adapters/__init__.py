"""One adapter per Hugging Face model family: where the encoder is, which parts make a layer, which fused layer
class serves it, and why a config cannot be fused (:class:`~.base.Adapter`)."""
from . import bert, distilbert, electra, mobilebert, roberta
from .base import Adapter, activation_of

ADAPTERS = (bert.ADAPTER, distilbert.ADAPTER, *roberta.ADAPTERS, electra.ADAPTER, mobilebert.ADAPTER)

__all__ = ["ADAPTERS", "Adapter", "activation_of"]
