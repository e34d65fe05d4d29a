"""bertsilicon int8 vs the strongest CPU engines: ``python bench/e2e/peers.py [--quick] ...`` is ``bertsilicon peers ...``
(see its --help). Implementation: ``bertsilicon/benchmark/peers*.py``, ``columns.py``, ``coldstart.py``.
Results: ``bench/results/cpu/peers*.{json,md,png}``.
"""
import sys

from bertsilicon.benchmark.peers_cli import main

if __name__ == "__main__":
    sys.exit(main())
