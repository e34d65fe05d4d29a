"""The papers' task-distillation recipes, each against the same student trained on hard labels alone.

    python bench/studies/distill_recipes.py [--steps 100] [--seeds 0 1 2] [--recipes hinton pkd ...]

Task: ``bertsilicon.tasks.task("docstring-module")`` (41 classes; fixed train / dev / test splits). Teachers: the
real all-MiniLM-L6-v2 with a classification head, fine-tuned on the WHOLE train split (teacher 0 with seed 0,
teacher 1 with seed 1, for the two-teacher recipe). Hard labels are LIMITED: ``label_fraction`` of each class's
train texts (the first ones in the split's fixed order, :func:`labelled_subset`). For each recipe and seed, two
runs from the SAME student initialisation, steps, batch, learning rate and seed:

* ``distilled`` trains on the TRANSFER SET (:func:`transfer_set`): every train text, which the teacher labels
  (its soft targets / logits / layers on all of them), with the hard-label cross-entropy on the labelled texts
  only (the others carry no label: :mod:`.labels`). This is what distillation is for in the papers: Hinton et
  al.'s transfer set, Tang et al.'s augmented transfer set, DistilBERT's and TinyBERT's unlabelled corpora: the
  teacher labels text the student has no labels for. Recipes with augmentation (TinyBERT, Tang et al.) add
  ``augment`` variants of every transfer-set text (:mod:`.augment`; the teacher labels them too).
* ``hard_labels`` trains on the labelled texts alone with the cross-entropy: the data a student without a
  teacher has.

Students of the teacher's width start from the PRE-TRAINED MiniLM's layers (as DistilBERT and BERT-PKD start from
the pre-trained teacher), not from the fine-tuned teacher's, so the baseline does not inherit what the teacher
learnt from the labels it does not see. Settings are tuned on the dev split (``eval_split="dev"``: the soft-target
temperature, the BiLSTM's learning rate and steps) and the recorded figures are on the test split. Beside each
recipe: its last distilled student after ``bertsilicon.optimize(..., "int8")`` (accuracy, measured latency)
against the teacher (fp32 and int8), and the profiler's roofline latency of student and teacher. Partial results
are written after every run.

=============  =================================================================  ==================================
recipe          student                                                            distilled losses
=============  =================================================================  ==================================
hinton          2 layers of the teacher's width, initialised from teacher layers   label CE + soft targets (T, T²)
distilbert      3 layers of the teacher's width, from every other teacher layer    + DistilBERT's hidden cosine
                (the task form: the shipped MiniLM has no masked-LM head, see
                :mod:`.mlm` for the triple loss with a teacher that has one)
tinybert        a narrower student (H 192, 12 heads, random init), two stages on     embedding + hidden + attention
                augmented data: layers, then predictions (projection carried over) MSE, then soft CE at T = 1
pkd             2 layers from the teacher's first layers, PKD-Skip map             label CE + soft targets + patient
tang-bilstm     BiLSTM (Tang et al.), the teacher's word embeddings, augmented data label CE + logit MSE
two-teachers    as hinton                                                          soft targets averaged over 2
alpha-control   as hinton (a control)                                              label CE x 0.5 alone
=============  =================================================================  ==================================
"""
from __future__ import annotations

import copy
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..runlog import atomic_write
from .bilstm import BiLSTMClassifier, BiLSTMConfig
from .distiller import DistillConfig, Distiller, teacher_logits
from .layer_maps import init_student_from_teacher, layer_map
from .task import accuracy, finetune, student_classifier, teacher_classifier

HARD_LABELS = {"label_ce": 1.0}
TEACHER_LR = 2e-4


