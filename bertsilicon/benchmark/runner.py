"""The end-to-end run: students x batch x max length x provider (x precision), speed and accuracy together.

Method (the same for every provider, stated in every report):

* **Same input.** Real text (``bertsilicon.data``), tokenized once per (batch, max length) with the real
  WordPiece tokenizer, truncated to ``seq`` and padded (to the longest in the batch by default); every
  provider is fed that very batch. The timing batch of size B is the first B texts of one fixed draw, so
  batch 1 is contained in batch 8, which is contained in batch 32.
* **Fixed threads.** ``torch.set_num_threads(threads)`` (which the bertsilicon C++ kernels follow) and ONNX
  Runtime ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``.
* **Warm-up, then interleaved rounds.** Each provider runs ``warmup`` times; then rounds of one sample per
  provider, the starting provider rotated every round (A B C, B C A, ...), so slow drifts of the machine
  (turbo, other tenants) hit every provider alike. A sample times ``inner`` back-to-back calls, ``inner``
  chosen so one sample lasts >= ``min_sample_s``. A provider slower than ``budget_s / repeats`` per call
  takes fewer samples (never fewer than 3). Reported: median, min and max of the samples.
* **Accuracy.** Mean-pooled last hidden state (over real tokens) of ``accuracy_texts`` further texts,
  cosine against the same model's Hugging Face fp32 output (SDPA); min and mean over texts.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from ..models.eval import mean_pool
from . import machine
from . import columns as extra_columns
from .catalog import PROVIDER_NAMES, select_providers
from .columns import COLUMNS
from .providers import BASELINE, PRECISIONS, Batch, BuildContext, Provider, build_runner, tokenize

DEFAULT_MODELS = ("minilm-l6", "tinybert4", "distilbert", "bert-base")
PADDINGS = ("longest", "max_length")
# Speed targets: (ours, peer, max latency ratio ours/peer), measured on the same batch in one run.
TARGETS = (
    (("bertsilicon", "fp32"), ("torch-sdpa", "fp32"), 0.85),
    (("bertsilicon", "bf16"), ("torch-sdpa", "bf16"), 0.90),
    (("bertsilicon", "int8"), ("onnxruntime", "int8"), 1.00),
)
# The configuration the speed targets are stated for; the report marks its rows.
HEADLINE = {"model": "minilm-l6", "batch": 8, "seq": 128, "threads": 2}
INT8_COSINE_TARGET = 0.995  # docs/architecture.md: int8 mean-pooled embedding cosine vs fp32 on real text


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return torch.get_num_threads()


@dataclass
class BenchConfig:
    """One run. ``quick()`` gives the < 5 minute configuration. ``models``: student names or model directories
    (:func:`bertsilicon.sources.model_source`). ``model_overrides`` maps a student name to ``student_config``
    overrides (tests use it to make a tiny student)."""

    models: list = field(default_factory=lambda: list(DEFAULT_MODELS))
    batches: list = field(default_factory=lambda: [1, 8, 32])
    seqs: list = field(default_factory=lambda: [128])
    providers: Optional[list] = None  # provider names; None = all
    precisions: Optional[list] = None  # None = all
    threads: int = field(default_factory=_default_threads)
    repeats: int = 10
    warmup: int = 2
    min_sample_s: float = 0.05
    budget_s: float = 60.0  # per provider per cell: slow providers take fewer (>= 3) samples
    accuracy_texts: int = 64
    accuracy_batch: int = 8
    corpus: str = "pydoc"
    texts_file: Optional[str] = None  # the user's texts (bertsilicon.sources.read_texts) instead of the corpus
    padding: str = "longest"
    quick: bool = False
    note: str = ""
    tag: str = ""  # appended to the file stem: e2e[-quick][-tag]
    model_overrides: dict = field(default_factory=dict)
    seed: int = 0
    columns: list = field(default_factory=list)  # any of columns.COLUMNS, measured after the timing
    quality_limit: Optional[int] = None  # items per part of the quality texts (None: all)
    cold_starts: int = 3  # fresh processes per provider for the cold-start column

    @classmethod
    def quick_defaults(cls, **kw) -> "BenchConfig":
        base = dict(models=["minilm-l6"], batches=[1, 8], repeats=5, warmup=1, min_sample_s=0.02,
                    budget_s=10.0, accuracy_texts=16, quick=True, quality_limit=150, cold_starts=1)
        base.update(kw)
        return cls(**base)

    def validate(self) -> "BenchConfig":
        from bertsilicon.data import CORPORA
        from bertsilicon.models.students import STUDENTS
        from bertsilicon.sources import model_source

        def positive_ints(name, values):
            if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
                raise ValueError(f"{name}: expected a non-empty list of positive integers, got {values!r}")

        if not self.models:
            raise ValueError(f"models: expected at least one of: {', '.join(STUDENTS)}, or a model directory")
        bad = [m for m in self.models if m not in STUDENTS and os.sep not in m and not os.path.exists(m)]
        if bad:
            raise ValueError(f"models: unknown {', '.join(map(repr, bad))}; expected any of: {', '.join(STUDENTS)}, "
                             "or a model directory")
        for m in self.models:
            model_source(m, option="--model", fp32_weights=True)  # a directory: checked to hold a model
        positive_ints("batch", self.batches)
        positive_ints("seq", self.seqs)
        if any(s > 512 for s in self.seqs):
            raise ValueError(f"seq: the students have 512 positions; got {self.seqs}")
        for name in ("threads", "repeats", "accuracy_batch"):
            positive_ints(name, [getattr(self, name)])
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup: expected an integer >= 0, got {self.warmup!r}")
        if not isinstance(self.accuracy_texts, int) or self.accuracy_texts < 1:
            raise ValueError(f"accuracy_texts: expected an integer >= 1, got {self.accuracy_texts!r}")
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus: unknown {self.corpus!r}; expected one of: {', '.join(CORPORA)}")
        if not isinstance(self.tag, str) or not all(c.isalnum() or c in "-_." for c in self.tag):
            raise ValueError(f"tag: expected letters, digits, '-', '_' or '.', got {self.tag!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding: unknown {self.padding!r}; expected one of: {', '.join(PADDINGS)}")
        bad = [c for c in self.columns if c not in COLUMNS]
        if bad:
            raise ValueError(f"columns: unknown {', '.join(map(repr, bad))}; expected any of: {', '.join(COLUMNS)}")
        if self.quality_limit is not None:
            positive_ints("quality_limit", [self.quality_limit])
        positive_ints("cold_starts", [self.cold_starts])
        select_providers(self.providers, self.precisions)  # raises on unknown names
        return self


# ------------------------------------------------------------------------------------------------ #
# inputs                                                                                             #
# ------------------------------------------------------------------------------------------------ #
def text_pool(cfg: BenchConfig) -> tuple[list[str], list[str]]:
    """(timing texts, accuracy texts): one deterministic draw from the corpus (or the first texts of
    ``cfg.texts_file``, in file order), disjoint."""
    n_time = max(cfg.batches)
    if cfg.texts_file:
        from bertsilicon.sources import read_texts

        pool, source = read_texts(cfg.texts_file), f"--texts {cfg.texts_file}"
    else:
        import random

        from bertsilicon import data

        pool, source = data.corpus(cfg.corpus).subset(n_time + cfg.accuracy_texts + 2, seed=cfg.seed).texts, \
            f"corpus {cfg.corpus!r}"
        random.Random(cfg.seed).shuffle(pool)  # subset() keeps corpus order (topics alphabetically): mix them
    if len(pool) < n_time + cfg.accuracy_texts:
        raise ValueError(f"{source} has {len(pool)} texts; batch {n_time} + accuracy texts {cfg.accuracy_texts} "
                         "need that many (lower --batch-size or --accuracy-texts)")
    return pool[:n_time], pool[n_time:n_time + cfg.accuracy_texts]


def example_batch(tok, seq: int) -> Batch:
    """A small ragged batch (one row padded) for ONNX export and compile warm-up."""
    from bertsilicon import data

    texts = data.corpus("pydoc").subset(2, seed=1).texts
    short = " ".join(texts[0].split()[:5])
    return tokenize(tok, [short, texts[1]], min(seq, 64), "longest")


# ------------------------------------------------------------------------------------------------ #
# measurement                                                                                        #
# ------------------------------------------------------------------------------------------------ #
@contextlib.contextmanager
def _no_gc():
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def wall_clock_timer(run, batch, n: int) -> float:
    """Seconds per call of ``n`` back-to-back ``run(batch)`` calls, host clock (CPU providers)."""
    t = time.perf_counter()
    for _ in range(n):
        run(batch)
    return (time.perf_counter() - t) / n


def time_interleaved(runners: dict, batch: Batch, cfg: BenchConfig, progress=None, timer=wall_clock_timer) -> dict:
    """Seconds per call for every runner, sampled in rotated round-robin order (see module docstring).
    ``timer(run, batch, n) -> seconds per call`` takes one sample (default: host clock; a GPU benchmark
    passes a CUDA-event timer). Returns ``{key: {"samples": [...], "inner": n}}``; a runner that raises gets
    ``{"error": "..."}``."""
    live, out, per_call, done = dict(runners), {}, {}, 0
    with torch.inference_mode(), _no_gc():
        for key, run in list(live.items()):
            try:
                for _ in range(cfg.warmup):  # the first call may compile (torch.compile) or allocate
                    run(batch)
                per_call[key] = timer(run, batch, 1)  # one timed probe call sizes the samples
            except Exception as exc:  # noqa: BLE001 - reported in the row
                out[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                del live[key]
        inner = {k: max(1, min(100, math.ceil(cfg.min_sample_s / max(per_call[k], 1e-6)))) for k in live}
        count = {k: max(min(3, cfg.repeats), min(cfg.repeats, int(cfg.budget_s / max(per_call[k] * inner[k], 1e-6))))
                 for k in live}
        samples = {k: [] for k in live}
        keys = list(live)
        for r in range(max(count.values(), default=0)):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                if k in out or len(samples[k]) >= count[k]:
                    continue
                run, n = live[k], inner[k]
                try:
                    samples[k].append(timer(run, batch, n))
                except Exception as exc:  # noqa: BLE001
                    out[k] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                if progress is not None:
                    progress.update(1)
                    done += 1
    if progress is not None:  # budgets and failures skip steps: keep the bar's total honest
        progress.update(len(runners) * cfg.repeats - done)
    for k in live:
        out.setdefault(k, {"samples": samples[k], "inner": inner[k]})
    return out


def embed(run, batches) -> torch.Tensor:
    """Mean-pooled (over real tokens) last hidden states, fp32, one row per text."""
    with torch.inference_mode():
        return torch.cat([mean_pool(run(b), b.attention_mask) for b in batches])


def cosine_stats(emb: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(emb.double(), ref.double(), dim=-1)
    return float(cos.mean()), float(cos.min())


def latency_stats(samples: list) -> dict:
    ms = [s * 1e3 for s in samples]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "n": len(ms),
            "samples": [round(x, 4) for x in ms]}


# ------------------------------------------------------------------------------------------------ #
# the run                                                                                            #
# ------------------------------------------------------------------------------------------------ #
def _progress_total(cfg: BenchConfig, providers) -> int:
    cells = len(cfg.models) * len(cfg.seqs)
    return cells * len(providers) + cells * len(cfg.batches) * len(providers) * cfg.repeats


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="bench", unit="step", file=sys.stderr, disable=quiet, dynamic_ncols=True)


# Seconds per unit of a configuration's weight (:func:`_cell_weights`) assumed before one was measured: a
# MiniLM-sized model on 2 cores. Only the first estimate uses it; the refined one is measured.
PRIOR_S_PER_WEIGHT = 3e-3


def _model_scale(spec: str) -> float:
    """A model's GEMM work per token relative to MiniLM-L6 (layers x hidden^2), from its config only."""
    from bertsilicon.models.students import STUDENTS, student_config

    try:
        if spec in STUDENTS:
            c = student_config(spec)
        else:
            from transformers import AutoConfig

            c = AutoConfig.from_pretrained(spec, local_files_only=True)
        layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layers", 6)
        hidden = getattr(c, "hidden_size", None) or getattr(c, "dim", 384)
    except (OSError, ValueError):
        return 1.0
    return layers * hidden * hidden / (6 * 384 * 384)


