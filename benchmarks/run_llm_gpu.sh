#!/usr/bin/env bash
# LLM-at-scale measurements of BENCHMARKS.md on 2 H200s (device kind nvidia-h200-x2), one stage per call:
#   bash benchmarks/run_llm_gpu.sh OUT_DIR a      # pair (a): 1 GPU (fused, full logits, compiled), DDP x2, FSDP2 x2, FSDP1 x2
#   bash benchmarks/run_llm_gpu.sh OUT_DIR b      # pair (b) on FSDP2 x2 with checkpoint/resume/export; hand-loop baselines
#   bash benchmarks/run_llm_gpu.sh OUT_DIR trl    # TRL GKDTrainer (lmbda=0) on pair (a), 1 GPU and DDP x2
#   bash benchmarks/run_llm_gpu.sh OUT_DIR one    # one H200: TRL vs ours on pair (a), the hand loop, FSDP2 x1 cycle with a 40-layer 70B-width teacher
# Raw JSON rows and logs go to OUT_DIR; the last lines printed are the rows' summaries.
set -u
out=${1:?OUT_DIR}; stage=${2:?stage}
out=$(mkdir -p "$out" && cd "$out" && pwd)
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" && export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"  # the scripts run as modules of benchmarks/
run() {  # name, timeout, command...
  local name=$1 limit=$2; shift 2
  echo "[$(date +%T)] $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1 || echo "[$(date +%T)] $name FAILED (exit $?): $(tail -n 3 "$out/$name.log" | tr '\n' ' ')"
  grep -h '^{"run"' "$out/$name.log" >"$out/$name.json" 2>/dev/null || true
}
S="python3 -m benchmarks.scale.llm_scale"
case $stage in
a)
  nvidia-smi topo -m >"$out/topology.txt" 2>&1
  CUDA_VISIBLE_DEVICES=0 run a_single_fused 240 $S --pair a --strategy single --loss fused &
  CUDA_VISIBLE_DEVICES=1 run a_single_full 240 $S --pair a --strategy single --loss full &
  wait
  CUDA_VISIBLE_DEVICES=0 run a_single_fused_compiled 300 $S --pair a --strategy single --loss fused --compile &
  [ -n "${WITH_GENERATION:-}" ] && CUDA_VISIBLE_DEVICES=1 run generation_speed 300 python3 -m benchmarks.speed.generation_speed --out "$out/generation_speed_raw.json" &
  wait
  run a_ddp2 180 $S --pair a --strategy ddp --devices 2
  run a_fsdp2x2 180 $S --pair a --strategy fsdp2 --devices 2
  run a_fsdp2x2_kept 180 $S --pair a --strategy fsdp2 --devices 2 --keep-gathered
  run a_fsdp2x2_replicate_kept 180 $S --pair a --strategy fsdp2 --devices 2 --teacher-sharding replicate --keep-gathered
  ;;
b)
  run b_fsdp2x2_cycle 330 $S --pair b --teacher-layers 86 --strategy fsdp2 --devices 2 --warmup 2 --steps 6 --cycle /tmp/llm_b
  run a_ddp2_compiled 240 $S --pair a --strategy ddp --devices 2 --compile
  run a_fsdp2x2_replicate_compiled 240 $S --pair a --strategy fsdp2 --devices 2 --teacher-sharding replicate --compile
  CUDA_VISIBLE_DEVICES=0 run a_single_fused_compiled_2 300 $S --pair a --strategy single --loss fused --compile
  ;;
one)  # one H200 (nvidia-h200): TRL vs ours on pair (a) in one run, the hand loop, and the FSDP2 cycle on one GPU
  run trl_a_1gpu 150 python3 -m benchmarks.scale.trl_gkd --pair a
  run a_single_fused 100 $S --pair a --strategy single --loss fused
  run a_single_fused_compiled 160 $S --pair a --strategy single --loss fused --compile
  run loop_a_1gpu 90 python3 -m benchmarks.scale.llm_loop --pair a
  run b40_fsdp2x1_cycle 220 $S --pair b --teacher-layers 40 --strategy fsdp2 --devices 1 --warmup 1 --steps 3 --cycle /tmp/llm_b
  ;;
trl)
  CUDA_VISIBLE_DEVICES=0 run trl_a_1gpu 300 python3 -m benchmarks.scale.trl_gkd --pair a &
  CUDA_VISIBLE_DEVICES=1 run loop_a_1gpu 240 python3 -m benchmarks.scale.llm_loop --pair a &
  wait
  run trl_a_ddp2 300 torchrun --nproc_per_node 2 -m benchmarks.scale.trl_gkd --pair a
  run loop_a_fsdp2 240 torchrun --nproc_per_node 2 -m benchmarks.scale.llm_loop --pair a --fsdp
  ;;
esac
# At most 8 files come back from the device: keep the rows in one file and the logs in another.
cat "$out"/*.json >>"$out/rows.jsonl" 2>/dev/null
for f in "$out"/*.log; do echo "=== $f"; grep -v -i -E "warn|^\s*$" "$f" | tail -n 40; done >>"$out/logs.txt"
python3 - "$out/rows.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    r = json.loads(line)
    print(f"{r['run'][:72]:72s} tok/s {r['tokens_per_s']:>9.0f}  mfu {r['mfu']:.3f} (all-params {r['mfu_all_params_no_attention']:.3f})  peak {r['peak_gib_per_rank']}")
PY
rm -f "$out"/*.log "$out"/*.json
