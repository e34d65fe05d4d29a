"""llama.cpp Q8_0 as a peer (``llama-cpp-python``): the row exists so the table says why it is or is not run.

``llama-cpp-python`` is published as a source distribution that compiles llama.cpp on install, and the
converter to GGUF (``convert_hf_to_gguf.py``) ships only inside that source tree, not in an installed package.
"""
from __future__ import annotations

import importlib

from .providers import BuildContext, Provider, ProviderUnavailable, Runner


def _llama_q8_0(ctx: BuildContext) -> Runner:
    try:
        importlib.import_module("llama_cpp")
    except ImportError as exc:
        raise ProviderUnavailable("llama-cpp-python is not installed (a source distribution that compiles "
                                  "llama.cpp: pip install llama-cpp-python)") from exc
    raise ProviderUnavailable("llama-cpp-python is installed, but no GGUF converter for BERT ships in an installed "
                              "package (convert_hf_to_gguf.py lives only in llama.cpp's source tree)")


LLAMA_PROVIDERS: tuple[Provider, ...] = (
    Provider("llama.cpp", "int8", "llama-cpp-python, the model converted to GGUF Q8_0 (blocks of 32 int8 weights, "
             "one fp16 scale each)", _llama_q8_0),
)
