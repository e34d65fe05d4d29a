"""Record the distillation demo's figures: bench/results/distill/demo.{json,md,png}.

    .venv/bin/python bench/studies/distill_demo.py [--note "quiet machine"] [demo options, e.g. --steps 100]

Final figures: run it on a quiet 2-core machine (nothing else running), with the default options.
"""
import sys
from pathlib import Path

from bertsilicon.distill.demo import main

OUT = Path(__file__).resolve().parents[1] / "results" / "distill"

if __name__ == "__main__":
    sys.exit(main(["--out", str(OUT), *sys.argv[1:]]))
