"""Regenerate the README's performance table from the latest end-to-end results file.

``python bench/e2e/update_readme.py [--readme README.md] [--results bench/results/cpu/e2e.json]``: rewrites only
the lines between ``<!-- perf-table:start ... -->`` and ``<!-- perf-table:end -->``. Default results: the
newest full run in ``bench/results/cpu`` (a quick run only when no full run exists).
"""
import argparse
import sys
from pathlib import Path

from bertsilicon.benchmark.report import update_readme


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", default=str(root / "README.md"))
    p.add_argument("--results", default=None, help="a results JSON (default: the latest in bench/results/cpu)")
    args = p.parse_args(argv)
    used = update_readme(args.readme, args.results)
    print(f"{args.readme}: performance table regenerated from {used}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
