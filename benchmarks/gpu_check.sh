#!/usr/bin/env bash
# GPU check of the fused ops, in one call on a machine with a GPU (torch 2.11 / triton 3.6 image):
#   1. the op tests on CUDA tensors (Triton kernels against the fp64 reference, opcheck, compile),
#   2. the device's copy bandwidth,
#   3. the op benchmarks (reference and fused eager first, then both under torch.compile),
# then a short table last. Sized to finish well under 8 minutes. Writes under $OUT (or /tmp) if set.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/cycleseg-gpu}
mkdir -p "$out"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" || exit 1
# The image has every dependency; install only cycleseg itself (no network: no build isolation).
pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
# -k "not cpp": the C++ CPU kernels' gradcheck would spend a minute compiling them here.
timeout 300 python -m pytest -q -p no:warnings -k "not cpp" tests/test_softmax_cross_entropy.py \
  tests/test_instance_norm_relu.py tests/test_lsgan_loss.py 2>&1 | tee "$out/gpu_tests.log" | tail -5
copy=$(python - <<'PY'
import torch
x = torch.empty(2 ** 30 // 4, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize(); s.record()
for _ in range(20): y.copy_(x)
e.record(); torch.cuda.synchronize()
print(f"{2 * x.numel() * 4 * 20 / (s.elapsed_time(e) / 1e3) / 1e9:.0f}")
PY
)
echo "device copy bandwidth (read + write): $copy GB/s"
ops="benchmarks/bench_softmax_cross_entropy.py benchmarks/bench_instance_norm_relu.py benchmarks/bench_lsgan_loss.py"
# Eager variants first (seconds); then the compiled ones (Inductor compiles each: minutes), each its own JSON.
timeout 150 python -m pytest -q -p no:warnings $ops -k "not compiled" --benchmark-json "$out/gpu_eager.json" \
  >"$out/gpu_eager.log" 2>&1 || echo "eager op benchmarks did not finish (see gpu_eager.log)"
timeout 240 python -m pytest -q -p no:warnings $ops -k "compiled" --benchmark-json "$out/gpu_compiled.json" \
  >"$out/gpu_compiled.log" 2>&1 || echo "compiled op benchmarks did not finish (see gpu_compiled.log)"
for f in "$out/gpu_eager.json" "$out/gpu_compiled.json"; do
  [ -f "$f" ] && python benchmarks/report.py "$f" --copy-gbs "$copy" | tee -a "$out/gpu_table.md"
done
