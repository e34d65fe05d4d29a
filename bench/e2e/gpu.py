"""GPU end to end: ``bertsilicon.optimize(model, backend="triton")`` against Hugging Face SDPA on a CUDA GPU.

    python -m bench.e2e.gpu                     # MiniLM-L6 (real weights), DistilBERT (random) -> e2e.{json,md}
    python -m bench.e2e.gpu --dry-run           # tiny models on CPU under the Triton interpreter: checks the script
    python -m bench.e2e.gpu --warm-only --models distilbert --precisions int8   # compile only, time/write nothing

``python -m bench.gpu`` runs it as its ``e2e`` stage. What is measured (every provider gets the very same tokenized
batch of real text, ``bertsilicon.data.corpus("pydoc")``, truncated to 128 tokens, padded to the longest):

* providers: HF SDPA fp32 (the accuracy reference), fp16 and bf16 (``torch-sdpa``, the CPU suite's builders);
  ``bertsilicon+graphs`` fp16 / bf16 / int8 (``optimize(..., backend="triton")``, unpad=True, the default on a CUDA
  model: the layers replayed as a captured CUDA graph per (batch, length, token) bucket, since every cell here runs
  on <= ``GRAPH_MAX_TOKENS`` token rows; int8 with SmoothQuant 0.5 as the README recommends) and ``bertsilicon``, the
  same without graphs (``cuda_graphs=False``: every kernel launched from Python; what a call over the token budget
  runs).
  In ``--dry-run`` the graph rows run on CPU with an eager stand-in for the capture (``replay_eagerly``).
* cells, in order of value: batch 32 for every model (the headline), then batches 8 and 1.
* timing: CUDA events around ``inner`` back-to-back calls (one sample >= ``--min-sample-ms``), ``--warmup`` calls
  first (they compile, autotune and capture), samples taken in rotated round-robin order across providers
  (:func:`bertsilicon.benchmark.runner.time_interleaved`); median, min and max of the samples.
* accuracy: mean-pooled last hidden state (real tokens) against HF fp32 on the same inputs: over 64 further texts
  (batches of 32) and on the timed batch itself.
* target: bertsilicon fp16 >= 1.5x HF SDPA fp16 at batch 32, length 128, for MiniLM-L6 and DistilBERT;
  the Markdown says meets / misses for the default (graph) path and for the eager one.

``--budget-s`` stops starting cells (the rest are listed as not run); SIGTERM stops after the call in flight;
results are written either way. ``--warm-only`` runs the same builds and calls once each with Triton's autotuner
compiling instead of benchmarking (``bench.kernels.gpu.compile_only_autotuning``), so several processes can fill
Triton's on-disk cache side by side before the timed run (``python -m bench.gpu`` does).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python bench/e2e/gpu.py` as well as `python -m bench.e2e.gpu`
    sys.path.insert(0, str(ROOT))

MODELS = ("minilm-l6", "distilbert")
PRECISIONS = ("fp16", "bf16", "int8")
HEAD_BATCH, SMALL_BATCHES, SEQ = 32, (8, 1), 128
BASELINE = ("torch-sdpa", "fp16")  # speed-ups are quoted against HF SDPA fp16 on the same batch
TARGET_SPEEDUP = 1.5               # bertsilicon fp16 >= 1.5x HF SDPA fp16 at batch 32, length 128
ACCURACY_TEXTS, ACCURACY_BATCH = 64, 32
# --dry-run: one-layer students small enough for the Triton interpreter (head dim 32, odd FFN width)
DRY_OVERRIDES = {"minilm-l6": dict(num_hidden_layers=1, hidden_size=64, num_attention_heads=2, intermediate_size=96),
                 "distilbert": dict(n_layers=1, dim=64, n_heads=2, hidden_dim=96)}


def cuda_event_timer(run, batch, n: int) -> float:
    """Seconds per call of ``n`` back-to-back calls, between two CUDA events on the current stream (what the
    GPU timeline spends from the first launch to the last kernel's end, host gaps included)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        run(batch)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / n


def fused_encoder(model):
    from bertsilicon.models.optimize import FusedEncoder

    return next((m for m in model.modules() if isinstance(m, FusedEncoder)), None)


def graph_problem(run, batch_size: int):
    """None if the runner's model replays a captured CUDA graph for this batch size, else why not."""
    enc = fused_encoder(run.model)
    if enc is None:
        return "no fused encoder"
    notes = [n for n in enc.report.notes if "CUDA graph" in n]
    if notes or not enc.cuda_graphs:
        return "; ".join(notes) or "cuda_graphs is off"
    from bertsilicon.models.cuda_graphs import graph_batch

    if not any(k.batch == graph_batch(k.path, batch_size) for k in enc.graphs.graphs):
        return f"no graph was captured for batch {batch_size}"
    return None


def build_summary(run) -> dict:
    """What the optimize report says about a bertsilicon provider (backends, GEMM precisions, notes)."""
    rep = getattr(getattr(run, "model", None), "bertsilicon_report", None)
    if rep is None:
        return {}
    gemms: dict = {}
    for layer in rep.layers:
        for g, p in (layer.gemms or {}).items():
            gemms[p] = gemms.get(p, 0) + 1
    return {"backends_used": dict(rep.backends_used), "gemm_precisions": gemms, "cuda_graphs": rep.cuda_graphs,
            "fallbacks": [f for layer in rep.layers for f in layer.fallbacks], "notes": list(rep.notes),
            "end_to_end": rep.end_to_end}


def _providers(precisions, dev_is_cuda: bool, warm_only: bool, calibration=None):
    """HF SDPA fp32 / fp16 / bf16 (none when warming: no Triton in them), bertsilicon eager per precision,
    and with CUDA graphs on a GPU (or emulated: ``--dry-run``). ``calibration``: optimize's (None: its default, 8 paragraphs of real text)."""
    import torch

    from bertsilicon.benchmark import providers as P

    hf = (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16))
    opts = {"backend": "triton"} if calibration is None else {"backend": "triton", "calibration": calibration}
    out = [] if warm_only else [P.Provider("torch-sdpa", p, f"HF model cast to {p}, SDPA attention", P._torch_sdpa(d))
                                for p, d in hf]
    for p in precisions:
        out.append(P.Provider("bertsilicon", p, f"optimize(model, {p!r}, backend='triton', cuda_graphs=False)",
                              P._bertsilicon(p, cuda_graphs=False, **opts)))
    if dev_is_cuda or graphs_emulated():
        for p in precisions:
            out.append(P.Provider("bertsilicon+graphs", p, f"optimize(model, {p!r}, backend='triton', cuda_graphs=True)",
                                  P._bertsilicon(p, cuda_graphs=True, **opts)))
    return out


