#!/usr/bin/env bash
# Scale check on a 16-core machine (the device machine this project is sometimes lent):
# every precision at terabyte-small / batch 2048 / 16 threads, then the launcher layouts
# 4 x 4 cores (latency), 1 x 16 and 4 x 4 (throughput); on an AMX host also the amx_* plans'
# kernels against their torch path and oneDNN's AMX kernels. Results go to $OUT (flat files).
# Usage: OUT=/some/dir bash benchmarks/device_scale.sh
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
{
  date -u; nproc; lscpu | grep -E 'Model name|Socket|NUMA|Thread|Core'
  grep -o -w 'amx_tile\|amx_bf16\|amx_int8\|avx512_vnni\|avx512_bf16' /proc/cpuinfo | sort | uniq -c
  $PY -c 'import torch; print("torch", torch.__version__)'
  command -v numactl || echo "no numactl"
} 2>&1 | tee "$OUT/machine.txt"

$PY benchmarks/precisions.py --preset terabyte-small --batch-size 2048 --steps 30 \
  --warmup-steps 3 --threads 16 --out "$OUT/precisions.json" 2>&1 | tail -12

if grep -qw amx_tile /proc/cpuinfo; then
  # The amx_* plans' C kernels (chosen on 2 cores of an AMX Xeon) at 16 cores: the fused
  # interaction against their torch path (AMX bmm), and the one-call small-batch limits against
  # oneDNN on AMX (native.SMALL_AMX_*_ROWS_PER_THREAD, SMALL_AMX_TILES_ROWS_PER_THREAD). Same
  # cache: the weights are prepared once.
  for fused in 1 0; do
    DLRM_BENCH_FUSED=$fused $PY benchmarks/precisions.py --preset terabyte-small \
      --precisions amx_int8,amx_bfloat16,amx_bfloat32 --batch-size 2048 --steps 30 \
      --warmup-steps 3 --threads 2 --out "$OUT/precisions-amx-2t-fused$fused.json" 2>&1 | tail -5
  done
  $PY benchmarks/small_batch.py --precisions amx_int8,amx_bfloat16,amx_bfloat32 --threads 1,2 \
    --batches 1,16,32,64,128,512 --repeats 3 --cache-dir /tmp/dlrm-small-cache \
    --out "$OUT/small-batch-amx.json" 2>&1 | tail -30
fi

layout() {  # name, then launch arguments
  local name=$1; shift
  local dir=/tmp/dlrm-runs/$name
  rm -rf "$dir"
  $PY -m dlrm_bench launch --output "$dir" --preset terabyte-small "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $?"
  $PY -m dlrm_bench kpi "$dir" --output "$dir/results.jsonl" 2>&1 | tee -a "$OUT/$name.log" | head -20
  cp "$dir/host_result.json" "$OUT/$name-host_result.json" 2>/dev/null
}
layout latency-4x4 --mode latency --precision amx_int8 --instances 4 --cores-per-instance 4 \
  --batch-size 1 --steps 2000 --warmup-steps 200
layout throughput-1x16 --mode throughput --precision amx_int8 --instances 1 \
  --cores-per-instance 16 --batch-size 2048 --steps 40 --warmup-steps 4
layout throughput-4x4 --mode throughput --precision amx_int8 --instances 4 \
  --cores-per-instance 4 --batch-size 2048 --steps 40 --warmup-steps 4 --weight-sharing
