"""Every Python snippet in README.md runs as written, in a fresh process: self-contained, nothing undefined."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 4


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path):
    code = SNIPPETS[index]
    env = {**os.environ, "BERTSILICON_CALIBRATION": str(tmp_path / "calibration.json"), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, f"README snippet {index} failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"


# ------------------------------------------------------------------------------------------------ #
# the README's commands write under the current folder by default, never into the recorded results   #
# ------------------------------------------------------------------------------------------------ #
COMMANDS = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(),
                                                                  re.S) for line in block.splitlines()]
RECORDING = {"make bench": "the documented recording run: it says it writes bench/results/cpu"}


def _tracked_results(path) -> bool:
    return Path(ROOT / path).resolve().is_relative_to(ROOT / "bench" / "results")


def test_readme_commands_write_nothing_tracked_by_default(monkeypatch):
    import shlex

    from bertsilicon import cli

    subcommands = cli.build_parser()._subparsers._group_actions[0].choices
    checked = 0
    for line in COMMANDS:
        words = shlex.split(line.replace("\\", ""))
        words = [w for w in words if "=" not in w.split("/")[0]]  # environment assignments in front
        if not words or line.startswith(tuple(RECORDING)) or "--out" in words or "--json" in words:
            continue
        if words[0] == "bertsilicon" and words[1] in subcommands:
            out = [a for a in subcommands[words[1]]._actions if "--out" in a.option_strings]
            assert not out or out[0].default is None or not _tracked_results(out[0].default), line
            checked += 1
        elif words[0] == "python" and words[1].endswith(".py"):
            source = (ROOT / words[1]).read_text()
            default = re.search(r'add_argument\("--out"[^)]*?default=([^,)]+)', source)
            assert default is None or ("ROOT" not in default.group(1) and "bench/results" not in default.group(1)
                                       and "OUT" not in default.group(1)), line
            checked += 1
        elif "pytest" in words[0] and words[1].startswith("bench/kernels"):
            monkeypatch.delenv("BERTSILICON_KERNEL_RESULTS", raising=False)
            monkeypatch.syspath_prepend(str(ROOT / "bench" / "kernels"))
            import importlib

            import harness
            assert not _tracked_results(importlib.reload(harness).RESULTS_DIR), line
            checked += 1
    assert checked >= 10, COMMANDS
