"""Stochastic rounding in low-precision training: weights kept ONLY in bf16, nearest vs stochastic, vs fp32.

Task: a classification head (384 -> 128 -> GELU -> 55 modules) on frozen all-MiniLM-L6-v2 mean-pooled
embeddings of the built-in real text (``bertsilicon.data.corpus("docstrings")``, label = the module a
docstring comes from), plain SGD. Three runs from the same bf16 initial weights and batch order:

* ``fp32``        weights and updates in fp32 (the reference);
* ``bf16-nearest``    ``w <- round_nearest_bf16(w - lr * g)``: no fp32 master copy;
* ``bf16-stochastic`` ``w <- round_stochastic_bf16(w - lr * g, seed = step)`` (Philox, 32 random bits;
  ``bertsilicon.ops.round_to``), several seeds for a band.

Expected (Gupta et al. 2015; Zamirai et al. 2020): updates smaller than half a bf16 ulp of the weight
vanish under nearest rounding, so it stalls; stochastic rounding keeps them in expectation and tracks
fp32. Logged per step: training loss, and the fraction of parameters whose stored value changed.

    .venv/bin/python bench/studies/sr_training.py            # ~2-4 minutes on 2 cores
    .venv/bin/python bench/studies/sr_training.py --quick    # a smoke run (seconds)

Writes <out>/sr_training.{json,md,png} (``--out``, default ./bertsilicon-results/precision; the recorded run:
``--out bench/results/precision``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bertsilicon import data, ops  # noqa: E402
from bertsilicon.benchmark.machine import describe, machine_info  # noqa: E402
from bertsilicon.models.eval import embed  # noqa: E402
from bertsilicon.models.students import load_student, load_tokenizer  # noqa: E402


def features(max_length: int, limit: int = 0):
    """Standardized MiniLM embeddings [N, 384] and integer labels of the docstring corpus."""
    c = data.corpus("docstrings")
    if limit:
        c = c.subset(limit, seed=0)
    emb = embed(load_student("minilm-l6"), load_tokenizer(), c.texts, batch_size=32, max_length=max_length)
    emb = (emb - emb.mean(0)) / emb.std(0).clamp_min(1e-6)
    names = sorted(set(c.labels))
    return emb, torch.tensor([names.index(x) for x in c.labels]), names


def split(n: int, test_frac: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_test = int(n * test_frac)
    return perm[n_test:], perm[:n_test]


def init_params(n_in: int, hidden: int, n_out: int, seed: int) -> list[torch.Tensor]:
    """nn.Linear's default init, rounded to bf16 so every run starts from the same bf16 weights."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(hidden, n_in), (hidden,), (n_out, hidden), (n_out,)]
    fans = [n_in, n_in, hidden, hidden]
    ps = [(torch.rand(s, generator=g) * 2 - 1) / math.sqrt(f) for s, f in zip(shapes, fans)]
    return [p.to(torch.bfloat16).float() for p in ps]


def forward(params, x):
    w1, b1, w2, b2 = params
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def train(mode: str, params0, x, y, steps: int, batch: int, lr: float, seed: int, data_seed: int, eval_every: int,
          x_test, y_test) -> dict:
    """``mode``: fp32 | nearest | stochastic. Returns the per-step loss / changed fraction and test accuracy."""
    params = [p.clone().requires_grad_(True) for p in params0]
    g = torch.Generator().manual_seed(data_seed)  # the same batches for every mode
    n_params = sum(p.numel() for p in params)
    losses, changed, evals = [], [], []
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(forward(params, x[idx]), y[idx])
        grads = torch.autograd.grad(loss, params)
        n_changed = 0
        with torch.no_grad():
            for i, (p, gr) in enumerate(zip(params, grads)):
                new = p - lr * gr  # fp32 arithmetic on the stored (bf16-valued) weight
                if mode == "nearest":
                    new = ops.round_to(new, "bf16", "nearest")
                elif mode == "stochastic":
                    new = ops.round_to(new, "bf16", "stochastic", seed=(seed * 1_000_003 + step * 8 + i) % (1 << 62))
                n_changed += int((new != p).sum())
                p.copy_(new)
        losses.append(round(float(loss.detach()), 5))
        changed.append(round(n_changed / n_params, 6))
        if (step + 1) % eval_every == 0 or step == steps - 1:
            with torch.no_grad():
                acc = float((forward(params, x_test).argmax(1) == y_test).double().mean())
                full = float(F.cross_entropy(forward(params, x), y))
            evals.append({"step": step + 1, "test_accuracy": acc, "train_loss_full": full})
    return {"loss": losses, "changed_fraction": changed, "evals": evals}


def smooth(v, w: int = 25):
    t = torch.tensor(v, dtype=torch.float64)
    if t.numel() < w:
        return t
    k = torch.ones(w, dtype=torch.float64) / w
    return F.conv1d(t[None, None], k[None, None]).flatten()


