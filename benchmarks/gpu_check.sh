#!/usr/bin/env bash
# The GPU check, sized for the device tool's calls (torch 2.11 / triton 3.6 image, nothing installed):
#
#   bash benchmarks/gpu_check.sh ops    # op tests on CUDA tensors, then the op benchmarks      (~3 min)
#   bash benchmarks/gpu_check.sh train  # python -m cycleseg.train on the GPU, 300 steps            (~1 min)
#   bash benchmarks/gpu_check.sh step   # the whole-step benchmark, one variant at a time         (~5 min)
#   bash benchmarks/gpu_check.sh infer  # G_IS inference: cycleseg's path against PyTorch's        (~1 min)
#   bash benchmarks/gpu_check.sh        # all four (three of them on an H200: 469 s, 2026-11-29)
#
# Every stage has its own time limit and prints its table as soon as it ends. Installs the checkout in
# place first (python -m pip install -e with the Python that runs the tests, no dependencies: the
# image's torch and Triton stay; cycleseg.kernels resolves to kernels/), TRITON_INTERPRET unset, imports
# checked first.
set -uo pipefail
cd "$(dirname "$0")/.."
# Logs and JSON are written to a work folder and packed into $OUT/gpu-check.tgz (with tables.md beside
# it) after every stage: the device tool returns at most 8 files, and a stage killed later loses nothing.
final=${OUT:-/tmp/cycleseg-gpu-out}
out=/tmp/cycleseg-gpu
mkdir -p "$out" "$final"
pack() { tar czf "$final/gpu-check.tgz" -C "$out" . 2>/dev/null; cp "$out"/tables.md "$out"/train_samples.png "$final"/ 2>/dev/null; true; }
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 CYCLESEG_BENCH_QUICK=1
what=${1:-all}
start=$SECONDS
python -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || { echo "install failed"; tail "$out/install.log"; exit 1; }

python - <<'PY' || { echo "preflight failed"; exit 1; }
import torch, triton, pytest, pytest_benchmark
assert torch.cuda.is_available(), "no CUDA device"
print(f"torch {torch.__version__}, triton {triton.__version__}, pytest-benchmark {pytest_benchmark.__version__}, "
      f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
from cycleseg.ops import cuda
from cycleseg.ops.registry import LAUNCHERS
for name, launcher in LAUNCHERS.items():       # every op's Triton launcher imports
    cuda.resolve(name, launcher)
PY
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader | tee "$out/gpu.txt"

stage() {  # stage NAME LIMIT_S COMMAND...: run with a time limit, log to $out/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s, ${SECONDS}s elapsed)"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -3 "$out/$name.log"
  [ $rc -eq 0 ] || echo "!! $name: exit $rc (see $name.log)"
  pack
}

report() {  # report JSON: print the markdown table and keep it
  [ -f "$1" ] && python benchmarks/report.py "$1" | tee -a "$out/tables.md"
}

if [ "$what" = all ] || [ "$what" = ops ]; then
  # Op tests on CUDA tensors (Triton kernels vs fp64 references, NaN, strides, opcheck, compile); the
  # C++ ones (gradcheck, Inductor C++) belong to the CPU suite.
  # each registered op's tests/test_<op>.py and benchmarks/bench_<op>.py (the registry names them)
  op_files() { python -c "from cycleseg.ops import REGISTRY; print(' '.join('$1' % n for n in REGISTRY))"; }
  stage tests 100 python -m pytest -q -n 8 -p no:cacheprovider -k "not cpp" \
    $(op_files tests/test_%s.py) tests/test_ops_device.py
  grep -E "passed|failed|error" "$out/tests.log" | tail -1
  stage ops 130 python -m pytest -q -p no:cacheprovider $(op_files benchmarks/bench_%s.py) \
    --benchmark-json "$out/ops.json"
  report "$out/ops.json"
fi

if [ "$what" = all ] || [ "$what" = train ]; then
  # The real command end to end on the GPU: built-in phantoms, the paper preset's networks, fast path,
  # 300 steps with two validations, checkpoints and pictures (the run folder stays in /tmp).
  rm -rf /tmp/cycleseg-gpu-run
  stage train 110 python -m cycleseg.train --device cuda --steps 300 --eval-every 150 --no-progress \
    --out /tmp/cycleseg-gpu-run
  grep -h '"val' /tmp/cycleseg-gpu-run/metrics.jsonl 2>/dev/null | tail -2 | tee -a "$out/train.log"
  last=$(ls /tmp/cycleseg-gpu-run/samples/*.png 2>/dev/null | tail -1)
  [ -n "$last" ] && cp "$last" "$out/train_samples.png"
fi

if [ "$what" = all ] || [ "$what" = infer ]; then
  # The paper's G_IS at 256x256, batch 8 (CYCLESEG_BENCH_QUICK on a GPU): the inference path against
  # eager fp32, torch.compile and bf16 + channels_last (onnxruntime where the image has it)
  stage infer 90 python -m pytest -q -p no:cacheprovider benchmarks/bench_inference.py --benchmark-json "$out/infer.json"
  report "$out/infer.json"
fi

if [ "$what" = all ] || [ "$what" = step ]; then
  # One variant per process and time limit: a slow compile loses one row, not the table.
  for v in no_fast:45 fast_eager:55 fast:125 pytorch_best:115 pytorch_compiled:100; do
    limit=${v#*:}
    v=${v%:*}
    stage "step_$v" "$limit" python -m pytest -q -p no:cacheprovider "benchmarks/bench_step.py::test_training_step[$v]" \
      --benchmark-json "$out/step_$v.json"
  done
  python - "$out" <<'PY'
import json, sys, glob
out = sys.argv[1]
merged = {"benchmarks": []}
for f in sorted(glob.glob(f"{out}/step_*.json")):
    merged["benchmarks"] += json.load(open(f))["benchmarks"]
json.dump(merged, open(f"{out}/step.json", "w"))
PY
  report "$out/step.json"
fi
pack
echo "== done in $((SECONDS - start)) s"
