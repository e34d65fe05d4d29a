"""Precision experiment: a model run in number formats x rounding modes x places, against its fp32 self,
on the built-in real text (``bertsilicon.data.corpus("docstrings")``, labels = the module).

For every configuration (format, rounding, where) and seed it measures

* per-layer SQNR (dB) of each encoder layer's hidden states over the real tokens, and of the pooled
  embedding;
* the mean-pooled embedding cosine to fp32 (per text);
* retrieval top-10 overlap: per query text, how many of its 10 nearest texts under fp32 it keeps;
* kNN module classification accuracy (leave-one-out, k = 5) — the fp32 accuracy is the baseline;

with 95 % bootstrap intervals over the texts and, for stochastic rounding, a band over seeds (min and
max of each metric across seeds). The user's own texts (``texts_file``) have no labels: no kNN accuracy
then. :func:`write_report` writes JSON + Markdown + a PNG heat map
(layer x format, one panel per place and rounding).
"""
from __future__ import annotations

import datetime
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import formats
from . import metrics as M
from .emulate import emulate, parse_where

KNN_K = 5
TOPK = 10


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    index: list  # positions of these texts in the corpus order


def _batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int) -> list[Batch]:
    """Length-sorted batches (little padding); ``index`` maps rows back to the text order."""
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append(Batch(enc["input_ids"], enc["attention_mask"], idx))
    return out


@torch.inference_mode()
def _forward(model, batches: list[Batch], n_texts: int):
    """-> (pooled embeddings [N, H] in text order, per layer a list of real-token hidden states per batch)."""
    from ..models.eval import mean_pool

    emb = None
    layers: list[list[torch.Tensor]] = []
    for b in batches:
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
        real = b.attention_mask.bool()
        hs = out.hidden_states[1:]  # encoder layers (the embeddings are not emulated)
        if not layers:
            layers = [[] for _ in hs]
        for i, h in enumerate(hs):
            layers[i].append(h[real].float())
        pooled = mean_pool(out.last_hidden_state, b.attention_mask)
        if emb is None:
            emb = torch.empty(n_texts, pooled.shape[1])
        emb[b.index] = pooled
    return emb, layers


def _summary(values: torch.Tensor, n_boot: int) -> dict:
    lo, hi = M.bootstrap_ci(values, n_boot)
    return {"mean": float(values.double().mean()), "ci95": [lo, hi]}


def _git_commit() -> str:
    from bertsilicon.benchmark.machine import git_commit

    return git_commit()["commit"] or "unknown"


EMULATION_NOTES = [
    "weights: every encoder nn.Linear weight rounded (int: per output channel scale)",
    "activations: every encoder nn.Linear input rounded on the fly (int: dynamic per-token scale)",
    "accumulation: every encoder GEMM result x @ W^T rounded once before the bias add (int: per-token requantization)",
    "fp8 (e4m3/e5m2): dynamic per-tensor scale max_finite / amax; 16-bit floats: plain casts",
    "not emulated: rounding inside the K-sum, attention matmuls (q k^T, p v), softmax, GELU, LayerNorm, "
    "residual adds, embedding tables (all fp32)",
]


# Seconds per emulated forward batch assumed before one was measured (MiniLM-L6, 32 texts of 64 tokens, 2
# cores); only the first estimate uses it.
PRIOR_S_PER_BATCH = 1.5


