"""Write requirements/constraints.txt: the exact versions `make install` installs.

The constraints are a frozen copy of a virtual environment in which the whole test suite passed with the
newest releases that pyproject.toml's ranges admit (`make test-latest` builds and tests that environment).
So the flow when upstream moves is:

    make test-latest        # fresh .venv-latest with today's releases, then the suite
    make lock               # this script: freeze .venv-latest into requirements/constraints.txt (dated)
    make test               # the pinned set, as every fresh clone installs it

Usage: python tools/lock.py [VENV] [--out FILE]   (defaults: .venv-latest, requirements/constraints.txt)
"""
from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_PINNED = {"pip", "bertsilicon"}  # pip upgrades itself; the package is the tree being installed


def frozen(venv: Path) -> list[str]:
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"lock: {python} not found; run `make test-latest` first (it builds {venv})")
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all", "--exclude-editable",
                          "--disable-pip-version-check"], check=True, capture_output=True, text=True).stdout
    pins = []
    for line in out.splitlines():
        name = line.split("==")[0].strip().lower().replace("_", "-")
        if "==" not in line or name in NOT_PINNED:
            continue
        pins.append(line.strip())
    return sorted(pins, key=str.lower)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("venv", nargs="?", default=str(ROOT / ".venv-latest"), help="the tested environment to freeze")
    p.add_argument("--out", default=str(ROOT / "requirements" / "constraints.txt"), help="where to write")
    args = p.parse_args(argv)
    venv = Path(args.venv)
    python_version = subprocess.run([str(venv / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
                                    check=True, capture_output=True, text=True).stdout.strip() \
        if (venv / "bin" / "python").exists() else platform.python_version()
    pins = frozen(venv)
    header = [
        f"# Resolved {datetime.date.today().isoformat()} by tools/lock.py from {venv.name}, where `make test-latest` passed.",
        f"# Python {python_version}, {platform.system()} {platform.machine()}. `make install` installs exactly these",
        "# (pip -c); pyproject.toml keeps open ranges. To move to newer releases: make test-latest && make lock.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(header + pins) + "\n")
    print(f"lock: {len(pins)} pins -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
