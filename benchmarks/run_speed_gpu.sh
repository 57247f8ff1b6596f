#!/usr/bin/env bash
# Every GPU measurement of the speed issue in one go (about 5-6 minutes on one H200): fused LM-head KD (every
# divergence, default vs fp32 logits, chunking variants, kernel launch and two-stream probes), the top-k teacher
# cache vs the live teacher (two loader settings, the live teacher's share of the step), and the training-step
# overhead (resnet and tiny GPT eager, tiny GPT with CUDA graphs, resnet compiled). Raw outputs go to OUT_DIR, one
# file per benchmark; a short table against the targets is printed last.
#
#   bash benchmarks/run_speed_gpu.sh OUT_DIR            # on the GPU machine (python3 there holds torch)
#   bash benchmarks/run_speed_gpu.sh OUT_DIR --smoke    # on a CPU: every piece in its smoke mode
#
# Each piece has its own time limit, so one that hangs or runs long cannot take the others with it.
set -u
out=${1:?usage: bash benchmarks/run_speed_gpu.sh OUT_DIR [--smoke]}
mode=${2:-gpu}
py=${PYTHON:-python3}
out=$(mkdir -p "$out" && cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

run() {  # name, seconds, then python's arguments (-m module ...)
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$py" "$@" >"$out/$name.txt" 2>&1
    echo "   exit $? after $((SECONDS - start)) s -> $out/$name.txt"
}

if [ "$mode" = "--smoke" ]; then
    run fused 300 -m benchmarks.speed.fused_kd_variants --smoke --out "$out"
    run teacher_cache 300 -m benchmarks.speed.teacher_cache --case text --epochs 2 --repeats 1 --top-k 32 --threads 1 \
        --loaders 0,1p
    run step_overhead 300 -m benchmarks.speed.step_overhead --smoke --out "$out"
else
    "$py" -c 'import torch; print("torch", torch.__version__, "GPUs", torch.cuda.device_count())'
    run fused 200 -m benchmarks.speed.fused_kd_variants --out "$out"
    run teacher_cache 120 -m benchmarks.speed.teacher_cache --case text-gpu --device cuda --precision bf16-mixed \
        --top-k 32 --epochs 4 --repeats 2 --loaders 0,2p
    run step_overhead 240 -m benchmarks.speed.step_overhead --suite gpu --steps 50 --warmup 10 --repeats 3 \
        --compile-repeats 1 --out "$out"
fi
"$py" -m benchmarks.speed.speed_summary "$out" | tee "$out/summary.txt"