@contextlib.contextmanager
def graphs_emulated_on_cpu():
    """--dry-run: the graph rows run on CPU with ``replay_eagerly`` in place of the CUDA capture, so the dry run
    also checks the graph rows' plumbing (builds, graph_problem, accuracy, verdicts); their timings mean nothing.
    Undone on exit (the tests call ``main`` in their own process)."""
    from bertsilicon.models import cuda_graphs as cg

    saved = cg.CAPTURE_DEVICES, cg.capture_graph
    cg.CAPTURE_DEVICES, cg.capture_graph = (*cg.CAPTURE_DEVICES, "cpu"), cg.replay_eagerly
    try:
        yield
    finally:
        cg.CAPTURE_DEVICES, cg.capture_graph = saved


def graphs_emulated() -> bool:
    from bertsilicon.models import cuda_graphs as cg

    return "cpu" in cg.CAPTURE_DEVICES


def _weights_note(name: str, pretrained: bool) -> str:
    if not pretrained:
        return "random weights (published configuration)"
    from bertsilicon.models.students import minilm_path

    path = minilm_path() / "model.safetensors"
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            dtype = str(f.get_tensor(next(iter(f.keys()))).dtype).replace("torch.", "")
    except Exception as exc:  # noqa: BLE001 - a note, not a failure
        dtype = f"unknown ({type(exc).__name__})"
    return f"real all-MiniLM-L6-v2 weights, stored as {dtype} ({path.parent}), run in fp32 as the reference"


