#!/usr/bin/env bash
# LLM-scale numbers from one visit to a GPU machine that has torch (CUDA), transformers, peft,
# safetensors and huggingface_hub but no Ray, cma, pydantic or vLLM, and no network: installs
# the carried wheels (bench/gpu/wheels, from fetch_wheels.sh) into a scratch folder, makes the
# synthetic seeds there and measures the local evaluator (bench/gpu/bench.py) for lineage and
# recipe candidates, within BUDGET_S seconds in all, writing JSON under $OUT as it goes.
#
#   OUT=/tmp/gpuout bash bench/gpu/run.sh                       # on the GPU machine: 1b,7b, cuda
#   OUT=/tmp/gpuout DEVICE=cpu SIZES=smoke bash bench/gpu/run.sh   # CPU rehearsal
#
# Environment: OUT (required), DEVICE (cuda), SIZES (1b,7b; bench/llm/scale.py's shapes),
# BUDGET_S (500: everything, install included, ends before 9 minutes), PYTHON (python3),
# SEEDS_ROOT (/tmp/evomerge-gpu-seeds; the 7b seeds take 40 GB of disk).
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/../.."
: "${OUT:?run.sh: set OUT to the folder the results go to}"
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-1b,7b}
BUDGET_S=${BUDGET_S:-500}
PY=${PYTHON:-python3}
SEEDS_ROOT=${SEEDS_ROOT:-/tmp/evomerge-gpu-seeds}
LIB=${TMPDIR:-/tmp}/evomerge-gpu-pylib
mkdir -p "$OUT"
fail() { echo "run.sh: $1" >&2; printf '{"error": "%s"}\n' "${1//\"/\'}" > "$OUT/status.json"; exit 2; }

HAVE=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
"$PY" - > "$OUT/env.json" 2>&1 <<'PY' || true
import json, platform, subprocess, torch
c = torch.cuda.is_available()
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    smi = None
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if c else None,
                  "gpus": torch.cuda.device_count(), "nvidia_smi": smi}))
PY

if ! "$PY" -c 'import pydantic' 2>/dev/null; then
    WHEELS=bench/gpu/wheels/$HAVE
    [ -d bench/gpu/wheels ] || fail "bench/gpu/wheels/ is missing: run 'bash bench/gpu/fetch_wheels.sh $HAVE' before the visit and name bench/gpu/wheels in the device tool's carry"
    [ -d "$WHEELS" ] || fail "the carried wheels are for python $(ls bench/gpu/wheels | tr '\n' ' ')but this machine's python3 is $HAVE: run 'bash bench/gpu/fetch_wheels.sh $HAVE' and carry them again"
    rm -rf "$LIB"
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" --target "$LIB" pydantic \
        > "$OUT/pip.log" 2>&1 || fail "pip could not install the carried wheels (see pip.log): $(tail -1 "$OUT/pip.log")"
    rm -f "$OUT/pip.log"
    export PYTHONPATH="$LIB${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
if [[ $DEVICE == cuda* ]]; then
    "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' \
        || fail "DEVICE=$DEVICE but torch sees no CUDA GPU; use DEVICE=cpu SIZES=smoke for a rehearsal"
fi
"$PY" -c 'import evomerge.runtime.local, evomerge.kit' 2> "$OUT/import.log" \
    || fail "evomerge does not import here: $(tail -1 "$OUT/import.log")"
rm -f "$OUT/import.log"

echo "run.sh: python $HAVE, device $DEVICE, sizes $SIZES, $((START + BUDGET_S - $(date +%s))) s left"
"$PY" bench/gpu/bench.py --device "$DEVICE" --sizes "$SIZES" --out "$OUT" \
    --seeds-root "$SEEDS_ROOT" --deadline $((START + BUDGET_S))
RC=$?
echo "run.sh: done in $(($(date +%s) - START)) s (exit $RC); results in $OUT"
exit $RC
