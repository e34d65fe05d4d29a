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
