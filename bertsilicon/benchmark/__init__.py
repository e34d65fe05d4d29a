"""End-to-end benchmark suite behind `bertsilicon bench` and bench/e2e.py (issue 7)."""
