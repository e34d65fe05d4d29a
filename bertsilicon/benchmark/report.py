"""Results of an end-to-end run as files: JSON (everything), Markdown (tables), PNG (plots), README table.

Files for a run written to ``out`` with stem ``e2e`` (full run) or ``e2e-quick`` (``--quick``), then
``-<tag>`` when the run has a tag:
``<stem>.json``, ``<stem>.md``, ``<stem>-latency.png`` (latency vs batch per provider),
``<stem>-speedup.png`` (speed-up vs torch SDPA fp32, bars).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from . import machine

README_START = "<!-- perf-table:start"
README_END = "<!-- perf-table:end -->"


def _key(row) -> str:
    return f"{row['provider']} {row['precision']}"


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _status(row) -> str:
    return row["status"] if not row["reason"] else f"{row['status']}: {row['reason']}"


def _cells(result):
    """(model, seq) pairs in run order."""
    return list(dict.fromkeys((r["model"], r["seq"]) for r in result["rows"]))


def stem(result) -> str:
    name = "e2e-quick" if result.get("quick") else "e2e"
    return f"{name}-{result['tag']}" if result.get("tag") else name


# ------------------------------------------------------------------------------------------------ #
# Markdown                                                                                           #
# ------------------------------------------------------------------------------------------------ #
def busy_load(result) -> Optional[float]:
    """The load other processes put on the machine, when it exceeded the usable cores, else None: the 1-minute
    load average at the start, and at the end less the run's own threads (read while the run still runs, the
    end reading counts its ``threads`` busy workers: a quiet 2-core machine running 2 threads reads ~2)."""
    m = result["machine"]
    own = m.get("threads") or 0
    loads = [x[0] - sub for x, sub in ((m.get("load_average_start"), 0), (m.get("load_average_end"), own)) if x]
    return max(loads) if loads and max(loads) > m["cpu"]["usable_cores"] else None


def machine_lines(result) -> list[str]:
    m = result["machine"]
    cpu = m["cpu"]
    gpu = m["gpu"]["name"] if m.get("gpu") else "none"
    lines = []
    load = busy_load(result)
    if load:
        lines.append(f"- **Warning: the machine was busy** (1-minute load average up to {load:.1f} on "
                     f"{cpu['usable_cores']} usable cores): other processes competed for the cores, so these "
                     "timings are not reliable; multi-threaded torch (OpenMP workers waiting for descheduled peers) "
                     "suffers far more than ONNX Runtime. Re-run on a quiet machine.")
    return lines + [
        f"- **CPU**: {cpu['model']}, {cpu['usable_cores']} usable cores ({cpu['physical_cores']} physical); "
        f"**threads fixed at {m['threads']}** (torch intra-op, ONNX Runtime intra-op; inter-op 1). GPU: {gpu}.",
        f"- **SIMD flags**: {' '.join(cpu['simd_flags']) or 'n/a'}" + _kernel_path(cpu),
        f"- **Versions**: {machine.versions_text(m)}",
        f"- **Commit** {machine.commit_text(m)}, {m['date_utc']}; load average at start {m.get('load_average_start')}, "
        f"at end {m.get('load_average_end')}; wall time {m.get('wall_s')} s.",
    ]


def _kernel_path(cpu: dict) -> str:
    """`; bertsilicon kernels: ...` — the C++ path, and the features hidden from it (BERTSILICON_HIDE_CPU_FEATURES)."""
    f = cpu.get("bertsilicon_cpu_features") or {}
    if not f.get("active_isa"):
        return ""
    hidden = f.get("hidden") or []
    return (f"; bertsilicon kernels: {f['active_isa']} path" +
            (f", **features hidden from them: {', '.join(hidden)}** (they run the code of a CPU without these)"
             if hidden else ""))


def _targets_table(result) -> list[str]:
    lines = ["| model | batch | max len | ours | peer | latency ratio ours/peer | target | verdict |",
             "|---|---:|---:|---|---|---:|---:|---|"]
    for t in result["targets"]:
        ratio = f"{t['ratio']:.3f}" if t["ratio"] is not None else "-"
        cells = [t["model"], str(t["batch"]), str(t["seq"]), t["ours"], t["peer"], ratio, f"<= {t['limit']:.2f}",
                 t["verdict"]]
        if t["headline"]:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    from .runner import INT8_COSINE_TARGET

    int8 = {(r["model"], r["seq"]): r for r in result["rows"] if _key(r) == "bertsilicon int8" and r["pretrained"]}
    for (model, seq), r in int8.items():
        verdict = (f"{r['cos_mean']:.6f}: {'meets' if r['cos_mean'] >= INT8_COSINE_TARGET else 'misses'}"
                   if r["cos_mean"] is not None else f"n/a ({r['status']})")
        lines += ["", f"Accuracy target (docs/architecture.md): bertsilicon int8 mean cosine vs fp32 on real text >= "
                      f"{INT8_COSINE_TARGET}, {model} (real weights), max length {seq}: {verdict}."]
    return lines


def _model_table(result, model, seq) -> list[str]:
    rows = [r for r in result["rows"] if r["model"] == model and r["seq"] == seq]
    first = rows[0]
    kind = "real weights" if first["pretrained"] else "random weights"
    out = [f"### {model} ({kind}, {first['params_m']}M parameters), max length {seq}", "",
           "| batch | padded shape (real tokens) | provider | precision | latency ms median [min-max] (n) | seq/s "
           "| speed-up vs torch-sdpa fp32 | cos mean | cos min | build s | status |",
           "|---:|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lat = r["latency_ms"]
        lat_s = (f"{_fmt_ms(lat['median'])} [{_fmt_ms(lat['min'])}-{_fmt_ms(lat['max'])}] ({lat['n']})" if lat else "-")
        out.append("| " + " | ".join([
            str(r["batch"]), f"{r['padded_shape'][0]}x{r['padded_shape'][1]} ({r['real_tokens']})", r["provider"],
            r["precision"], lat_s, f"{r['seq_per_s']:.1f}" if r["seq_per_s"] else "-",
            f"{r['speedup']:.2f}x" if r["speedup"] else "-",
            f"{r['cos_mean']:.8f}" if r["cos_mean"] is not None else "-",
            f"{r['cos_min']:.8f}" if r["cos_min"] is not None else "-",
            f"{r['build_s']:.1f}", _status(r).replace("|", "/")]) + " |")
    return out + [""]


def markdown(result) -> str:
    cfg = result["config"]
    title = "bertsilicon end-to-end benchmark (CPU)" + (" — quick run" if result.get("quick") else "")
    lines = [f"# {title}", ""]
    if result.get("note"):
        lines += [f"> **{result['note']}**", ""]
    if result.get("partial"):
        lines += [f"> **Partial results: {result['partial']['done']} of {result['partial']['total']} configurations "
                  "(model x max length) measured; the run was still going when this was written.**", ""]
    lines += machine_lines(result)
    source = f"`{cfg['texts_file']}`" if cfg.get("texts_file") else f"`bertsilicon.data.corpus({cfg['corpus']!r})`"
    lines += [f"- **Input**: real text ({source}), truncated to the max length, "
              f"padding `{cfg['padding']}`; every provider gets the same batch. Accuracy: mean-pooled last hidden "
              f"state of {cfg['accuracy_texts']} other texts, cosine against the same model in HF fp32 (SDPA).",
              f"- **Command**: `{result.get('env', '')}bertsilicon bench {result.get('argv', '')}`".rstrip(), "",
              "## Speed targets", "",
              "Latency of ours divided by the peer's, same batch, same run (lower is better); "
              f"**bold**: the configuration the targets are stated for (MiniLM-L6, real text, batch 8, max length "
              f"128, 2 threads). A ratio counts only when our mean cosine vs fp32 is >= 0.995.", ""]
    lines += _targets_table(result) + ["", "## Latency, throughput and accuracy", ""]
    for model, seq in _cells(result):
        lines += _model_table(result, model, seq)
    lines += ["## Method", "", result["method"], "", "## Providers", ""]
    lines += [f"- `{p['name']} {p['precision']}`: {p['description']}" for p in result["providers"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ #
# plots                                                                                              #
# ------------------------------------------------------------------------------------------------ #
def plots(result, out: Path, name: str) -> list[Path]:
    """``<name>-latency.png`` (latency vs batch per provider) and ``<name>-speedup.png`` (speed-up bars vs
    torch SDPA fp32), one panel per (model, max length)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(_key(r) for r in result["rows"]))
    colors = {k: plt.cm.tab20(i % 20) for i, k in enumerate(keys)}
    sub = f"{result['machine']['cpu']['model']}, {result['machine']['threads']} threads" + (
        f" — {result['note']}" if result.get("note") else "")

    def latency(ax, rows):
        batches = sorted({r["batch"] for r in rows})
        for k in keys:
            pts = sorted((r["batch"], r["latency_ms"]) for r in rows if _key(r) == k and r["latency_ms"])
            if pts:
                med = [lat["median"] for _, lat in pts]
                err = [[lat["median"] - lat["min"] for _, lat in pts], [lat["max"] - lat["median"] for _, lat in pts]]
                ax.errorbar([b for b, _ in pts], med, yerr=err, marker="o", ms=4, capsize=3, label=k, color=colors[k])
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel("latency per batch, ms (median, min-max)")
        ax.grid(True, which="both", alpha=0.3)

    def speedup(ax, rows):
        rows = [r for r in rows if r["speedup"]]
        batches = sorted({r["batch"] for r in rows})
        present = [k for k in keys if any(_key(r) == k for r in rows)]
        width = 0.8 / max(1, len(present))
        for j, k in enumerate(present):
            su = {r["batch"]: r["speedup"] for r in rows if _key(r) == k}
            xs = [i + j * width for i, b in enumerate(batches) if b in su]
            ax.bar(xs, [su[b] for b in batches if b in su], width, label=k, color=colors[k])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(batches))], [f"batch {b}" for b in batches])
        ax.set_ylabel(f"speed-up vs {result['baseline']} (x)")
        ax.grid(True, axis="y", alpha=0.3)

    cells = _cells(result)
    paths = []
    for suffix, draw, title in (("latency", latency, "End-to-end encoder latency"),
                                ("speedup", speedup, "Speed-up over torch SDPA fp32 (same batch, same run; log scale)")):
        fig, axes = plt.subplots(1, len(cells), figsize=(max(7.5, 5.2 * len(cells)), 4.8), squeeze=False)
        for ax, (model, seq) in zip(axes[0], cells):
            draw(ax, [r for r in result["rows"] if r["model"] == model and r["seq"] == seq])
            ax.set_title(f"{model}, max length {seq}")
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.suptitle(f"{title}\n{sub}", fontsize=10)
        fig.tight_layout()
        paths.append(out / f"{name}-{suffix}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write_results(result, out, plot: bool = True, name: Optional[str] = None, render=None) -> dict:
    """Write JSON, Markdown (``render(result)``, default :func:`markdown`) and (``plot``) PNGs into ``out`` as
    ``name`` (default :func:`stem`); returns ``{"json": path, "md": ..., "png": [...]}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = name or stem(result)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": []}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    paths["md"].write_text((render or markdown)(result))
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:  # the test extra brings it; a results run must not be lost for want of plots
            print("matplotlib is not installed: PNG plots skipped (pip install matplotlib)", file=sys.stderr)
        else:
            paths["png"] = plots(result, out, name)
    return paths


# ------------------------------------------------------------------------------------------------ #
# README                                                                                             #
# ------------------------------------------------------------------------------------------------ #
def latest_results(folder) -> Path:
    """The results file the README shows: the newest full run in ``folder`` (by its recorded date), else the
    newest quick run. A quick run never replaces a full one."""
    found = []
    for p in Path(folder).glob("e2e*.json"):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if data.get("kind") == "bertsilicon-e2e":
            found.append((not data.get("quick"), data["machine"]["date_utc"], p))
    if not found:
        raise FileNotFoundError(f"no end-to-end results (e2e*.json) in {folder}; run `bertsilicon bench` first")
    return max(found)[2]


def readme_table(result, results_link: str) -> str:
    """The README's performance table: one row per provider, one column per model at batch 8 (or the
    largest batch run) and the first max length; latency and speed-up vs torch SDPA fp32; cosine on the
    real MiniLM (or the first model)."""
    rows = result["rows"]
    batches = sorted({r["batch"] for r in rows})
    batch = 8 if 8 in batches else batches[-1]
    seq = rows[0]["seq"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    acc_model = "minilm-l6" if "minilm-l6" in models else models[0]
    pick = {(r["model"], _key(r)): r for r in rows if r["batch"] == batch and r["seq"] == seq}
    m = result["machine"]
    note = f" **{result['note']}.**" if result.get("note") else ""
    if busy_load(result):
        note += f" **Machine busy (load {busy_load(result):.1f}): timings unreliable.**"
    lines = [f"CPU {m['cpu']['model']}, {m['threads']} thread{'s' if m['threads'] != 1 else ''}, batch {batch}, max length {seq}, real text; "
             f"commit {m['git']['commit']}, {m['date_utc'][:10]}{', quick run' if result.get('quick') else ''}.{note} "
             f"Latency per batch (median) and speed-up vs torch SDPA fp32 measured in the same run; cosine: "
             f"mean-pooled embedding vs HF fp32 on real text ({acc_model}). Generated by `bench/e2e/update_readme.py` "
             f"from [{results_link}]({results_link}); all batches, spreads and the speed-target ratios are in the "
             f"Markdown next to it.", "",
             "| provider | precision | " + " | ".join(models) + f" | cos min ({acc_model}) |",
             "|---|---|" + "---:|" * len(models) + "---:|"]
    for key in dict.fromkeys(_key(r) for r in rows):
        cells = []
        for model in models:
            r = pick.get((model, key))
            if r is None:
                cells.append("-")
            elif r["latency_ms"]:
                cells.append(f"{_fmt_ms(r['latency_ms']['median'])} ms ({r['speedup']:.2f}x)" if r["speedup"]
                             else f"{_fmt_ms(r['latency_ms']['median'])} ms")
            else:
                cells.append(r["status"])
        acc = pick.get((acc_model, key))
        cos = f"{acc['cos_min']:.5f}" if acc and acc["cos_min"] is not None else "-"
        lines.append(f"| {key.split()[0]} | {key.split()[1]} | " + " | ".join(cells) + f" | {cos} |")
    return "\n".join(lines)


def update_readme(readme, results: Optional[os.PathLike] = None, results_dir="bench/results/cpu") -> Path:
    """Rewrite only the lines between ``<!-- perf-table:start ... -->`` and ``<!-- perf-table:end -->`` in
    ``readme`` with :func:`readme_table` of ``results`` (default: :func:`latest_results` of ``results_dir``,
    relative to the README's folder). Returns the results file used."""
    readme = Path(readme)
    root = readme.resolve().parent
    results = Path(results) if results else latest_results(root / results_dir)
    result = json.loads(Path(results).read_text())
    lines = readme.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(README_START)]
    ends = [i for i, line in enumerate(lines) if line.strip() == README_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"{readme}: expected one '{README_START} ... -->' line followed by one '{README_END}' line; "
                         f"found {len(starts)} start and {len(ends)} end markers")
    try:
        link = Path(os.path.relpath(Path(results).resolve().with_suffix(".md"), root)).as_posix()
    except ValueError:  # another drive (Windows)
        link = Path(results).with_suffix(".md").as_posix()
    body = readme_table(result, link) + "\n"
    readme.write_text("".join(lines[:starts[0] + 1]) + body + "".join(lines[ends[0]:]))
    return Path(results)
