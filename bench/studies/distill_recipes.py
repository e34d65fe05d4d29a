"""Each paper's task-distillation recipe against hard labels: <out>/recipes.{json,md,png} (default
./bertsilicon-results/distill; the recorded run: --out bench/results/distill).

    .venv/bin/python bench/studies/distill_recipes.py                  # the full run (see bertsilicon.distill.recipes)
    .venv/bin/python bench/studies/distill_recipes.py --steps 40 --teacher-steps 120 --threads 1 \
        --out bench/results/distill                                    # the recorded, reduced run

Teachers and finished runs are cached under --cache (resumable: a rerun trains only what is missing).
"""
import argparse
import sys
from pathlib import Path

from bertsilicon.distill.recipes import RECIPES, Settings, run



def main(argv=None) -> int:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=d.steps, help="student steps per run")
    p.add_argument("--teacher-steps", type=int, default=d.teacher_steps)
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--cache", default=d.cache, help="folder for the fine-tuned teachers and finished runs")
    p.add_argument("--out", default="bertsilicon-results/distill",
                   help="output folder (default: ./bertsilicon-results/distill; the recorded run: bench/results/distill)")
    a = p.parse_args(argv)
    run(Settings(steps=a.steps, teacher_steps=a.teacher_steps, seeds=tuple(a.seeds), batch_size=a.batch_size,
                 max_length=a.max_length, threads=a.threads, recipes=tuple(a.recipes), cache=a.cache), Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