def _cell_weights(cfg: BenchConfig, providers) -> list[float]:
    """Relative cost of each (model, max length) configuration, in run order: providers x timed rounds x tokens
    x model size."""
    per_token = len(providers) * (cfg.repeats + cfg.warmup) * sum(cfg.batches)
    return [per_token * seq * _model_scale(m) for m in cfg.models for seq in cfg.seqs]


def run_bench(cfg: BenchConfig, quiet: bool = False, on_config=None) -> dict:
    """Run the suite; return the result dict (machine, config, rows, targets). Nothing is written here:
    see :func:`bertsilicon.benchmark.report.write_results`. ``on_config(partial_result)`` is called after each
    (model, max length) configuration with the results so far (``partial``: done / total), so a caller can
    write them as they come. Prints an estimate of the run time before starting (refined after the first
    configuration). Sets torch's thread count for the run and restores it afterwards."""
    cfg.validate()
    providers = select_providers(cfg.providers, cfg.precisions)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, providers, quiet, on_config)
    finally:
        torch.set_num_threads(threads_before)


def _load(spec: str, overrides: dict, tokenizers: dict):
    """(model, tokenizer, label, pretrained) of a student name or a model directory."""
    from bertsilicon import sources
    from bertsilicon.models.students import load_student

    source = sources.model_source(spec, fp32_weights=True)
    if source.path is None:
        model = load_student(spec, **overrides)
        pretrained = spec == "minilm-l6" and not overrides
    else:
        model, pretrained = sources.load_model(source), True
    if source.path not in tokenizers:
        tokenizers[source.path] = sources.load_tokenizer(source)
    return model, tokenizers[source.path], source.name, pretrained


