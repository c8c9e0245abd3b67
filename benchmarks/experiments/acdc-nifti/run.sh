#!/bin/bash
# The NIfTI path on real ACDC scans: predict label volumes with each checkpoint given, both ways back to
# the scan's grid, and score them in mm.  bash run.sh OUT CKPT [CKPT ...]
set -euo pipefail
out=$1; shift
here=$(dirname "$0")
[ -d "$out/scans" ] || python "$here/write_nifti.py" ../shared/data/ACDC "$out/scans"
for ckpt in "$@"; do
  tag=$(basename "$(dirname "$ckpt")")
  for r in logits nearest; do
    start=$(date +%s.%N)
    OMP_NUM_THREADS=1 python -m cycleseg.predict "$ckpt" "$out/scans" --out "$out/$tag/$r" --resample $r \
        --intensity minmax --device cpu --no-progress --overwrite
    echo "$tag $r predict seconds: $(echo "$(date +%s.%N) - $start" | bc)"
    python -m cycleseg.metrics "$out/$tag/$r" "$out/scans" --classes background RV Myo LV --out "$out/$tag/scores-$r" \
        --overwrite > "$out/$tag/scores-$r.txt"
    sed -n 3,6p "$out/$tag/scores-$r.txt"
  done
done
