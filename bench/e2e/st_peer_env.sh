#!/usr/bin/env bash
# The environment of the sentence-transformers ONNX / OpenVINO rows of bench/e2e/encode.py, apart from the
# package's own (see st-peers-requirements.txt for why):
#
#     bash bench/e2e/st_peer_env.sh            # makes .venv-st-peers at the repository root (about 3-5 min)
#     bash bench/e2e/st_peer_env.sh DIR        # somewhere else: pass --st-peer-python DIR/bin/python to encode.py
#
# torch is the CPU build 2.13.0, installed first and named again beside the requirements so that pip never
# picks a torch of its own (it would pull a CUDA build). PYTHON chooses the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-st-peers}"
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check"
start=$(date +%s)
test -x "$PY" || "${PYTHON:-python3}" -m venv "$VENV"
$PIP install -q torch==2.13.0
$PIP install -q -r bench/e2e/st-peers-requirements.txt torch==2.13.0
# Both backends load, and neither drags in torchvision (which does not import beside this torch build).
HF_HUB_OFFLINE=1 $PY - <<'PY'
import sys

import onnxruntime
import openvino
import sentence_transformers
from optimum.intel.openvino import OVModelForFeatureExtraction  # noqa: F401
from optimum.onnxruntime import ORTModelForFeatureExtraction  # noqa: F401

assert "torchvision" not in sys.modules, "torchvision was imported"
print(f"sentence-transformers {sentence_transformers.__version__}, onnxruntime {onnxruntime.__version__}, "
      f"openvino {openvino.__version__}: ready")
PY
echo "$VENV ready in $(( $(date +%s) - start )) s"
