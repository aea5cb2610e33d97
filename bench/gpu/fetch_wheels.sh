#!/usr/bin/env bash
# Fill bench/gpu/wheels/ (git-ignored; it travels to the GPU machine with the working tree) with
# the wheels evomerge's local-evaluator path imports and the GPU machines lack. Their python has
# torch (CUDA), transformers (hence pyyaml), peft, safetensors and huggingface_hub; evomerge
# also needs pydantic at import (evomerge/ops/statistics.py), which pulls pydantic-core,
# annotated-types, typing-inspection and typing-extensions. Nothing else is needed without Ray.
#
# The wheels must match the GPU machine's python: check it first with a cheap device command,
#     python3 -V; nvidia-smi --query-gpu=name,memory.total --format=csv
# then, here (one folder per version; several versions cover a machine not checked first):
#     bash bench/gpu/fetch_wheels.sh 3.11               # the X.Y that python3 -V printed there
#     bash bench/gpu/fetch_wheels.sh 3.10 3.11 3.12 3.13
set -euo pipefail
cd "$(dirname "$0")"
[ $# -gt 0 ] || { echo "usage: fetch_wheels.sh X.Y [X.Y ...] (python3 -V on the GPU machine)" >&2; exit 2; }
rm -rf wheels && mkdir wheels
for PY in "$@"; do
    [[ $PY =~ ^3\.[0-9]+$ ]] || { echo "fetch_wheels.sh: '$PY' is not X.Y (e.g. 3.11)" >&2; exit 2; }
    pip download -q --no-cache-dir --only-binary=:all: --implementation cp \
        --python-version "$PY" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 --platform any -d "wheels/$PY" \
        "pydantic==2.14.4" "pydantic-core==2.50.5" typing-extensions 2>&1 \
        | grep -v '^WARNING: Location' || true
    ls "wheels/$PY"/pydantic_core-* > /dev/null 2>&1 \
        || { echo "fetch_wheels.sh: no pydantic-core wheel for python $PY" >&2; exit 2; }
done
du -sh wheels/* wheels