@dataclass(frozen=True)
class Recipe:
    student: str                        # a student spec, or "bilstm"
    stages: tuple                       # one dict of losses per stage (steps split evenly)
    init: Optional[str] = None          # layer map the student is initialised from (same width), or None
    layer_map: str = "uniform"          # the map the layer losses use
    teachers: int = 1
    temperature: float = 2.0
    t2_scale: bool = True
    lr: float = 3e-4
    augment: int = 0                    # variants per training text for the distilled student (0: none)
    step_factor: int = 1                # the pair trains step_factor x Settings.steps (a cheap student)
    note: str = ""

    @property
    def uses_teacher(self) -> bool:
        """Whether the distilled run learns from a teacher (then it trains on the transfer set)."""
        return any(k not in HARD_LABELS for losses in self.stages for k in losses)


RECIPES = {
    "hinton": Recipe("bert-L2-H384", ({"label_ce": 0.5, "soft_target": 0.5},), init="uniform"),
    "distilbert": Recipe("bert-L3-H384", ({"label_ce": 0.5, "soft_target": 0.5, "hidden_cosine": 1.0},),
                         init="skip", layer_map="skip",
                         note="DistilBERT's triple loss in its task form: soft targets on the task logits (not the "
                              "masked-LM distribution) + hidden cosine + hard labels in place of the MLM loss; the "
                              "shipped MiniLM has no masked-LM head, so no masked-LM stage"),
    "tinybert": Recipe("L2-H192-A12-F768", ({"embedding_mse": 1.0, "hidden_mse": 1.0, "attention_mse": 1.0},
                                            {"soft_target": 1.0}), temperature=1.0, t2_scale=False, lr=5e-4,
                       augment=4, note="task stages only (no general stage); 4 augmented variants per text"),
    "pkd": Recipe("bert-L2-H384", ({"label_ce": 0.5, "soft_target": 0.5, "patient": 1.0},), init="first",
                  layer_map="skip"),
    "tang-bilstm": Recipe("bilstm", ({"label_ce": 0.5, "logit_mse": 0.5},), lr=2e-3, augment=4,
                          note="4 augmented variants per transfer-set text (masking, embedding neighbours, n-grams)"),
    "two-teachers": Recipe("bert-L2-H384", ({"label_ce": 0.5, "soft_target": 0.5},), init="uniform", teachers=2),
    # a control, not a recipe: hinton's hard-label term alone at its weight (0.5), no teacher. Against it, the
    # gain is the soft targets' own (the weight changes the step size through gradient clipping)
    "alpha-control": Recipe("bert-L2-H384", ({"label_ce": 0.5},), init="uniform",
                            note="control: hinton's hard-label term alone (weight 0.5), no teacher"),
}
BILSTM = dict(embedding_dim=384, hidden_size=128, mlp_hidden=256)


@dataclass
class Settings:
    steps: int = 200
    teacher_steps: int = 240
    teacher_batch_size: int = 32
    label_fraction: float = 0.25
    seeds: tuple = (0, 1, 2)
    batch_size: int = 16
    max_length: int = 48
    threads: int = 2
    recipes: tuple = tuple(RECIPES)
    eval_split: str = "test"            # "dev" to tune (temperature, lr), "test" for the recorded figures
    overrides: dict = field(default_factory=dict)  # Recipe fields for every selected recipe, e.g. temperature
    speed: bool = True                  # measure int8 accuracy and latency at the end (tuning runs: False)
    cache: str = "build/distill-recipes"
    progress: bool = True
    extra: dict = field(default_factory=dict)


def _student(recipe: Recipe, pretrained, num_labels: int, seed: int):
    """The student of ``recipe`` (seeded), initialised from the PRE-TRAINED MiniLM ``pretrained``."""
    if recipe.student == "bilstm":
        return BiLSTMClassifier.from_teacher_embeddings(BiLSTMConfig(num_labels=num_labels, **BILSTM), pretrained,
                                                        seed)
    student = student_classifier(recipe.student, num_labels, pretrained.config, seed=seed)
    if recipe.init:
        n_s, n_t = student.config.num_hidden_layers, pretrained.config.num_hidden_layers
        init_student_from_teacher(student, pretrained, layer_map(recipe.init, n_s, n_t))
    return student


