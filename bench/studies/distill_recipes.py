"""Each paper's task-distillation recipe against hard labels: <out>/recipes.{json,md,png} (default
./bertsilicon-results/distill; the recorded run: --out bench/results/distill).

    .venv/bin/python bench/studies/distill_recipes.py --out bench/results/distill     # the full run, recorded
    .venv/bin/python bench/studies/distill_recipes.py --quick --out build/recipes-quick  # a few steps: checks the script

    # tuning, on the dev split only (never the test split): one setting of the selected recipes, no speed section
    .venv/bin/python bench/studies/distill_recipes.py --eval-split dev --no-speed --recipes hinton --set temperature=1 \
        --seeds 0 --out build/tune/hinton-T1

Full run (the defaults): teachers fine-tuned 240 steps x 32 on the whole train split; students 200 steps x 16;
hard labels for a quarter of each class's train texts, the distilled students learn from the teacher on every
train text (the transfer set); 3 seeds; every recipe (see bertsilicon.distill.recipes). Teachers and finished runs
are cached under --cache (resumable: a rerun trains only what is missing), and the results so far are written to
--out after every run (marked partial until the end).
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

from bertsilicon.distill.recipes import RECIPES, Recipe, Settings, run

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Recipe)}


def _override(text: str) -> tuple:
    """``KEY=VALUE`` -> (KEY, VALUE as the recipe field's type), e.g. ``temperature=1``, ``lr=5e-3``."""
    key, sep, value = text.partition("=")
    if not sep or key not in _DEFAULTS or key in ("student", "stages", "note"):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of "
                                         f"{sorted(set(_DEFAULTS) - {'student', 'stages', 'note'})}, got {text!r}")
    try:
        parsed = json.loads(value)
        kind = type(_DEFAULTS[key]) if _DEFAULTS[key] is not None else str
        if kind is float and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            parsed = float(parsed)
        if not isinstance(parsed, kind):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key} must be a {type(_DEFAULTS[key]).__name__}, got {value!r}") from None
    return key, parsed

QUICK = dict(steps=4, teacher_steps=4, teacher_batch_size=8, batch_size=8, max_length=24, seeds=(0, 1))


def main(argv=None) -> int:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=d.steps, help="student steps per run")
    p.add_argument("--teacher-steps", type=int, default=d.teacher_steps, help="teacher fine-tuning steps")
    p.add_argument("--teacher-batch-size", type=int, default=d.teacher_batch_size, help="teacher fine-tuning batch")
    p.add_argument("--label-fraction", type=float, default=d.label_fraction,
                   help="fraction of each class's train texts the students get labels for (teachers: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds), help="student seeds")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="student batch")
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per text at most")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="recipes to run")
    p.add_argument("--eval-split", default=d.eval_split, choices=("dev", "test"),
                   help="split the students are scored on: dev to tune, test for the recorded figures")
    p.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe setting for every selected recipe (temperature, lr, step_factor, augment, ...)")
    p.add_argument("--no-speed", action="store_true", help="skip the int8 / latency section (tuning runs)")
    p.add_argument("--cache", default=d.cache, help="folder for the fine-tuned teachers and finished runs")
    p.add_argument("--quick", action="store_true", help=f"a few steps of everything ({QUICK}); checks the script")
    p.add_argument("--out", default="bertsilicon-results/distill",
                   help="output folder (default: ./bertsilicon-results/distill; the recorded run: bench/results/distill)")
    a = p.parse_args(argv)
    s = Settings(steps=a.steps, teacher_steps=a.teacher_steps, teacher_batch_size=a.teacher_batch_size,
                 label_fraction=a.label_fraction, seeds=tuple(a.seeds), batch_size=a.batch_size,
                 max_length=a.max_length, threads=a.threads, recipes=tuple(a.recipes), cache=a.cache,
                 eval_split=a.eval_split, overrides=dict(a.overrides), speed=not a.no_speed)
    if a.quick:
        s = Settings(**{**s.__dict__, **QUICK, "cache": str(Path(a.cache) / "quick")})
    run(s, Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
