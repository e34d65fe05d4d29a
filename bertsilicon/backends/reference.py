"""The reference backend: registers :mod:`bertsilicon.reference` for every op. Serves any device."""
from .. import reference as R
from .registry import register

for _name in ("attention", "attention_varlen", "bias_gelu", "add_layernorm", "linear", "quantize", "int8_linear", "round_to"):
    register(_name, "reference")(getattr(R, _name))