class E2ERun:
    """One run: the tokenized inputs, every (model, provider) built once, then the cells measured in order of
    value; ``rows`` / ``builds`` / ``state`` collect the results (see the module docstring for the method)."""

    def __init__(self, args, models, precisions, cells, cuda: bool):
        import torch

        from bertsilicon.benchmark import BenchConfig
        from bertsilicon.benchmark.machine import machine_info
        from bertsilicon.benchmark.runner import example_batch, text_pool, tokenize, wall_clock_timer
        from bertsilicon.models.students import load_tokenizer

        self.args, self.models, self.cells_wanted, self.cuda = args, models, cells, cuda
        self.dev = torch.device("cuda" if cuda else "cpu")
        self.head, self.small, self.seq = (HEAD_BATCH, SMALL_BATCHES, SEQ) if cuda else (3, (2, 1), 16)
        self.n_acc, self.acc_batch = (ACCURACY_TEXTS, ACCURACY_BATCH) if cuda else (3, 3)
        quick = args.warm_only or args.dry_run
        self.cfg = BenchConfig(models=models, batches=[self.head, *self.small], seqs=[self.seq],
                               repeats=1 if quick else args.repeats, warmup=0 if quick else args.warmup,
                               min_sample_s=0.0 if quick else args.min_sample_ms / 1e3, budget_s=5.0,
                               accuracy_texts=self.n_acc, accuracy_batch=self.acc_batch, corpus="pydoc")
        self.timer = cuda_event_timer if cuda else wall_clock_timer
        self.machine = machine_info(torch.get_num_threads())
        self.started = time.perf_counter()
        self.tok = load_tokenizer()
        self.time_texts, acc_texts = text_pool(self.cfg)
        self._tokenize = tokenize
        self.acc_batches = [self.batch(acc_texts[i:i + self.acc_batch]) for i in range(0, len(acc_texts), self.acc_batch)]
        self.example = self.to_dev(example_batch(self.tok, self.seq))
        # dry run: calibrate on the 2-sentence example batch (the default 8 x 128 tokens is minutes in the interpreter)
        calibration = (None if cuda else
                       {"input_ids": self.example.input_ids, "attention_mask": self.example.attention_mask})
        self.providers = _providers(precisions, cuda, args.warm_only, calibration)
        self.scratch = tempfile.TemporaryDirectory(prefix="bertsilicon-gpu-e2e-")  # BuildContext's (ONNX; unused)
        self.rows, self.builds, self.state, self.stopped = [], {}, {}, None

    def to_dev(self, b):
        from bertsilicon.benchmark.providers import Batch

        return Batch(b.input_ids.to(self.dev), b.attention_mask.to(self.dev))

    def batch(self, texts):
        return self.to_dev(self._tokenize(self.tok, texts, self.seq, "longest"))

    def cells(self) -> list:
        """(model, batch) in order of value: the headline batch for every model, then the small batches."""
        out = [(name, self.head) for name in self.models] if "head" in self.cells_wanted else []
        return out + ([(name, b) for b in self.small for name in self.models] if "small" in self.cells_wanted else [])

    # ------------------------------------------------------------------------------------------ #
    def build(self, name: str) -> None:
        """Load the model, take HF fp32's accuracy reference, build every provider (and its 64-text accuracy)."""
        import torch

        from bertsilicon.benchmark.providers import BuildContext, build_runner
        from bertsilicon.benchmark.runner import cosine_stats, embed
        from bertsilicon.models.students import load_student

        overrides = {} if self.cuda else DRY_OVERRIDES[name]
        model = load_student(name, **overrides).to(self.dev)
        pretrained = name == "minilm-l6" and not overrides
        ctx = BuildContext(model, name, self.example, torch.get_num_threads(), self.scratch.name)
        ref = None
        if not self.args.warm_only:  # HF fp32: the accuracy reference
            with torch.inference_mode():
                ref = embed(lambda b: model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state,
                            self.acc_batches)
        runners, info = {}, {}
        for prov in self.providers:
            key = (prov.name, prov.precision)
            run, build_s, status, reason = build_runner(prov, ctx)
            acc = (None, None)
            # the accuracy texts come in batches of 32 (the 'head' cells' shapes)
            if run is not None and "head" in self.cells_wanted:
                try:
                    with torch.inference_mode():
                        emb = embed(run, self.acc_batches)
                    acc = cosine_stats(emb, ref) if ref is not None else acc
                except Exception as exc:  # noqa: BLE001 - a row, not a crash
                    run, status, reason = None, "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
            if run is not None:
                runners[key] = run
            info[key] = {"status": status, "reason": reason, "build_s": round(build_s, 2), "cos64": acc,
                         "description": prov.description}
            self.builds[f"{name} {prov.name} {prov.precision}"] = {**info[key], **(build_summary(run) if run else {})}
        self.state[name] = dict(model=model, runners=runners, info=info, weights=_weights_note(name, pretrained),
                                params_m=round(sum(t.numel() for t in model.parameters()) / 1e6, 2))

    def result(self) -> dict:
        """Everything, for the JSON: device, provenance, method settings, rows, builds, the target verdicts."""
        import torch

        args, cfg = self.args, self.cfg
        meta = {"device": torch.cuda.get_device_name() if self.cuda else "cpu (Triton interpreter, dry run)",
                "machine": self.machine, "seconds": round(time.perf_counter() - self.started, 1), "stopped": self.stopped,
                "autotune": (f"{os.environ.get('BERTSILICON_AUTOTUNE', 'on')}, each config timed "
                             f"{args.autotune_rep_ms:g} ms" if self.cuda else "interpreter: one config"),
                "timing": ("CUDA events around `inner` back-to-back calls" if self.cuda else
                           "perf_counter (interpreter: meaningless, plumbing check only)"),
                "config": {"repeats": cfg.repeats, "warmup": cfg.warmup, "min_sample_s": cfg.min_sample_s,
                           "seq": self.seq, "batches": [self.head, *self.small], "accuracy_texts": self.n_acc,
                           "accuracy_batch": self.acc_batch, "corpus": cfg.corpus, "padding": "longest"},
                "models": {n: {"weights": s["weights"], "params_m": s["params_m"]} for n, s in self.state.items()}}
        return {"kind": "bertsilicon-gpu-e2e", "meta": meta, "rows": self.rows, "builds": self.builds,
                "target": target_verdicts(self.rows, self.head, self.seq)}

    def cell(self, name: str, bsz: int) -> None:
        """Time every runner of (model, batch) interleaved, then one row per provider (accuracy on the batch too)."""
        import torch

        from bertsilicon.benchmark.runner import cosine_stats, latency_stats, time_interleaved
        from bertsilicon.models.eval import mean_pool

        st = self.state[name]
        batch = self.batch(self.time_texts[:bsz])
        runners = st["runners"]
        keys = list(st["info"])  # unbuilt ones too: a row saying why
        if self.args.budget_s is not None and time.perf_counter() - self.started > self.args.budget_s:
            self.stopped = f"budget {self.args.budget_s:.0f} s reached"
        timed, ref_b = {}, None
        if not self.stopped:
            hf32 = st["runners"].get(("torch-sdpa", "fp32"))
            with torch.inference_mode():
                ref_b = mean_pool(hf32(batch), batch.attention_mask) if hf32 else None
            timed = time_interleaved({" ".join(k): r for k, r in runners.items()}, batch, self.cfg, timer=self.timer)
        base = timed.get(" ".join(BASELINE), {}).get("samples")
        base_ms = statistics.median(base) * 1e3 if base else None
        rows = []
        for key in keys:
            info = st["info"].get(key, {"status": "ok", "reason": "", "build_s": 0.0, "cos64": (None, None)})
            row = {"model": name, "weights": st["weights"], "params_m": st["params_m"], "batch": bsz, "seq": self.seq,
                   "padded_shape": list(batch.shape), "real_tokens": batch.real_tokens, "provider": key[0],
                   "precision": key[1], "cuda_graphs": "graphs" in key[0], "status": info["status"],
                   "reason": info["reason"], "build_s": info["build_s"], "cos64_mean": info["cos64"][0],
                   "cos64_min": info["cos64"][1], "cos_batch_mean": None, "cos_batch_min": None, "latency_ms": None,
                   "seq_per_s": None, "speedup_vs_baseline": None, "speedup_vs_same_precision_hf": None}
            rows.append(row)
            if key not in runners:  # did not build: the row says why
                continue
            if self.stopped:
                row.update(status="not run", reason=self.stopped)
                continue
            t = timed.get(" ".join(key), {})
            if "error" in t:
                row.update(status="failed", reason=t["error"])
                continue
            lat = latency_stats(t["samples"])
            lat["inner"] = t["inner"]
            row.update(latency_ms=lat, seq_per_s=bsz / lat["median"] * 1e3,
                       speedup_vs_baseline=base_ms / lat["median"] if base_ms else None)
            problem = graph_problem(runners[key], bsz) if row["cuda_graphs"] else None
            if problem:
                row.update(status="failed", reason=f"not the graph path: {problem}")
            if ref_b is not None:
                with torch.inference_mode():
                    got = mean_pool(runners[key](batch), batch.attention_mask)
                row["cos_batch_mean"], row["cos_batch_min"] = cosine_stats(got, ref_b)
        peers = {r["precision"]: r for r in rows if r["provider"] == "torch-sdpa" and r["latency_ms"]}
        for row in rows:  # against HF in the same precision, same cell
            peer = peers.get(row["precision"])
            if row["provider"].startswith("bertsilicon") and peer and row["latency_ms"]:
                row["speedup_vs_same_precision_hf"] = peer["latency_ms"]["median"] / row["latency_ms"]["median"]
        self.rows += rows
        print(f"[{time.perf_counter() - self.started:6.1f} s] {name} batch {bsz}: {len(timed)} providers timed"
              f"{' (' + self.stopped + ')' if self.stopped else ''}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--out", default=None, help="results folder (default bench/results/gpu/<device>; dry run: "
                   "out/gpu-dry-run)")
    p.add_argument("--repeats", type=int, default=15, help="samples per provider per cell")
    p.add_argument("--warmup", type=int, default=3, help="calls before timing (compile, autotune, capture)")
    p.add_argument("--min-sample-ms", type=float, default=20.0, help="one sample lasts at least this long")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting cells after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="tiny models on CPU under the Triton interpreter")
    p.add_argument("--warm-only", action="store_true", help="compile every kernel once; time and write nothing")
    p.add_argument("--cells", default="head,small",
                   help="'head': batch 32 (+ the accuracy texts, batched 32 too), 'small': batches 8 and 1")
    p.add_argument("--autotune-rep-ms", type=float, default=20.0,
                   help="Triton's autotuner times each config this long (its default: 100)")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    precisions = [q for q in args.precisions.split(",") if q]
    cells = [c for c in args.cells.split(",") if c]
    bad = ([m for m in models if m not in MODELS] + [q for q in precisions if q not in PRECISIONS]
           + [c for c in cells if c not in ("head", "small")])
    if bad or not models or not precisions or not cells:
        p.error(f"--models from {','.join(MODELS)}, --precisions from {','.join(PRECISIONS)}, --cells from head,small; "
                f"got {args.models!r}, {args.precisions!r}, {args.cells!r}")

    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    from bench.kernels.gpu import stop_on_sigterm

    stop_on_sigterm()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: `python -m bench.e2e.gpu --dry-run` checks the script on CPU")
        return 2
    cuda = not args.dry_run
    with graphs_emulated_on_cpu() if args.dry_run else contextlib.nullcontext():
        return _run(args, models, precisions, cells, cuda)


