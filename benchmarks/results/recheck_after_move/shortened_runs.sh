#!/bin/bash
# The pre-move scripts: git archive 9874be5^ benchmarks | tar -x -C /tmp/oldbench
. /work/main/.venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/work/wt/bench
cd /tmp/eq
G="--seeds 1 --teacher-steps 20 --student-steps 10 --max-new-tokens 8"
A="--seeds 1 --teacher-steps 20 --sft-steps 10 --steps 10 --max-new-tokens 8"
S="--teacher-steps 20 --epochs 1"
T="--seeds 1 --teacher-epochs 1 --student-epochs 1"
for side in old new; do
  if [ $side = old ]; then P="python /tmp/oldbench/benchmarks/"; E=".py"; else P="python -m benchmarks.quality."; E=""; fi
  ${P}generation_kd$E $G > gen_$side.txt 2>&1
  ${P}onpolicy_after_sft$E $A > sft_$side.txt 2>&1
  ${P}onpolicy_from_scratch$E $S > scratch_$side.txt 2>&1
  ${P}text_kd_vs_scratch$E $T > text_$side.txt 2>&1
done
echo DONE
