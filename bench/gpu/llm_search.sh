#!/usr/bin/env bash
# LLM searches on GPU workers: the SmolLM2-135M bench (CMA-ES TIES recipe, M2N2 lineage) and a
# CMA-ES TIES recipe search over three synthetic 1.1B bf16 Llama seeds, on Ray workers with
# num_gpus 1 (one per GPU) and 0.5 (two per GPU). Records candidates/s, a worker's load vs
# forward time and GPU memory. Run by hand on a machine with a GPU; never in CI.
#
#   bash bench/gpu/llm_search.sh [OUT_DIR]
#
# Environment: LLM_BENCH (default models/llm-bench, made by bench/llm/make_experts.py),
# SCALE_ROOT (default /work/scratch/i13a/llama-1b; made here when missing), EVALS (default 32).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-${OUT:-bench/gpu/results-$(date -u +%Y%m%d-%H%M%S)}}
LLM_BENCH=${LLM_BENCH:-models/llm-bench}
SCALE_ROOT=${SCALE_ROOT:-/work/scratch/i13a/llama-1b}
EVALS=${EVALS:-32}

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
    echo "llm_search.sh: no CUDA GPU visible to torch (torch.cuda.is_available() is False);" \
         "run this on a machine with a GPU and a CUDA build of torch" >&2
    exit 2
fi
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
mkdir -p "$OUT"
echo "writing results to $OUT ($GPUS GPUs)"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.csv" || true

# GPU memory of the whole machine, sampled every second while the searches run
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -l 1 \
    > "$OUT/gpu_memory.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT

run() {  # name config workers num_gpus [--set ...]
    local name=$1 config=$2 workers=$3 gpus=$4
    shift 4
    echo "== $name: $config, $workers workers x $gpus GPU"
    evomerge run "$config" --out "$OUT/$name" -q \
        --set budget.evaluations="$EVALS" --set checkpoint_every="$EVALS" \
        --set evaluator.kind=ray --set evaluator.workers="$workers" \
        --set evaluator.num_gpus="$gpus" --set evaluator.num_cpus=1 "$@"
    python - "$OUT/$name" "$name" "$workers" "$gpus" >> "$OUT/searches.jsonl" <<'PY'
import json, sys
from pathlib import Path
s = json.loads((Path(sys.argv[1]) / "summary.json").read_text())
print(json.dumps({"run": sys.argv[2], "workers": int(sys.argv[3]), "num_gpus": float(sys.argv[4]),
                  "evaluations": s["evaluations"], "wall_s": s["wall_seconds"],
                  "candidates_per_s": round(s["evaluations"] / s["wall_seconds"], 3),
                  "utilisation": s.get("worker_utilisation"), "metrics": s.get("metrics")}))
PY
}

if [ -d "$LLM_BENCH/base" ]; then
    for g in 1 0.5; do
        w=$(python -c "print(max(1, int($GPUS / $g)))")
        run "smollm2-cmaes-g$g" bench/llm/cmaes_ties.yaml "$w" "$g" \
            --set "fitness.options.seeds=[$LLM_BENCH/base,$LLM_BENCH/add,$LLM_BENCH/reverse]"
        run "smollm2-m2n2-g$g" bench/llm/m2n2_lineage.yaml "$w" "$g" \
            --set "fitness.options.seeds=[$LLM_BENCH/add,$LLM_BENCH/reverse]"
    done
else
    echo "skipping the SmolLM2 bench: $LLM_BENCH/base is missing (bench/llm/make_experts.py)" >&2
fi

[ -d "$SCALE_ROOT/b" ] || python bench/llm/scale.py make "$SCALE_ROOT" --size 1b
SEEDS="[$SCALE_ROOT/base,$SCALE_ROOT/a,$SCALE_ROOT/b]"
TASK="[{name: add, train: $SCALE_ROOT/add.jsonl, metric: token_accuracy}]"
for g in 1 0.5; do
    w=$(python -c "print(max(1, int($GPUS / $g)))")
    run "llama1b-cmaes-g$g" bench/llm/scale_cmaes_3b.yaml "$w" "$g" \
        --set "fitness.options.seeds=$SEEDS" --set "fitness.options.tasks=$TASK"
    run "llama1b-m2n2-g$g" bench/llm/scale_m2n2_3b.yaml "$w" "$g" \
        --set "fitness.options.seeds=$SEEDS" --set "fitness.options.tasks=$TASK"
done

# one worker's set-up, load and forward times and GPU peak memory, per space
python bench/llm/scale.py measure "$SCALE_ROOT" --repeats 3 --device cuda | tee "$OUT/worker_1b.jsonl"
echo "done: $OUT/searches.jsonl, $OUT/worker_1b.jsonl, $OUT/gpu_memory.csv"