def _run(cfg: BenchConfig, providers: list[Provider], quiet: bool, on_config=None) -> dict:
    from bertsilicon.runlog import RunClock

    with contextlib.suppress(RuntimeError):  # only settable before the first parallel region
        torch.set_num_interop_threads(1)
    info = machine.machine_info(cfg.threads)
    time_texts, acc_texts = text_pool(cfg)
    rows, started, tokenizers = [], time.perf_counter(), {}
    clock = RunClock("bench", _cell_weights(cfg, providers), PRIOR_S_PER_WEIGHT)
    clock.start()
    bar = _progress(_progress_total(cfg, providers), quiet)
    try:
        for spec in cfg.models:
            model, tok, model_name, pretrained = _load(spec, cfg.model_overrides.get(spec, {}), tokenizers)
            n_params = sum(p.numel() for p in model.parameters())
            for seq in cfg.seqs:
                bar.set_description(f"{model_name} L{seq}: build")
                rows += _run_cell(cfg, providers, model, model_name, n_params, pretrained, seq, tok, time_texts,
                                  acc_texts, bar)
                clock.finished()
                if on_config is not None and clock.done < len(clock.weights):
                    on_config(_result(cfg, providers, info, rows, started, partial=(clock.done, len(clock.weights))))
            del model
            gc.collect()
    finally:
        bar.close()
    return _result(cfg, providers, info, rows, started)


