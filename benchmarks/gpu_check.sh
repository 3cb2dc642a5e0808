#!/usr/bin/env bash
# infer's one-shot GPU check (see gpu_check.py): installs nothing; run it on the GPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} exec python3 benchmarks/gpu_check.py "$@"
