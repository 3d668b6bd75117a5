#!/usr/bin/env bash
# The GPU numbers and checks in one run (about 6 minutes on one H100/H200):
#
#   bash bench/gpu_check.sh            # needs the repository, a CUDA GPU, the pip dependencies
#   bash bench/gpu_check.sh --candidates   # then the candidate rows too (+ about 4-7 minutes)
#   bash bench/gpu_check.sh --pending      # only what no GPU has measured yet (see below)
#
# Writes bench/results/ (or $QDGS_BENCH_RESULTS):
#   iteration_gpu.csv   ms per paper-scale CMA-MAEGA iteration (StyleGAN2-256 + ViT-B/32,
#                       50x25x5x25 archive, batch 4): eager, CUDA graphs, CUDA graphs + TF32
#                       matmuls, each in both vmapped jacobian modes, each row split into the
#                       jacobian call, the values call and the rest (pyribs, logging); last,
#                       the host floor (the same search around two tiny networks)
#   training_gpu.csv    RecognitionTrainer images/s (IR-101, batch 64 fp16/bf16, 256 bf16)
#                       next to a bare loop with the batch already on the GPU
#   scoring_gpu.csv     solutions/s with jacobians, every mode, batch 1..64, vs the released scheme
#   components_gpu.csv  ms per forward/backward (and 5 vmapped backward passes) of
#                       StyleGAN2-256 and ViT-B/32 (open_clip vs packed attention)
#   loader_gpu.csv      images/s of the streaming training sets alone (0-8 workers)
#   augment_gpu.csv     images/s of AdaFace's augmentations alone, both styles, p 0.2 and 1
#   profile_gpu.txt     operator tables of one eager fused evaluation, batch 1 and 4
#   device_tests_gpu.csv  tests/test_devices.py (incl. CUDA graphs = eager, packed attention =
#                       open_clip's, TF32 and float16/bfloat16 autocast close to fp32) and
#                       tests/test_paper_mini.py (the four notebooks, paper architectures)
# Only with --candidates (minutes of torch.compile): bench/compile_check.py (printed: each
# compiled piece's jacobian against eager), then the candidates for a faster iteration
# (an fp32 baseline row on the same card, float16/bfloat16 autocast, SDPA math backend,
# replicated, func compiled (values and the whole jacobian; also + TF32 matmuls), replicated
# + compile under float16, replicated + compile; each row is written as it finishes), then
# the cuDNN autotuner in a process of its own (its plan cache would otherwise mix with the
# other rows'),
#   python3 bench/run.py --only iteration_candidates   -> iteration_candidates_gpu.csv
#   python3 bench/run.py --only iteration_candidates --candidates cudnn_benchmark
#                                          -> iteration_candidates_cudnn_benchmark_gpu.csv
# --pending, alone (sized for one 10-minute call on a lent machine, each step with its own
# time limit): the candidate rows that decide issue 14's 15 ms goal and have never run on a
# GPU in their current form (deterministic kernels, the paper profile's w+ search, then func
# compiled with and without TF32 matmuls, each next to an fp32 baseline row of the same
# process), the CUDA tests never run on a GPU (compiled static calls, bitwise-reproducible
# deterministic searches, StyleGAN3 scored in a CUDA graph), then
# bench/compile_check.py (where a compiled row fails), then the augmentations alone.
# Random weights throughout: throughput depends on the architecture, not on the values.
# Every row names its source: the `device`, `torch`, `cuda`, `malloc` and `run` columns
# (`run`: $QDGS_BENCH_RUN, by default this script's start in UTC); the log says which
# function of bench/run.py made each file.
set -u -o pipefail
candidates=0
pending=0
for arg in "$@"; do
    case $arg in
        --candidates) candidates=1 ;;
        --pending) pending=1 ;;
        *) echo "usage: bash bench/gpu_check.sh [--candidates | --pending]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
# the project's .venv where there is one (make setup), else the python3 on PATH
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
echo "python: $PY ($($PY -c 'import sys; print(sys.version.split()[0])' 2>&1))"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg
RESULTS=${QDGS_BENCH_RESULTS:-bench/results}
export QDGS_BENCH_RESULTS=$RESULTS
export QDGS_BENCH_RUN=${QDGS_BENCH_RUN:-$(date -u +%Y-%m-%dT%H:%MZ)}
mkdir -p "$RESULTS"
echo "run $QDGS_BENCH_RUN"

