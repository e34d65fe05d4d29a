"""End-to-end benchmark suite behind ``bertsilicon bench`` and ``bench/e2e/cpu.py``.

``run_bench(BenchConfig(...))`` measures encoder latency, throughput and embedding cosine vs HF fp32 for
students x batch x max length x provider (torch eager/SDPA/int8/compile, ONNX Runtime fp32/int8,
OpenVINO, CTranslate2, llama.cpp, bertsilicon fp32/bf16/fp16/int8: ``catalog.PROVIDERS``), on real text, interleaved, with threads fixed;
``report.write_results`` writes JSON + Markdown + PNG; ``report.update_readme`` regenerates the README table.
"""
from .catalog import PROVIDER_NAMES, PROVIDERS, select_providers
from .providers import BASELINE, PRECISIONS, ProviderUnavailable
from .runner import DEFAULT_MODELS, TARGETS, BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench", "PROVIDERS", "PROVIDER_NAMES", "PRECISIONS", "BASELINE", "DEFAULT_MODELS",
           "TARGETS", "ProviderUnavailable", "select_providers"]
