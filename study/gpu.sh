#!/usr/bin/env bash
# The study's remaining runs on one lent GPU, in one call (docs/study/protocol.md, "Where it
# runs"), then the ViT-B/16 step benchmark (MFU goal 55%). Run from the repository root with
# the project's venv installed on the device machine (`make setup`); results land under
# docs/study/ and $OUT. Usage: study/gpu.sh [WORKERS] [PRIORITY] [CELLS]
# CELLS: the cells to take (default all: a,b,c,d,e); cell (a) belongs to the study's commit
# 8115426 and cells b-e to a later one (docs/study/README.md), so a tree at a later commit
# passes b,c,d,e. PRIORITY: the last priority taken (99: every cell's last, 27).
set -euo pipefail
workers=${1:-8}
priority=${2:-99}
cells=${3:-a,b,c,d,e}
out=${OUT:-runs/gpu_out}
mkdir -p "$out"
# Several JAX processes share the one GPU: no process preallocates most of its memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.1
timeout 420 .venv/bin/python -m study.run --config configs/study/converged.py \
  --workdir runs/study_gpu --config.workers="$workers" --config.only_priority="$priority" \
  --config.cells="$cells" \
  > "$out/study.log" 2>&1 || echo "study: stopped with status $? (resumable)" >> "$out/study.log"
cp runs/study_gpu/worker*.log "$out/" 2>/dev/null || true
unset XLA_PYTHON_CLIENT_MEM_FRACTION
timeout 150 .venv/bin/python -m benchmarks.train_step --device gpu --shapes=B/16-224 --batch=512 --variants=bf16 \
  --json="$out/gpu_b16_mfu.json" > "$out/bench.log" 2>&1 || true
# The figures of cell (e) and the final weights it read from runs/study_gpu travel too.
tar czf "$out/study_results.tgz" docs/study/results docs/study/backbones \
  $(test -d docs/study/figures && echo docs/study/figures)
