#!/usr/bin/env bash
# Issue #26's comparison grid at 128x128 / 2000 steps (UNet, SGD, SSL4MIS augmentation; 33 runs) on a lent
# GPU in one device call: the grid's own command with --jobs, the runs sharing the GPU (through CUDA MPS
# where the machine starts it, so that their small kernels overlap), torch.compile off (a compile per run
# would cost about a minute of each run's share). Prepare here, once (the ACDC splits as training
# converts them at 128x128, carried because ../shared does not travel):
#
#   python -c "from cycleseg.data import acdc; print(acdc.cached_splits('../shared/data/ACDC', 128))"
#   mkdir -p .gpudata/acdc128 && cp ~/.cache/cycleseg/acdc-v4-*-128x128/{train,val}.h5 .gpudata/acdc128/
#   device run: bash benchmarks/gpu_grid.sh   (carry .gpudata; LIMIT seconds for the grid, JOBS at a time)
#
# The run of 2026-12-04 (benchmarks/experiments/acdc-unet-128-gpu/) gave no --batch-size, and on a GPU the
# preset resolves to `paper`: batch 5 + 5, not the authors' 8 + 8. This script now pins --batch-size 8 (the
# authors' budget; what the CPU runs of the command had) and writes to acdc-unet-128-b8-gpu.
#
# Every run's small files (config, metrics, curves, eval-final) and the grid's results are packed into
# $OUT/grid.tgz every 20 s and at the end (checkpoints stay behind: too large to come back).
set -uo pipefail
cd "$(dirname "$0")/.."
final=${OUT:-/tmp/cycleseg-gpu-out}
grid=/tmp/acdc-unet-128-b8-gpu
mkdir -p "$final"
pack() { tar czf "$final/grid.tgz.part" --exclude='*.pt' --exclude='samples' -C /tmp acdc-unet-128-b8-gpu 2>/dev/null &&
         mv "$final/grid.tgz.part" "$final/grid.tgz"; true; }
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
python -m pip install -q --no-deps --no-build-isolation -e . >"$final/install.log" 2>&1 || { echo "install failed"; tail "$final/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader | tee "$final/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$final/gpu.txt"

# CUDA MPS lets the runs' kernels share the GPU at once instead of by time slices; kept only if a CUDA
# program runs under it.
mps=off
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
  if timeout 60 python -c "import torch; x = torch.ones(4, device='cuda'); assert float(x.sum()) == 4"; then
    mps=on
  else
    echo quit | nvidia-cuda-mps-control; sleep 2
  fi
fi
echo "MPS $mps" | tee -a "$final/gpu.txt"

( while sleep 20; do pack; done ) & packer=$!
start=$SECONDS
timeout -s TERM "${LIMIT:-540}" python -m cycleseg.experiments --grid comparison --data "$PWD/.gpudata/acdc128" \
    --fractions 0.1 0.2 --methods partial meanteacher fixmatch semi --seeds 0 1 2 --out "$grid" --jobs "${JOBS:-12}" \
    --method-options fixmatch "--lr 0.0025" -- --image-size 128 --batch-size 8 --steps 2000 --eval-every 200 \
    --generator unet --optimizer sgd --augment ssl4mis --dice 1 --lr 0.005 --mt-consistency 0.2 \
    --fm-weight 2 --lambda4 0.1 --compile off 2>&1 | tee "$final/grid.log" | grep -v '^\[.*-seed[0-9]*\] \(step\|  \|{\|fast path\|note\)'
echo "== grid: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s (MPS $mps)" | tee -a "$final/grid.log"
kill $packer 2>/dev/null
pack