def _run(args, models, precisions, cells, cuda: bool) -> int:
    from bench.kernels.gpu import Stop, compile_only_autotuning, default_out, short_autotune_benchmarks

    if args.warm_only and cuda:
        compile_only_autotuning()
    elif cuda:
        short_autotune_benchmarks(rep_ms=args.autotune_rep_ms)
    run = E2ERun(args, models, precisions, cells, cuda)
    try:
        for name in models:
            run.build(name)
        for name, bsz in run.cells():
            run.cell(name, bsz)
    except Stop:
        run.stopped = "stopped by SIGTERM"
        print("bench.e2e.gpu: SIGTERM, writing what was measured", file=sys.stderr)
    run.scratch.cleanup()
    if args.warm_only:
        failed = [k for k, b in run.builds.items() if b["status"] != "ok"]
        print(f"warm-only: {len(run.builds) - len(failed)} of {len(run.builds)} builds ran in "
              f"{time.perf_counter() - run.started:.0f} s{'; failed: ' + ', '.join(failed) if failed else ''}"
              f"{'; ' + run.stopped if run.stopped else ''}")
        return 1 if failed else 0

    result = run.result()
    out_dir = Path(args.out) if args.out else default_out(result["meta"]["device"] if cuda else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "e2e.json").write_text(json.dumps(result, indent=1, default=str))
    md = markdown(result)
    (out_dir / "e2e.md").write_text(md)
    print(md)
    print(f"wrote {out_dir / 'e2e.json'} and {out_dir / 'e2e.md'}")
    return 0