def _result(cfg: BenchConfig, providers, info: dict, rows: list, started: float, partial=None) -> dict:
    """The result dict of the rows measured so far; ``partial``: (configurations done, in all) of a run still
    going."""
    info = {**info, "load_average_end": machine.load_average(), "wall_s": round(time.perf_counter() - started, 1)}
    result = {"kind": "bertsilicon-e2e", "schema": 1, "quick": cfg.quick, "note": cfg.note, "tag": cfg.tag,
              "config": {k: v for k, v in asdict(cfg).items()}, "machine": info,
              "method": __doc__.split("Method", 1)[1].split("\n", 1)[1].strip(),
              "providers": [{"name": p.name, "precision": p.precision, "description": p.description}
                            for p in providers],
              "baseline": " ".join(BASELINE), "rows": list(rows)}
    if partial is not None:
        result["partial"] = {"done": partial[0], "total": partial[1]}
    result["targets"] = target_ratios(result)
    return result


def _run_cell(cfg, providers: list[Provider], model, model_name, n_params, pretrained, seq, tok, time_texts,
              acc_texts, bar) -> list[dict]:
    acc_batches = [tokenize(tok, acc_texts[i:i + cfg.accuracy_batch], seq, cfg.padding)
                   for i in range(0, len(acc_texts), cfg.accuracy_batch)]
    with torch.inference_mode():
        ref = embed(lambda b: model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state,
                    acc_batches)
    built, status = {}, {}
    with tempfile.TemporaryDirectory(prefix="bertsilicon-bench-") as workdir:
        ctx = BuildContext(model, model_name, example_batch(tok, seq), cfg.threads, workdir)
        for p in providers:
            bar.set_description(f"{model_name} L{seq}: build {p.key}")
            run, build_s, state, reason = build_runner(p, ctx)
            reason = getattr(run, "detail", reason)  # an ok row may say what was built (e.g. ORT's fused ops)
            acc = (None, None)
            if run is not None:
                try:
                    acc = cosine_stats(embed(run, acc_batches), ref)
                    built[p.key] = run
                except Exception as exc:  # noqa: BLE001
                    state, reason = "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
            status[p.key] = (state, reason, build_s, acc)
            bar.update(1)
        rows = []
        for batch_size in cfg.batches:
            batch = tokenize(tok, time_texts[:batch_size], seq, cfg.padding)
            bar.set_description(f"{model_name} L{seq} B{batch_size}: timing")
            timed = time_interleaved(built, batch, cfg, bar)
            bar.update((len(providers) - len(built)) * cfg.repeats)  # providers that did not build
            base = timed.get(" ".join(BASELINE), {}).get("samples")
            base_ms = statistics.median(base) * 1e3 if base else None
            for p in providers:
                state, reason, build_s, (cos_mean, cos_min) = status[p.key]
                t = timed.get(p.key, {})
                if "error" in t:
                    state, reason = "failed", t["error"]
                row = {"model": model_name, "pretrained": pretrained, "params_m": round(n_params / 1e6, 2),
                       "batch": batch_size, "seq": seq, "padded_shape": list(batch.shape),
                       "real_tokens": batch.real_tokens, "provider": p.name, "precision": p.precision,
                       "threads": cfg.threads, "status": state, "reason": reason,
                       "build_s": round(build_s, 2), "cos_mean": cos_mean, "cos_min": cos_min,
                       "latency_ms": None, "seq_per_s": None, "real_tok_per_s": None, "speedup": None}
                if t.get("samples"):
                    lat = latency_stats(t["samples"])
                    lat["inner"] = t["inner"]
                    row.update(latency_ms=lat, seq_per_s=batch_size / lat["median"] * 1e3,
                               real_tok_per_s=batch.real_tokens / lat["median"] * 1e3,
                               speedup=base_ms / lat["median"] if base_ms else None)
                rows.append(row)
        if cfg.columns:
            extras = extra_columns.measure(cfg, ctx, built, model, tok, seq, acc_texts[:cfg.accuracy_batch], bar)
            for row in rows:
                row.update(extras.get(f"{row['provider']} {row['precision']}", {}), **extras.get("reference", {}))
    built.clear()
    gc.collect()
    return rows


