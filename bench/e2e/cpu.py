"""End-to-end benchmark: ``python bench/e2e/cpu.py [--quick] ...`` is ``bertsilicon bench ...`` (see its --help).

Implementation: ``bertsilicon/benchmark/``. Results: ``bench/results/cpu/e2e*.{json,md,png}``.
"""
import sys

from bertsilicon.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