def plot(result: dict, path: Path) -> None:
    """One row per learning rate: loss curve, held-out accuracy, fraction of parameters changed per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = result["sweeps"]
    fig, axes = plt.subplots(len(sweeps), 3, figsize=(15, 3.8 * len(sweeps)), squeeze=False)
    style = {"fp32": ("black", "--"), "nearest": ("tab:red", "-"), "stochastic": ("tab:blue", "-")}
    for row, sweep in zip(axes, sweeps):
        for name in ("stochastic", "nearest", "fp32"):  # fp32 dashed on top: stochastic lies under it
            for j, r in enumerate(sweep["runs"][name]):
                kw = dict(color=style[name][0], ls=style[name][1], alpha=0.9 if j == 0 else 0.45, lw=1.2,
                          label=(f"bf16-{name}" if name != "fp32" else name) if j == 0 else None)
                s = smooth(r["loss"])
                row[0].plot(range(len(s)), s, **kw)
                ev = r["evals"]
                row[1].plot([e["step"] for e in ev], [e["test_accuracy"] for e in ev], marker="o", ms=3, **kw)
                cf = smooth(r["changed_fraction"])
                row[2].plot(range(len(cf)), cf, **kw)
        lr = sweep["lr"]
        row[0].set(title=f"lr {lr}: training loss (batch, 25-step mean)", xlabel="step", ylabel="cross-entropy")
        row[1].set(title=f"lr {lr}: held-out accuracy (module of a docstring)", xlabel="step", ylabel="accuracy")
        row[2].set(title=f"lr {lr}: fraction of parameters changed per step", xlabel="step", yscale="log")
        for ax in row:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    m = result["meta"]
    fig.suptitle(f"weights kept only in bf16 vs fp32: SGD, batch {m['batch']}, {m['params']} parameters "
                 f"(MiniLM features of {m['texts']} docstrings, {m['classes']} modules)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def markdown(result: dict, png: str) -> str:
    m = result["meta"]
    lines = ["# Stochastic rounding with weights kept only in bf16", "",
             f"{describe(m['machine'])} {m['seconds']:.0f} s. "
             f"Task: head {m['arch']} on frozen all-MiniLM-L6-v2 embeddings of {m['texts']} docstrings "
             f"({m['classes']} modules, {m['test']} held out); plain SGD, batch {m['batch']}, {m['steps']} steps; "
             f"stochastic runs: seeds {m['seeds']} (value = mean, band = min..max over seeds). "
             f"Initial full-set train loss {m['initial_loss']:.4f}.", "",
             "| lr | run | final train loss (full set) | held-out accuracy | params changed / step (first 10 % / last 10 % of steps) |",
             "|---|---|---|---|---|"]
    for sweep in result["sweeps"]:
        for name, runs in sweep["runs"].items():
            losses = [r["evals"][-1]["train_loss_full"] for r in runs]
            accs = [r["evals"][-1]["test_accuracy"] for r in runs]
            k = max(1, len(runs[0]["changed_fraction"]) // 10)
            first = sum(sum(r["changed_fraction"][:k]) / k for r in runs) / len(runs)
            last = sum(sum(r["changed_fraction"][-k:]) / k for r in runs) / len(runs)
            band = lambda v, d: f"{sum(v) / len(v):.{d}f}" + (f" ({min(v):.{d}f}..{max(v):.{d}f})" if len(v) > 1 else "")
            label = name if name == "fp32" else f"bf16-{name}"
            lines.append(f"| {sweep['lr']} | {label} | {band(losses, 4)} | {band(accs, 3)} | {first:.4f} / {last:.4f} |")
    lines += ["", "fp32 changes (almost) every parameter every step; bf16-nearest drops every update smaller than half "
              "an ulp of its weight, so it falls behind, the more the smaller the learning rate; bf16-stochastic keeps "
              "each update in expectation (P(round up) = fractional position) and tracks fp32.", "",
              f"![curves]({png})", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lrs", default="0.005,0.001", help="comma list of learning rates (one row of plots each)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3, help="stochastic-rounding seeds")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: 120 texts, 200 steps, 1 seed")
    ap.add_argument("--out", default="bertsilicon-results/precision",
                    help="output folder (default: ./bertsilicon-results/precision; the recorded run: "
                    "bench/results/precision)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = 200, 1
    lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    t0 = time.time()
    x, y, names = features(args.max_length, limit=120 if args.quick else 0)
    train_idx, test_idx = split(x.shape[0], 0.25, seed=0)
    params0 = init_params(x.shape[1], args.hidden, len(names), seed=0)
    xt, yt = x[train_idx], y[train_idx]
    sweeps = []
    for lr in lrs:
        common = dict(steps=args.steps, batch=args.batch, lr=lr, data_seed=1, eval_every=max(1, args.steps // 30),
                      x_test=x[test_idx], y_test=y[test_idx])
        sweeps.append({"lr": lr, "runs": {
            "fp32": [train("fp32", params0, xt, yt, seed=0, **common)],
            "nearest": [train("nearest", params0, xt, yt, seed=0, **common)],
            "stochastic": [train("stochastic", params0, xt, yt, seed=s, **common) for s in range(args.seeds)]}})
    with torch.no_grad():
        initial = float(F.cross_entropy(forward(params0, xt), yt))
    result = {"meta": {"lrs": lrs, "batch": args.batch, "steps": args.steps, "seeds": list(range(args.seeds)),
                       "arch": f"{x.shape[1]}-{args.hidden}-GELU-{len(names)}",
                       "params": sum(p.numel() for p in params0), "texts": int(x.shape[0]), "test": int(test_idx.numel()),
                       "classes": len(names), "initial_loss": initial, "machine": machine,
                       "seconds": time.time() - t0, "quick": args.quick},
              "sweeps": sweeps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "sr_training_quick" if args.quick else "sr_training"
    (out / f"{stem}.json").write_text(json.dumps(result, separators=(",", ":")))
    md = markdown(result, f"{stem}.png")
    (out / f"{stem}.md").write_text(md)
    plot(result, out / f"{stem}.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