def target_ratios(result: dict) -> list[dict]:
    """Speed-target latency ratios (ours / peer, same batch, same run) for every (model, batch, seq) cell. A ratio
    counts only when our output is right: mean cosine vs fp32 >= ``INT8_COSINE_TARGET`` (docs/architecture.md's loosest
    accuracy bar)."""
    index = {(r["model"], r["batch"], r["seq"], r["provider"], r["precision"]): r for r in result["rows"]}
    cells = list(dict.fromkeys((r["model"], r["batch"], r["seq"]) for r in result["rows"]))
    threads = result["config"]["threads"]
    out = []
    for model, batch, seq in cells:
        for ours, peer, limit in TARGETS:
            a, b = index.get((model, batch, seq, *ours)), index.get((model, batch, seq, *peer))
            entry = {"model": model, "batch": batch, "seq": seq, "ours": " ".join(ours), "peer": " ".join(peer),
                     "limit": limit, "ratio": None, "verdict": None,
                     "headline": HEADLINE == {"model": model, "batch": batch, "seq": seq, "threads": threads}}
            missing = [f"{r_key}: {r['status'] if r else 'not run'}" for r_key, r in
                       ((" ".join(ours), a), (" ".join(peer), b)) if not (r and r["latency_ms"])]
            if missing:
                entry["verdict"] = "n/a (" + "; ".join(missing) + ")"
            else:
                entry["ratio"] = a["latency_ms"]["median"] / b["latency_ms"]["median"]
                entry["verdict"] = "meets" if entry["ratio"] <= limit else "misses"
                if a.get("cos_mean") is not None and a["cos_mean"] < INT8_COSINE_TARGET:  # fast but wrong
                    entry["verdict"] = f"does not count: output wrong (cos mean {a['cos_mean']:.4f})"
            out.append(entry)
    return out


__all__ = ["BenchConfig", "run_bench", "time_interleaved", "wall_clock_timer", "target_ratios", "DEFAULT_MODELS",
           "PADDINGS", "TARGETS", "PRECISIONS", "PROVIDER_NAMES"]
