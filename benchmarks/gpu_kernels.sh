#!/usr/bin/env bash
# Issue 17's kernel choices (ipcv.algorithm.Kernels: the fused Triton rebuild, the padded distance
# product, the fused Triton neighbour search) and the varlen attention path (torch_flash_varlen)
# measured on a lent GPU in one call of the device tool, at most 8 min 30 s (its step limits; an
# estimate of 5 to 7 minutes on an H200, not yet run), which with the machine's start leaves a few
# minutes of a session's 15 for one more short call:
#
#   run(command="bash benchmarks/gpu_kernels.sh", carry=[".whl"], timeout_s=550)
#
# .whl (git-ignored) holds the small wheels the device image lacks (pydantic and its deps,
# pillow; the image brings torch, transformers and triton). Steps, each with its own time limit:
#   1. correctness of each choice against the torch path, and of the varlen path against sdpa
#      (gpu_checks.py --only kernels,varlen);
#   2. IPCV's steps one by one at 448² and 1344² (ipcv_parts.py);
#   3. the Qwen2-VL-7B tower with each choice against one baseline, eager and as CUDA graphs
#      (vision_encoder.py --kernels), at 1344², 448² and 16 x 448² (the video under the global and
#      the per-frame budget: only the latter can be graphed), kept-query AS blocks, on sdpa;
#   4. the same inputs on torch_flash_varlen (one kernel call per block and no read of the segment
#      lengths in every block, where sdpa has transformers' loop over the segments and three
#      reads), both towers alike, without and with the two fused kernels.
# Everything lands in $OUT: log.txt, raw.txt (with the JSON rows), each step's .json/.md and
# speed_goals.md (issue 17's figures and each kernel choice's verdict from steps 3 and 4); the
# script exits non-zero when a step failed or was cut short.
#
#   DRY=1 bash benchmarks/gpu_kernels.sh   # the same steps on this machine's CPU, small sizes
#   (step 4 there only shows that its arguments parse: the varlen kernel is CUDA only, so every
#   row is an error row; tests/test_torch_flash_varlen.py checks the path with a reference kernel)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_kernels}
mkdir -p "$OUT"
export PYTHONPATH=.
if [ -d .whl ] && ! python -c "import pydantic" 2>/dev/null; then
    python -m pip install -q --no-deps --no-index --target /tmp/wheels .whl/*.whl && export PYTHONPATH=.:/tmp/wheels
fi
if [ "${DRY:-0}" = 1 ]; then
    checks=(--device cpu --size small)
    parts=(--device cpu --tokens 256 --width 64 --warmup 1 --repeats 3)
    tower=(--device cpu --size small --resolutions 224 --videos 4x224 --warmup 1 --repeats 2
           --kernels none,padded_product)
    varlen=(--device cpu --size small --resolutions 224 --videos 4x224 --warmup 1 --repeats 2 --kernels none)
else
    checks=()
    parts=(--device cuda --tokens 9216,1024 --warmup 5 --repeats 30)
    tower=(--device cuda --resolutions 1344,448 --videos 16x448 --warmup 10 --repeats 20 --cuda-graph
           --kernels none,padded_product,fused_rebuild,fused_search,fused_rebuild+fused_search)
    varlen=(--device cuda --resolutions 1344,448 --videos 16x448 --warmup 10 --repeats 20 --cuda-graph
           --kernels none,fused_rebuild+fused_search)
fi
failed=0
step() {  # name, time limit (s), command...: its exit status noted, the next step runs regardless
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc"
    [ "$rc" = 0 ] || failed=1
}
# Step limits add up to 510 s, under the 550 s of the device call; the largest input goes first in
# steps 2 and 3, so a step cut short loses the smallest. The scripts print each result as
# a JSON line as they go: raw.txt keeps those (a step cut short still leaves its rows), log.txt the rest.
{
    date -u
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    python -c "import triton, triton.language as tl; print('triton', triton.__version__, 'tl.topk', hasattr(tl, 'topk'))" \
        || echo "no triton: the fused kernels are not measured"
    step "1. correctness of the kernel choices and of the varlen path" 120 python benchmarks/gpu_checks.py \
        --only kernels,varlen "${checks[@]}"
    step "2. IPCV's steps" 90 python benchmarks/ipcv_parts.py "${parts[@]}" --out "$OUT/ipcv_parts"
    step "3. the tower with each kernel choice" 190 python benchmarks/vision_encoder.py --dtype bfloat16 \
        --as-queries kept --attn sdpa --budget global,per_image "${tower[@]}" --out "$OUT/vision_kernels"
    step "4. the tower on the varlen path" 110 python benchmarks/vision_encoder.py --dtype bfloat16 \
        --as-queries kept --attn torch_flash_varlen --budget global,per_image "${varlen[@]}" --out "$OUT/vision_varlen"
    echo "== issue 17's figures and the kernel choices' verdicts (benchmarks/speed_goals.py)"
    found=()
    for f in "$OUT/vision_kernels.json" "$OUT/vision_varlen.json"; do [ -f "$f" ] && found+=("$f"); done
    [ "${#found[@]}" -gt 0 ] && python benchmarks/speed_goals.py "${found[@]}" | tee "$OUT/speed_goals.md"
    date -u
    exit $failed
} 2>&1 | tee "$OUT/raw.txt" | grep --line-buffered -v '^{' | tee "$OUT/log.txt"