def _labelled_indices(split, fraction: float) -> list:
    """Indices of the first ``ceil(fraction * n_c)`` texts of each class ``c`` in ``split``'s fixed order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction!r}")
    by_class: dict = {}
    for i, y in enumerate(split.labels):
        by_class.setdefault(y, []).append(i)
    return sorted(i for idx in by_class.values() for i in idx[:max(1, math.ceil(fraction * len(idx)))])


def labelled_subset(split, fraction: float):
    """The texts a student without a teacher has: the first ``ceil(fraction * n_c)`` texts of each class ``c``
    in ``split``'s fixed order (at least one), with their labels."""
    from ..tasks import Split

    keep = _labelled_indices(split, fraction)
    return Split(tuple(split.texts[i] for i in keep), tuple(split.labels[i] for i in keep))


def transfer_set(split, fraction: float):
    """Every text of ``split`` (the teacher labels them all), the hard label kept on :func:`labelled_subset`'s
    texts only and None on the others."""
    from ..tasks import Split

    keep = set(_labelled_indices(split, fraction))
    return Split(tuple(split.texts), tuple(y if i in keep else None for i, y in enumerate(split.labels)))


def _train(teachers, student, tok, split, stages, recipe: Recipe, s: Settings, seed: int,
           teacher_logits: torch.Tensor) -> None:
    """Run the stages in order on one student; a later stage keeps the earlier one's projections.
    ``teacher_logits`` [teachers, N, C]: the teachers' logits of ``split``'s texts, computed once for every run."""
    projections = None
    per_stage = max(1, s.steps * recipe.step_factor // len(stages))
    for losses in stages:
        teacher_free = all(k == "label_ce" for k in losses)
        cfg = DistillConfig(losses=dict(losses), layer_map=recipe.layer_map, init_from_teacher=False,
                            temperature=recipe.temperature, t2_scale=recipe.t2_scale, lr=recipe.lr, steps=per_stage,
                            batch_size=s.batch_size, max_length=s.max_length, seed=seed,
                            warmup_steps=max(1, per_stage // 10), progress=s.progress)
        d = Distiller(None if teacher_free else teachers, student, tok, cfg, projections=projections)
        if cfg.logit_only and not teacher_free:
            d.teacher_cache = teacher_logits[:len(teachers)]
        torch.manual_seed(seed)  # dropout
        d.fit(list(split.texts), list(split.labels) if "label_ce" in losses else None)
        projections = d.projections
    student.eval()


def selected_recipes(s: Settings) -> dict:
    """The recipes ``s`` runs, name -> :class:`Recipe` with ``s.overrides`` applied."""
    import dataclasses

    unknown = [r for r in s.recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"recipes {unknown} are unknown; expected some of {tuple(RECIPES)}")
    fields = {f.name for f in dataclasses.fields(Recipe)} - {"student", "stages", "note"}
    bad = sorted(set(s.overrides) - fields)
    if bad:
        raise ValueError(f"overrides {bad} are not recipe settings; expected some of {sorted(fields)}")
    if s.eval_split not in ("dev", "test"):
        raise ValueError(f"eval_split must be 'dev' or 'test', got {s.eval_split!r}")
    return {name: dataclasses.replace(RECIPES[name], **s.overrides) for name in s.recipes}


def _save_tensors(tensors: dict, path: Path) -> None:
    """A cache file of the study as safetensors, whole or not at all (a killed run resumes from it)."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(save(tensors)))


def _teacher(k: int, tok, t, s: Settings):
    """Teacher ``k``: the real MiniLM fine-tuned on the train split with seed ``k`` (cached on disk)."""
    from safetensors.torch import load_file

    path = Path(s.cache) / f"teacher-{k}-steps{s.teacher_steps}-len{s.max_length}-bs{s.teacher_batch_size}.safetensors"
    model = teacher_classifier(t.num_labels, seed=k)
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    finetune(model, tok, t.train, steps=s.teacher_steps, lr=TEACHER_LR, batch_size=s.teacher_batch_size,
             max_length=s.max_length, seed=k, progress=s.progress)
    _save_tensors({n: p.detach().contiguous() for n, p in model.state_dict().items()}, path)
    return model.eval()


def _ms_per_batch(model, batches, repeats: int = 5) -> float:
    """Median ms per batch (:func:`bertsilicon.models.eval.time_batches`) without autograd."""
    from ..models.eval import time_batches

    with torch.no_grad():
        return time_batches(model, batches, repeats)


def _int8(model):
    """(model, note): ``bertsilicon.optimize(copy, "int8")``, or None and why (a BiLSTM has no BERT encoder)."""
    from ..models.optimize import optimize

    if isinstance(model, BiLSTMClassifier):
        return None, "bertsilicon.optimize fuses BERT-family encoders; the BiLSTM runs in plain torch fp32"
    return optimize(copy.deepcopy(model), precision="int8"), "bertsilicon.optimize(precision='int8')"


def _predicted_ms(model, batch_size: int, seq_len: int, hardware: str) -> float:
    from ..profiler import profile
    from ..profiler.recurrent import profile_bilstm

    if isinstance(model, BiLSTMClassifier):
        return profile_bilstm(model.config, batch_size, seq_len, "fp32", hardware)["latency_s"] * 1e3
    return profile(model.config, batch_size=batch_size, seq_len=seq_len, precision="fp32",
                   hardware=hardware).totals["latency_s"] * 1e3


def soft_target_summary(logits: torch.Tensor, labels, temperatures=(1.0, 2.0)) -> dict:
    """How much a teacher's soft targets say, from its logits ``[N, C]`` of texts with ``labels``: per T,
    the mean probability of the true label, the mean largest probability and the mean entropy (nats; a
    uniform distribution over C classes has ln C)."""
    y = torch.tensor(list(labels))
    out = {"texts": len(y), "uniform_entropy_nats": math.log(logits.shape[-1]),
           "accuracy": float((logits.argmax(-1) == y).double().mean())}
    for temperature in temperatures:
        p = torch.softmax(logits.double() / temperature, -1)
        out[f"T={temperature:g}"] = {"mean_prob_of_label": float(p[torch.arange(len(y)), y].mean()),
                                     "mean_max_prob": float(p.max(-1).values.mean()),
                                     "mean_entropy_nats": float(-(p * p.clamp_min(1e-300).log()).sum(-1).mean())}
    return out


def _spread(values) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "spread": max(values) - min(values), "values": list(values)}


def _run_name(name: str, recipe: Recipe, kind: str, seed: int, s: Settings) -> str:
    """Cache name of one run. A hard-label run depends on the student, its init, learning rate and steps only,
    so recipes that share them (hinton, two-teachers, alpha-control) share their hard-label twins."""
    data = (f"steps{s.steps * recipe.step_factor}-len{s.max_length}-bs{s.batch_size}-labels{s.label_fraction:g}"
            f"-{s.eval_split}")
    if kind == "hard_labels":
        return f"hard-{recipe.student}-{recipe.init}-lr{recipe.lr:g}-seed{seed}-{data}"
    data += "-transfer" if recipe.uses_teacher else ""
    return (f"{name}-distilled-T{recipe.temperature:g}-lr{recipe.lr:g}-aug{recipe.augment}-seed{seed}-{data}"
            f"-teacher{s.teacher_steps}x{s.teacher_batch_size}")


def _summarise(rows: dict, recipes: dict) -> dict:
    """Per recipe: mean / min / max / spread of each kind, the gain and whether it beats both spreads."""
    out = {}
    for name, r in rows.items():
        if not (r["distilled"] and r["hard_labels"]):
            continue
        summary = {k: _spread([x["accuracy"] for x in v]) for k, v in r.items()}
        gain = summary["distilled"]["mean"] - summary["hard_labels"]["mean"]
        seeds = min(len(v) for v in r.values())
        out[name] = {"recipe": {**recipes[name].__dict__, "stages": list(recipes[name].stages)}, "runs": r,
                     "summary": summary, "gain": gain, "seeds": seeds,
                     "beats_beyond_spread": seeds >= 2 and gain > max(summary["distilled"]["spread"],
                                                                      summary["hard_labels"]["spread"])}
    return out


def run(s: Settings, out: Optional[Path] = None) -> dict:
    """Every seed x recipe x {distilled, hard_labels} (seeds outermost, so a partial run covers every recipe);
    runs already in the cache are not trained again; with ``out``, partial results are written after each run."""
    import bertsilicon as bs
    from safetensors.torch import load_file

    from ..benchmark.machine import machine_info
    from ..tasks import Split, task
    from .augment import augment

    recipes = selected_recipes(s)
    torch.set_num_threads(s.threads)
    t_start = time.perf_counter()
    info = machine_info(s.threads)
    tok, t = bs.load_tokenizer(), task("docstring-module")
    evaluation = t.split(s.eval_split)
    n_teachers = max(r.teachers for r in recipes.values())
    teachers = [_teacher(k, tok, t, s) for k in range(n_teachers)]
    teacher_acc = [accuracy(m, tok, evaluation, max_length=s.max_length) for m in teachers]
    pretrained = teacher_classifier(t.num_labels, seed=0).eval()  # the students' init: MiniLM before fine-tuning
    labelled, transfer = labelled_subset(t.train, s.label_fraction), transfer_set(t.train, s.label_fraction)
    data: dict = {}  # (transfer set?, variants per text) -> (split, the teachers' logits of its texts or None)

    def data_for(with_teacher: bool, n: int):
        if (with_teacher, n) not in data:
            base = transfer if with_teacher else labelled
            texts, labels = list(base.texts), list(base.labels)
            if n:
                texts, labels = augment(texts, labels, tok, n=n, seed=0,
                                        word_embeddings=pretrained.get_input_embeddings().weight)
            per_teacher = []  # (no teacher for the hard-label runs)
            for k, teacher in enumerate(teachers if with_teacher else []):  # cached per teacher: a run with more teachers reuses them
                path = Path(s.cache) / (f"logits-transfer{s.label_fraction:g}-aug{n}-teacher{k}-{s.teacher_steps}x"
                                        f"{s.teacher_batch_size}-len{s.max_length}.safetensors")
                if not path.is_file():
                    _save_tensors({"logits": teacher_logits([teacher], tok, texts, s.max_length,
                                                            progress=s.progress)[0].contiguous()}, path)
                per_teacher.append(load_file(str(path))["logits"])
            logits = torch.stack(per_teacher) if per_teacher else None
            data[with_teacher, n] = (Split(tuple(texts), tuple(labels)), logits)
        return data[with_teacher, n]

    runs_dir = Path(s.cache) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    rows = {name: {"distilled": [], "hard_labels": []} for name in s.recipes}
    last = {}
    head = {"task": {"name": t.name, "classes": t.num_labels, "train": len(t.train), "test": len(t.test),
                     "dev": len(t.dev), "eval_split": s.eval_split, "student_labelled_train": len(labelled),
                     "transfer_set": len(transfer)},
            "teachers_test_accuracy": teacher_acc,
            "teacher_soft_targets": soft_target_summary(data_for(True, 0)[1][0], t.train.labels)}
    for seed in s.seeds:
        for name in s.recipes:
            recipe = recipes[name]
            for kind, stages in (("distilled", recipe.stages), ("hard_labels", (HARD_LABELS,))):
                key = runs_dir / f"{_run_name(name, recipe, kind, seed, s)}.json"
                weights = key.with_suffix(".safetensors")
                keep = kind == "distilled" and seed == s.seeds[-1]  # its student is measured for speed and int8
                if key.is_file() and (not keep or weights.is_file()):
                    rows[name][kind].append(json.loads(key.read_text()))
                    if keep:
                        last[name] = _student(recipe, pretrained, t.num_labels, seed)
                        last[name].load_state_dict(load_file(str(weights)))
                        last[name].eval()
                    continue
                distilled = kind == "distilled" and recipe.uses_teacher
                split, logits = data_for(distilled, recipe.augment if distilled else 0)
                student = _student(recipe, pretrained, t.num_labels, seed)  # same init for both kinds
                t0 = time.perf_counter()
                _train(teachers[:recipe.teachers], student, tok, split, stages, recipe, s, seed, logits)
                row = {"seed": seed, "accuracy": accuracy(student, tok, evaluation, max_length=s.max_length),
                       "train_s": time.perf_counter() - t0, "train_texts": len(split)}
                if keep:
                    _save_tensors({n: v.detach().clone().contiguous() for n, v in student.state_dict().items()},
                                  weights)
                    last[name] = student
                atomic_write(key, lambda f: f.write(json.dumps(row).encode()))
                rows[name][kind].append(row)
                print(f"{name:>13} seed {seed} {kind:<11}: {s.eval_split} accuracy {row['accuracy']:.4f} "
                      f"({row['train_s']:.0f} s)", flush=True)
                if out is not None:
                    _write_partial(info, s, head, rows, t_start, Path(out))
    results = _summarise(rows, recipes)

    speed, speed_setup = _speed(teachers[0], last, tok, evaluation, s, info) if s.speed else ({}, {})
    info["load_average_end"] = list(os.getloadavg())
    result = {"machine": info, "settings": _settings(s), **head, "recipes": results, "speed": speed,
              "speed_setup": speed_setup, "wall_s": time.perf_counter() - t_start}
    if out is not None:
        from .recipes_report import write

        write(result, Path(out))
    return result


def _speed(teacher, students: dict, tok, split, s: Settings, info: dict):
    """(speed, setup): int8 accuracy on ``split`` and measured / predicted latency of the teacher and of each
    recipe's last distilled student, on every third batch of 32 of ``split`` sorted by length."""
    order = sorted(range(len(split)), key=lambda i: len(split.texts[i]))
    batches = [dict(tok([split.texts[i] for i in order[c:c + 32]], padding=True, truncation=True,
                        max_length=s.max_length, return_tensors="pt")) for c in range(0, len(order), 32)][::3]
    hardware = "avx512" if "avx512f" in info["cpu"]["flags"] else "avx2"
    seq = round(statistics.fmean(b["input_ids"].shape[1] for b in batches))
    speed = {}
    for name, model in {"teacher": teacher, **students}.items():
        q, note = _int8(model)
        speed[name] = {"fp32_ms": _ms_per_batch(model, batches), "int8_ms": _ms_per_batch(q, batches) if q else None,
                       "int8_accuracy": accuracy(q, tok, split, max_length=s.max_length) if q else None,
                       "predicted_fp32_ms": _predicted_ms(model, 32, seq, hardware), "int8_note": note}
    return speed, {"batches": len(batches), "batch_size": 32, "mean_padded_length": seq,
                   "profiler_hardware": hardware, "repeats": 5}


def _settings(s: Settings) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.__dict__.items()}


def _write_partial(info: dict, s: Settings, head: dict, rows: dict, t_start: float, out: Path) -> None:
    """The results so far (no speed section yet), as the final files would show them, marked partial."""
    from .recipes_report import write

    info = {**info, "load_average_end": list(os.getloadavg())}
    write({"machine": info, "settings": _settings(s), **head, "recipes": _summarise(rows, selected_recipes(s)),
           "speed": {},
           "partial": True, "wall_s": time.perf_counter() - t_start}, out, quiet=True)


__all__ = ["RECIPES", "Recipe", "Settings", "run", "HARD_LABELS", "labelled_subset", "transfer_set", "selected_recipes"]