def target_verdicts(rows: list, batch: int, seq: int) -> list:
    """The target: bertsilicon fp16 >= ``TARGET_SPEEDUP`` x HF SDPA fp16 at the headline batch and length, per model:
    the default path (``bertsilicon+graphs``, ``path`` "CUDA graphs": what ``optimize`` does on a CUDA model at this
    size) and the eager one (``cuda_graphs=False``, ``path`` "eager"). A speed-up counts only when the fp16 output is
    right (timed-batch mean cosine vs HF fp32 >= 0.999)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        def row(provider, precision):
            return next((r for r in rows if (r["model"], r["batch"], r["seq"], r["provider"], r["precision"]) ==
                         (model, batch, seq, provider, precision)), None)
        peer = row(*BASELINE)
        for path, label, ours in (("CUDA graphs", "bertsilicon+graphs fp16", row("bertsilicon+graphs", "fp16")),
                                  ("eager", "bertsilicon fp16", row("bertsilicon", "fp16"))):
            if path == "CUDA graphs" and ours is None:  # no graph provider at all (a CPU dry run)
                continue
            entry = {"model": model, "batch": batch, "seq": seq, "path": path, "target": TARGET_SPEEDUP,
                     "speedup": None, "ours_ms": None, "peer_ms": None, "verdict": None}
            missing = [f"{name}: {(r['status'] + ' ' + r['reason']).strip() if r else 'not run'}"
                       for name, r in ((label, ours), ("torch-sdpa fp16", peer)) if not (r and r["latency_ms"])]
            if missing:
                entry["verdict"] = "n/a (" + "; ".join(missing) + ")"
            else:
                entry.update(ours_ms=ours["latency_ms"]["median"], peer_ms=peer["latency_ms"]["median"],
                             speedup=peer["latency_ms"]["median"] / ours["latency_ms"]["median"])
                entry["verdict"] = "meets" if entry["speedup"] >= TARGET_SPEEDUP else "misses"
                if ours["cos_batch_mean"] is not None and ours["cos_batch_mean"] < 0.999:
                    entry["verdict"] = f"does not count: output wrong (cos mean {ours['cos_batch_mean']:.5f})"
            out.append(entry)
    return out


def summary(path: Path) -> dict:
    """The bertsilicon rows, the target verdicts and the rows not ok of an ``e2e.json``, for the run's summary."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"result": f"no {path.name}"}
    keyed = {}
    for r in data["rows"]:
        if r["latency_ms"]:
            keyed[(r["model"], r["batch"], r["provider"], r["precision"])] = r
    lines = []
    for (model, batch, provider, precision), r in keyed.items():
        if provider.startswith("bertsilicon"):
            lines.append({"model": model, "batch": batch, "provider": provider, "precision": precision,
                          "ms": r["latency_ms"]["median"], "vs_hf_fp16": r["speedup_vs_baseline"],
                          "vs_hf_same": r["speedup_vs_same_precision_hf"], "cos_batch_min": r["cos_batch_min"],
                          "cos64_min": r["cos64_min"]})
    bad = [f"{r['model']} b{r['batch']} {r['provider']} {r['precision']}: {r['status']} {r['reason'][:100]}"
           for r in data["rows"] if r["status"] not in ("ok",)]
    verdicts = "; ".join(f"{t['model']} {t.get('path', 'eager')} {t['speedup']:.2f}x ({t['verdict']})" if t["speedup"] else
                         f"{t['model']} {t.get('path', 'eager')}: {t['verdict']}" for t in data["target"])
    return {"target": data["target"], "ours": lines, "problems": bad,
            "result": f"fp16 vs HF SDPA fp16 at batch {data['target'][0]['batch'] if data['target'] else '-'}: "
                      f"{verdicts or 'none'}; {len(bad)} rows not ok"}