def run_experiment(model="minilm-l6", formats_: Sequence[str] = ("fp32", "bf16", "fp16", "e4m3", "int8"),
                   roundings: Sequence[str] = ("nearest", "stochastic"),
                   where: Sequence[str] = ("weights", "activations", "accumulation"), texts: int = 256,
                   max_length: int = 64, batch_size: int = 32, seeds: int = 2, n_boot: int = 1000,
                   fp8_scaling: bool = True, progress: bool = True, tokenizer=None, texts_file=None,
                   on_config=None) -> dict:
    """Run the experiment; returns the result dict :func:`write_report` writes (see module docstring).

    ``model``: a student name (``"minilm-l6"`` has real weights; others are random-weight shapes), a Hugging
    Face / sentence-transformers directory, or an HF model. ``texts``: how many docstrings (drawn with seed 0;
    all 767+ with ``texts=0``), or the first ``texts`` of ``texts_file`` (:func:`bertsilicon.sources.read_texts`).
    ``seeds``: stochastic runs per configuration (nearest is deterministic: one run). ``on_config(result)``
    is called after every configuration but the last with the results so far (``meta["partial"]``: done, total).
    Prints an estimate of the run time first (refined after the first configuration).
    """
    from tqdm import tqdm

    from .. import data, sources
    from ..runlog import RunClock

    for name in formats_:
        formats.get_format(name)  # unknown formats fail before any work
    for r in roundings:
        if r not in formats.ROUNDINGS:
            raise ValueError(f"rounding={r!r} is unknown; expected one of {formats.ROUNDINGS}")
    places = [parse_where(w) for w in where]
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    if texts_file:  # inputs are checked before any model is loaded
        corpus_name, text_list, labels = str(texts_file), sources.read_texts(texts_file, limit=texts or None), None
    else:
        corpus = data.corpus("docstrings")
        if texts:
            corpus = corpus.subset(texts, seed=0)
        corpus_name, text_list, labels = "docstrings", corpus.texts, corpus.labels
    if len(text_list) <= TOPK + 1:
        raise ValueError(f"{corpus_name}: {len(text_list)} texts; the top-{TOPK} retrieval overlap needs at least "
                         f"{TOPK + 2}")
    model_name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model, given_tokenizer, source = sources.resolve_model(model, fp32_weights=True)
        tokenizer, model_name = tokenizer or given_tokenizer, source.name
    model.eval()
    tokenizer = tokenizer or sources.load_tokenizer(sources.model_source(None))
    batches = _batches(tokenizer, text_list, batch_size, max_length)
    n = len(text_list)

    ref_emb, ref_layers = _forward(model, batches, n)
    configs = [(f, r, w) for w in places for f in formats_ for r in roundings
               if not (formats.get_format(f) == formats.FORMATS["fp32"] and r != roundings[0])]
    clock = RunClock("precision", [(seeds if r == "stochastic" else 1) * len(batches) for _, r, _ in configs],
                     PRIOR_S_PER_BATCH)
    clock.start()
    runs = []
    meta = {
        "model": model_name, "corpus": corpus_name, "texts": n, "labels": len(set(labels)) if labels else None,
        "max_length": max_length, "real_tokens": int(sum(int(b.attention_mask.sum()) for b in batches)),
        "seeds": seeds, "bootstrap": n_boot, "knn_k": KNN_K, "topk": TOPK, "fp8_scaling": fp8_scaling,
        "layers": [f"L{i + 1}" for i in range(len(ref_layers))] + ["pooled"],
        "emulation": EMULATION_NOTES, "commit": _git_commit(), "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    baseline = {"knn_accuracy": _summary(M.knn_correct(ref_emb, labels, KNN_K).double(), n_boot)} if labels else {}
    for fmt, rounding, w in tqdm(configs, desc="precision configs", disable=not progress):
        exact = formats.get_format(fmt) == formats.FORMATS["fp32"]
        seed_list = list(range(seeds)) if rounding == "stochastic" and not exact else [0]
        per_seed = []
        for seed in seed_list:
            if exact:  # fp32 in fp32: the identity
                emb, layers = ref_emb, ref_layers
            else:
                with emulate(model, fmt, rounding, w, seed=seed, fp8_scaling=fp8_scaling):
                    emb, layers = _forward(model, batches, n)
            per_seed.append({
                "cos": M.pooled_cosines(emb, ref_emb),
                "overlap": M.topk_overlap(emb, ref_emb, TOPK),
                **({"knn": M.knn_correct(emb, labels, KNN_K).double()} if labels else {}),
                "sqnr": [M.sqnr_db(torch.cat(r_), torch.cat(x_)) for r_, x_ in zip(ref_layers, layers)]
                + [M.sqnr_db(ref_emb, emb)],
            })
        runs.append(_summarize_run(fmt, rounding, w, seed_list, per_seed, n_boot, exact))
        clock.finished()
        if on_config is not None and clock.done < len(configs):
            on_config({"meta": {**meta, "partial": {"done": clock.done, "total": len(configs)}},
                       "baseline_fp32": baseline, "runs": list(runs)})
    return {"meta": meta, "baseline_fp32": baseline, "runs": runs}


def _summarize_run(fmt, rounding, where, seed_list, per_seed, n_boot, exact) -> dict:
    out = {"format": fmt, "rounding": "exact" if exact else rounding, "where": "+".join(where), "seeds": seed_list,
           "metrics": {}}
    for key, label in (("cos", "cosine"), ("overlap", "top10_overlap"), ("knn", "knn_accuracy")):
        if key not in per_seed[0]:  # kNN needs labels
            continue
        pooled = torch.stack([s[key] for s in per_seed]).mean(0)  # per text, averaged over seeds
        summ = _summary(pooled, n_boot)
        seed_means = [float(s[key].mean()) for s in per_seed]
        summ["seed_band"] = [min(seed_means), max(seed_means)]
        out["metrics"][label] = summ
    sq = torch.tensor([s["sqnr"] for s in per_seed], dtype=torch.float64)  # [seeds, layers]
    out["metrics"]["sqnr_db"] = {"mean": sq.mean(0).tolist(), "seed_band": [sq.min(0).values.tolist(), sq.max(0).values.tolist()]}
    return out


# ------------------------------------------------------------------------------------------------ #
# Report                                                                                           #
# ------------------------------------------------------------------------------------------------ #
def _fmt_ci(m: dict, digits: int = 4) -> str:
    s = f"{m['mean']:.{digits}f} [{m['ci95'][0]:.{digits}f}, {m['ci95'][1]:.{digits}f}]"
    band = m.get("seed_band")
    if band and band[1] - band[0] > 0:
        s += f" (seeds {band[0]:.{digits}f}..{band[1]:.{digits}f})"
    return s


def _db(v: float) -> str:
    return "exact" if math.isinf(v) else f"{v:.1f}"


def markdown(result: dict) -> str:
    meta = result["meta"]
    what = f"{meta['texts']} docstrings ({meta['labels']} modules)" if meta.get("labels") else \
        f"{meta['texts']} texts of {meta['corpus']} (no labels: no kNN accuracy)"
    knn = result["baseline_fp32"].get("knn_accuracy")
    partial = meta.get("partial")
    lines = [f"# Precision experiment: {meta['model']} on {what}", "",
             *([f"> **Partial results: {partial['done']} of {partial['total']} configurations measured; the run was "
                "still going when this was written.**", ""] if partial else []),
             f"commit `{meta['commit']}`, torch {meta['torch']}, {meta['machine']}, {meta['threads']} threads, "
             f"{meta['date']}; max length {meta['max_length']} ({meta['real_tokens']} real tokens); "
             f"stochastic runs: {meta['seeds']} seeds; 95 % bootstrap intervals over texts ({meta['bootstrap']} resamples).",
             *(["", f"fp32 kNN module accuracy (k = {meta['knn_k']}, leave-one-out): {_fmt_ci(knn)}"] if knn else []),
             "", "Emulation:"]
    lines += [f"- {n}" for n in meta["emulation"]]
    layers = meta["layers"]
    for where in dict.fromkeys(r["where"] for r in result["runs"]):
        rows = [r for r in result["runs"] if r["where"] == where]
        lines += ["", f"## where = {where}", "",
                  "| format | rounding | pooled cosine | top-10 overlap | kNN accuracy | min layer SQNR dB |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            m = r["metrics"]
            lines.append(f"| {r['format']} | {r['rounding']} | {_fmt_ci(m['cosine'], 5)} | {_fmt_ci(m['top10_overlap'], 3)} | "
                         f"{_fmt_ci(m['knn_accuracy'], 3) if 'knn_accuracy' in m else '-'} | "
                         f"{_db(min(m['sqnr_db']['mean']))} |")
        lines += ["", "SQNR (dB) per layer (mean over seeds):", "",
                  "| format | rounding | " + " | ".join(layers) + " |", "|---|---|" + "---|" * len(layers)]
        for r in rows:
            lines.append(f"| {r['format']} | {r['rounding']} | " + " | ".join(_db(v) for v in r["metrics"]["sqnr_db"]["mean"]) + " |")
    return "\n".join(lines) + "\n"


def heatmap(result: dict, path) -> None:
    """PNG: SQNR (dB) per layer (rows) x format (columns), one panel per (where, rounding)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = result["meta"]["layers"]
    wheres = list(dict.fromkeys(r["where"] for r in result["runs"]))
    rounds = [r for r in dict.fromkeys(r["rounding"] for r in result["runs"]) if r != "exact"] or ["exact"]
    fmts = list(dict.fromkeys(r["format"] for r in result["runs"]))
    fig, axes = plt.subplots(len(rounds), len(wheres), figsize=(3.2 * len(wheres) + 1, 0.45 * len(layers) * len(rounds) + 1.6),
                             squeeze=False)
    cap = 80.0
    im = None
    for i, rnd in enumerate(rounds):
        for j, w in enumerate(wheres):
            ax = axes[i][j]
            grid = torch.full((len(layers), len(fmts)), float("nan"))
            for r in result["runs"]:
                if r["where"] == w and r["rounding"] in (rnd, "exact"):
                    grid[:, fmts.index(r["format"])] = torch.tensor(r["metrics"]["sqnr_db"]["mean"]).clamp(max=cap)
            im = ax.imshow(grid.numpy(), vmin=0, vmax=cap, cmap="viridis", aspect="auto")
            for a in range(len(layers)):
                for b in range(len(fmts)):
                    v = float(grid[a, b])
                    if not math.isnan(v):
                        ax.text(b, a, "exact" if v >= cap else f"{v:.0f}", ha="center", va="center", fontsize=7,
                                color="white" if v < cap * 0.6 else "black")
            ax.set_xticks(range(len(fmts)), fmts, fontsize=8)
            ax.set_yticks(range(len(layers)), layers, fontsize=8)
            ax.set_title(f"{w} / {rnd}", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="SQNR dB vs fp32")
    fig.suptitle(f"{result['meta']['model']}: SQNR per layer and format", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_report(result: dict, out_dir, stem: str = "precision", plot: bool = True) -> dict[str, Path]:
    """Write ``{stem}.json``, ``{stem}.md`` and (``plot``) ``{stem}.png`` under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}

    def clean(o):  # JSON has no inf
        if isinstance(o, float) and math.isinf(o):
            return "inf" if o > 0 else "-inf"
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    paths["json"].write_text(json.dumps(clean(result), indent=1))
    paths["md"].write_text(markdown(result))
    if plot:
        heatmap(result, paths["png"])
    else:
        del paths["png"]
    return paths
