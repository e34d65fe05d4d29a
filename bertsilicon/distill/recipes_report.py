"""Markdown, plot and JSON of :func:`bertsilicon.distill.recipes.run`'s result."""
from __future__ import annotations

import json
from pathlib import Path


def _cell(v) -> str:
    return f"{v['mean']:.4f} [{v['min']:.4f}, {v['max']:.4f}]"


def _ms(v) -> str:
    return "—" if v is None else f"{v:.1f}"


def _transfer(r: dict) -> str:
    if "transfer_set" not in r["task"]:
        return "Every student trains on the labelled texts only. "
    return (f"The distilled students train on the TRANSFER SET, all {r['task']['transfer_set']} train texts: the "
            "teacher's soft targets / logits on every one (and on their augmented variants where the recipe has "
            "them), the hard-label loss on the labelled ones only; the hard-label twin trains on the labelled "
            "texts alone, the data a student without a teacher has. ")


def _soft_targets(r: dict) -> list:
    st = r.get("teacher_soft_targets")
    if not st:
        return []
    temps = ", ".join(f"{k}: true label {v['mean_prob_of_label']:.3f}, largest {v['mean_max_prob']:.3f}, entropy "
                      f"{v['mean_entropy_nats']:.2f} nats" for k, v in st.items() if k.startswith("T="))
    return [f"Teacher 0's soft targets on the transfer set ({st['texts']} texts, its accuracy there "
            f"{st['accuracy']:.3f}; uniform over the classes: {st['uniform_entropy_nats']:.2f} nats): {temps}.", ""]


def to_markdown(r: dict) -> str:
    from ..benchmark.machine import describe

    st, sp = r["settings"], r["speed"]
    split = r["task"].get("eval_split", "test")
    lines = [
        "# Task distillation: each paper's recipe against the same student on hard labels alone",
        "",
        describe(r["machine"]),
        "",
        *(["**PARTIAL RESULTS: the run is still going (or was stopped); no speed section yet.**", ""]
          if r.get("partial") else []),
        f"Task {r['task']['name']} ({r['task']['classes']} classes, train {r['task']['train']}, test "
        f"{r['task']['test']}). Teachers: all-MiniLM-L6-v2 + classification head fine-tuned on the whole train split, "
        f"{st['teacher_steps']} steps x batch {st.get('teacher_batch_size', st['batch_size'])}; {split} accuracy "
        f"{', '.join(f'{a:.4f}' for a in r['teachers_test_accuracy'])}. Students: "
        f"{st['steps']} steps x batch {st['batch_size']}, max length {st['max_length']}, seeds {st['seeds']}, "
        f"hard labels for {r['task'].get('student_labelled_train', r['task']['train'])} train texts "
        f"({st.get('label_fraction', 1.0):g} of each class; the teachers saw all {r['task']['train']}). "
        f"{_transfer(r)}Each pair has the same init, steps, batch, learning rate and seed. {split.capitalize()} "
        "accuracy, mean [min, max] over seeds (`beyond spread`: the gain exceeds both conditions' min-max spread; "
        "needs 2 seeds or more).",
        "",
        *_soft_targets(r),
        "| recipe | student | seeds | distilled | hard labels only | gain | beyond spread | student int8 acc | "
        "student fp32 / int8 ms | teacher fp32 / int8 ms | predicted fp32 ms (student / teacher) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    t = sp.get("teacher", {})
    for name, res in r["recipes"].items():
        s = sp.get(name, {})
        int8_acc = "—" if s.get("int8_accuracy") is None else f"{s['int8_accuracy']:.4f}"
        lines.append(f"| {name} | {res['recipe']['student']} | {res.get('seeds', '')} | "
                     f"{_cell(res['summary']['distilled'])} | "
                     f"{_cell(res['summary']['hard_labels'])} | {res['gain']:+.4f} | "
                     f"{'yes' if res['beats_beyond_spread'] else 'NO'} | {int8_acc} | "
                     f"{_ms(s.get('fp32_ms'))} / {_ms(s.get('int8_ms'))} | {_ms(t.get('fp32_ms'))} / "
                     f"{_ms(t.get('int8_ms'))} | {_ms(s.get('predicted_fp32_ms'))} / {_ms(t.get('predicted_fp32_ms'))} |")
    if t:
        lines += ["", f"Teacher int8 test accuracy {t['int8_accuracy']:.4f} (fp32 {r['teachers_test_accuracy'][0]:.4f}). "
              f"Latency: median of {r['speed_setup']['repeats']} passes over {r['speed_setup']['batches']} test "
              f"batches of {r['speed_setup']['batch_size']} (mean padded length {r['speed_setup']['mean_padded_length']}); "
              f"predicted: the profiler's roofline on the '{r['speed_setup']['profiler_hardware']}' table."]
    lines.append("")
    for name, res in r["recipes"].items():
        note = res["recipe"].get("note")
        bilstm = sp.get(name, {}).get("int8_note", "")
        if note or "BiLSTM" in bilstm:
            lines.append(f"- {name}: {'; '.join(x for x in (note, bilstm if 'BiLSTM' in bilstm else '') if x)}.")
    lines.append(f"\nWall time: {r['wall_s']:.0f} s.")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["recipes"])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.8))
    for j, (kind, color) in enumerate((("distilled", "tab:blue"), ("hard_labels", "tab:orange"))):
        xs = [i + (j - 0.5) * 0.35 for i in range(len(names))]
        v = [r["recipes"][n]["summary"][kind] for n in names]
        ax.bar(xs, [x["mean"] for x in v], width=0.35, color=color, label=kind.replace("_", " "),
               yerr=[[max(0.0, x["mean"] - x["min"]) for x in v], [max(0.0, x["max"] - x["mean"]) for x in v]], capsize=3)
    ax.axhline(r["teachers_test_accuracy"][0], color="grey", ls="--", lw=1, label="teacher")
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="test accuracy", title=f"{r['task']['name']}: distilled vs hard labels (min-max over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict, out: Path, quiet: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipes.json").write_text(json.dumps(r, indent=1, default=str))
    (out / "recipes.md").write_text(to_markdown(r) + "\n")
    plot(r, out / "recipes.png")
    if not quiet:
        print(f"wrote {out / 'recipes.json'}, {out / 'recipes.md'}, {out / 'recipes.png'}")