def _ms(lat) -> str:
    if not lat:
        return "-"
    f = (lambda x: f"{x:.3g}" if x < 100 else f"{x:.0f}")  # noqa: E731
    return f"{f(lat['median'])} [{f(lat['min'])}-{f(lat['max'])}] ({lat['n']}x{lat.get('inner', 1)})"


def markdown(result: dict) -> str:
    from bertsilicon.benchmark.machine import describe

    m = result["meta"]
    lines = [f"# bertsilicon.optimize on {m['device']}: end to end vs Hugging Face SDPA", "",
             f"{describe(m['machine'])} Run: {m['seconds']} s.", ""]
    if m.get("stopped"):
        lines += [f"**Stopped early ({m['stopped']}): rows marked 'not run' were not measured.**", ""]
    for name, info in m["models"].items():
        lines.append(f"- **{name}** ({info['params_m']}M parameters): {info['weights']}")
    c = m["config"]
    lines += [f"- Input: real text (`bertsilicon.data.corpus({c['corpus']!r})`), max length {c['seq']}, padding "
              f"{c['padding']}; every provider gets the same batch. Timing: {m['timing']}, {c['warmup']} warm-up calls, "
              f"{c['repeats']} samples of >= {c['min_sample_s'] * 1e3:.0f} ms, interleaved and rotated; median "
              f"[min-max] (samples x calls per sample). Triton autotuning: {m['autotune']}.",
              f"- Accuracy: mean-pooled last hidden state vs HF fp32 (SDPA): 'cos 64' over {c['accuracy_texts']} "
              f"further texts in batches of {c['accuracy_batch']}; 'cos batch' on "
              "the timed batch itself.", "",
              "## Target: bertsilicon fp16 >= 1.5x HF SDPA fp16, batch 32, length 128", "",
              "| model | path | bertsilicon fp16 (ms) | HF SDPA fp16 (ms) | speed-up | target | verdict |",
              "|---|---|---:|---:|---:|---:|---|"]
    for t in result["target"]:
        path = t.get("path", "eager")
        lines.append(f"| {t['model']} | {path} | {t['ours_ms']:.3f} | {t['peer_ms']:.3f} | {t['speedup']:.2f}x | "
                     f">= {t['target']:.1f}x | {t['verdict']} |" if t["speedup"] is not None else
                     f"| {t['model']} | {path} | - | - | - | >= {t['target']:.1f}x | {t['verdict']} |")
    lines.append("")
    for name, bsz in dict.fromkeys((r["model"], r["batch"]) for r in result["rows"]):
        rows = [r for r in result["rows"] if r["model"] == name and r["batch"] == bsz]
        r0 = rows[0]
        lines += [f"## {name}, batch {bsz}, length {r0['seq']} (padded {r0['padded_shape'][0]}x{r0['padded_shape'][1]}, "
                  f"{r0['real_tokens']} real tokens)", "",
                  "| provider | precision | latency ms median [min-max] | seq/s | vs HF SDPA fp16 | vs HF same precision "
                  "| cos 64 mean / min | cos batch min | status |",
                  "|---|---|---|---:|---:|---:|---|---:|---|"]
        for r in rows:
            cos64 = (f"{r['cos64_mean']:.6f} / {r['cos64_min']:.6f}" if r["cos64_mean"] is not None else "-")
            status = r["status"] + (f": {r['reason']}" if r["reason"] else "")
            lines.append("| " + " | ".join([
                r["provider"], r["precision"], _ms(r["latency_ms"]),
                f"{r['seq_per_s']:.0f}" if r["seq_per_s"] else "-",
                f"{r['speedup_vs_baseline']:.2f}x" if r["speedup_vs_baseline"] else "-",
                f"{r['speedup_vs_same_precision_hf']:.2f}x" if r["speedup_vs_same_precision_hf"] else "-",
                cos64, f"{r['cos_batch_min']:.6f}" if r["cos_batch_min"] is not None else "-",
                status.replace("|", "/")]) + " |")
        lines.append("")
    lines += ["## Builds", "", "| model provider precision | build s | backends | GEMM precisions | fallbacks / notes |",
              "|---|---:|---|---|---|"]
    for key, b in result["builds"].items():
        backends = ", ".join(sorted(set(b.get("backends_used", {}).values()))) or "-"
        gemms = ", ".join(f"{p} x{n}" for p, n in b.get("gemm_precisions", {}).items()) or "-"
        notes = "; ".join(b.get("fallbacks", []) + b.get("notes", [])) or (b["reason"] or "-")
        lines.append(f"| {key} | {b['build_s']:.1f} | {backends} | {gemms} | {notes.replace('|', '/')[:300]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