$PY - <<'EOF' || exit 1
import torch
assert torch.cuda.is_available(), "bench/gpu_check.sh needs a CUDA GPU (torch sees none)"
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}")
EOF
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null

failed=""
step() {  # step NAME COMMAND...: run, time, remember failures, go on
    local name=$1 t0=$SECONDS
    shift
    echo "== $(date +%T) $name: $*"
    "$@" || failed="$failed $name"
    echo "== $name: $((SECONDS - t0)) s"
}

if [ "$pending" = 1 ]; then
    # each step under its own time limit (one 10-minute call in all; rows are written as
    # they finish), the cheap rows first. Deterministic kernels run in processes that set
    # cuBLAS's workspace before their first matmul (older torch checks it then); each process
    # times its own baseline row, so every row is compared under the same settings
    step "pending rows" timeout 170 env CUBLAS_WORKSPACE_CONFIG=:4096:8 $PY bench/run.py \
        --only iteration_candidates --candidates baseline deterministic paper_profile
    step "pending compiled rows" timeout 190 $PY bench/run.py --only iteration_candidates \
        --candidates baseline func+compile func+compile+tf32_matmul
    step "pending CUDA tests" timeout 120 env CUBLAS_WORKSPACE_CONFIG=:4096:8 $PY -m pytest \
        tests/test_devices.py -p no:cacheprovider -q -rfEsP -k "compiled_static_calls_match_eager \
or deterministic_searches_reproduce or released_settings or uint8_images_scale \
or released_augmentations or stylegan3_scores"
    step "compile check" timeout 60 $PY bench/compile_check.py
    step "augmentations" timeout 20 $PY bench/run.py --only augment
    [ -z "$failed" ] || { echo "FAILED:$failed"; exit 1; }
    echo "all pending GPU checks ran; results in $RESULTS"
    exit 0
fi

# bench/run.py: bench_iteration, bench_training (+ _plain_loop_ips) first: the goals
step "iteration+training" $PY bench/run.py --only iteration training
# bench_scoring, bench_components, bench_loader, profile_scoring
step "scoring+components+loader+augment+profile" $PY bench/run.py --only scoring components \
    loader augment profile
# correctness on CUDA: the notebooks' library steps, CUDA graphs vs eager, the four notebooks
# under paper-mini (StyleGAN2-256 + ViT-B/32 + IR-101 assets in the real file formats)
step "device tests" $PY -m pytest tests/test_devices.py tests/test_paper_mini.py \
    -p no:cacheprovider -q -rs -o junit_logging=system-out \
    --junitxml="$RESULTS/device_tests_gpu.xml"
$PY - "$RESULTS" <<'EOF'
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import torch

out = Path(sys.argv[1])
rows = []
for case in ET.parse(out / "device_tests_gpu.xml").iter("testcase"):
    kids = {child.tag for child in case}
    outcome = next((k for k in ("failure", "error", "skipped") if k in kids), "passed")
    printed = " | ".join(line.strip() for e in case.iter("system-out")
                         for line in (e.text or "").splitlines()
                         if line.strip() and "Captured Out" not in line)
    rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                 "seconds": float(case.get("time", 0)), "printed": printed[:1000],
                 "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "run": os.environ.get("QDGS_BENCH_RUN", "")})
    if printed and outcome == "passed":  # what a test measured (e.g. TF32's deviation)
        print(f"{case.get('name')}: {printed[:1000]}")
pd.DataFrame(rows).to_csv(out / "device_tests_gpu.csv", index=False)
(out / "device_tests_gpu.xml").unlink()
print(pd.DataFrame(rows).outcome.value_counts().to_string())
EOF
[ $? = 0 ] || failed="$failed device-tests-table"

if [ "$candidates" = 1 ]; then  # bench_iteration(candidates=...)
    # torch.compile on CUDA needs Triton, which builds its launchers with a C compiler
    $PY -c "import triton" 2>/dev/null || echo "WARNING: no triton: the compile rows will fail"
    command -v gcc >/dev/null || command -v cc >/dev/null || \
        echo "WARNING: no C compiler: the compile rows will fail"
    # compiled jacobians against eager, piece by piece (torch 2.11 once gave zero ones)
    step "compile check" $PY bench/compile_check.py
    step "iteration candidates" $PY bench/run.py --only iteration_candidates
    step "cudnn autotuner" $PY bench/run.py --only iteration_candidates \
        --candidates cudnn_benchmark
fi

if [ -n "$failed" ]; then
    echo "FAILED:$failed"
    exit 1
fi
echo "all GPU checks ran; results in $RESULTS"
