#!/bin/bash
# The pre-move scripts: git archive 9874be5^ benchmarks | tar -x -C /tmp/oldbench
. /work/main/.venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/work/wt/bench
cd /tmp/eq
for i in 1 2; do
  python -m benchmarks.speed.teacher_cache --case text --threads 1 --top-k 32 > tc_new_$i.txt 2>&1
  python /tmp/oldbench/benchmarks/teacher_cache.py --case text --threads 1 --top-k 32 > tc_old_$i.txt 2>&1
  python -c "
import torch; torch.set_num_threads(1)
from benchmarks.speed.step_overhead import measure
from benchmarks._lib.step_cases import digits_case
print('new', measure(digits_case(), 40, 10, None, 3))" > so_new_$i.txt 2>&1
  (cd /tmp/oldbench/benchmarks && python -c "
import torch; torch.set_num_threads(1)
from step_overhead import measure, digits_case
print('old', measure(digits_case(), 40, 10, None, 3))") > so_old_$i.txt 2>&1
done
echo DONE
