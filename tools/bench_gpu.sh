#!/usr/bin/env bash
# GPU benchmark suite (issue 13): the ViT-H/14 @224 I-JEPA training step (recipes/image_vith14_in1k.yaml,
# synthetic data, bf16) over compile on/off, ZeRO 0/2/3, activation checkpointing on/off and a
# micro-batch sweep, one `jepa bench train` per setting on every GPU of the machine.
# Writes OUT/<setting>.json and OUT/table.md (img/s, MFU against the table peak, peak memory).
#
#   bash tools/bench_gpu.sh [OUT=bench-gpu] [GPUS=all]       e.g. STEPS=10 bash tools/bench_gpu.sh out 1
#
# A setting that runs out of memory or fails is reported in the table (its log is OUT/<setting>.log),
# and the sweep goes on. Not run yet: no GPU was lent to the session that wrote it.
set -uo pipefail
OUT=${1:-bench-gpu}
GPUS=${2:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}
RECIPE=${RECIPE:-recipes/image_vith14_in1k.yaml}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
MICRO=${MICRO:-"32 64 128"}
mkdir -p "$OUT"
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench_gpu.sh: no CUDA GPU here")' || exit 2

run() {  # name, then --set overrides
  local name=$1; shift
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  echo "== $name" >&2
  torchrun --standalone --nproc_per_node="$GPUS" -m jepa.cli bench train "$RECIPE" "${sets[@]}" \
    --set run_dir="$OUT/runs/$name" --steps "$STEPS" --warmup "$WARMUP" --json "$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1 || echo "{\"setting\": \"$name\", \"error\": \"$(tail -1 "$OUT/$name.log" | tr -d '"\\' | cut -c1-160)\"}" > "$OUT/$name.json"
}

for mb in $MICRO; do
  gb=$((mb * GPUS))
  for zero in 0 2 3; do
    for compile in false true; do
      for ckpt in false true; do
        run "mb${mb}-zero${zero}-compile_${compile}-ckpt_${ckpt}" data.global_batch_size=$gb engine.grad_accum_steps=1 \
          engine.precision=bf16 engine.zero_stage=$zero engine.compile=$compile engine.activation_checkpointing=$ckpt \
          data.num_workers=0
      done
    done
  done
done
python tools/bench_table.py "$OUT" > "$OUT/table.md"
cat "$OUT/table.md"
