#!/usr/bin/env bash
# The field's own code as reference anchors at issue #26's budget, on a lent GPU in one device call: SSL4MIS's
# labeled-only UNet and Mean Teacher (HiLab-git/SSL4MIS 06df604) and UniMatch's ACDC FixMatch (LiheYoung/UniMatch
# 0324f3d, its medical unimatch.py without the second strong view and the feature perturbation), 128x128,
# 2000 iterations, 10 % labels (the first 7 patients), seeds 0 1 2: nine runs at once on the one GPU (CUDA MPS
# where the machine starts it), each run's final model scored SSL4MIS's way (val_2D.test_single_volume:
# Dice and HD95) and cycleseg's way (evaluate.evaluate_volumes). What was changed in their code, and why:
# benchmarks/experiments/authors-code.md (the 64x64 CPU run of 2026-12-02 and this one).
#
# None of their code is committed: it travels in the ignored folder .anchors/ (add `/.anchors/` to
# .git/info/exclude), rebuilt from committed files (benchmarks/anchors/: our scripts and the diffs) by
#   bash benchmarks/anchors/prepare.sh      # after fetching github:HiLab-git/SSL4MIS, github:LiheYoung/UniMatch; ~2 min
# which writes:
#   .anchors/SSL4MIS/code/      train_fully_supervised_2D.py, train_mean_teacher_2D.py, val_2D.py,
#                               dataloaders/dataset.py, networks/unet.py, utils/{losses,metrics,ramps}.py,
#                               tv_transforms.py (torchvision's Compose + ColorJitter); their LICENSE
#   .anchors/UniMatch/more-scenarios/medical/   fixmatch.py, configs/acdc.yaml, dataset/{acdc,transform}.py,
#                               model/unet.py, util/{utils,classes}.py, splits/acdc/{val.txt,7/*}, tv_transforms.py
#   .anchors/medpy/             medpy's __init__.py, metric/ and core/ (pure Python; SSL4MIS's HD95 / Dice)
#   .anchors/score.py           both scorings of one final model
#   .anchors/acdc_pack.py       lossless pack / unpack of ../shared/data/ACDC
#   .anchors/acdc.npz, .anchors/acdc.sha256   the pack (~45 MiB; checked np.array_equal against the source) and
#                               the source arrays' sha256 (unpack checks it)
#   .anchors/cpu_shim/          sitecustomize.py: .cuda() as a no-op, for the CPU dry run only
#   .anchors/patches/           the diffs against their files as fetched
# (the code from their two commits; the changes as authors-code.md lists them).
#
#   device run: bash benchmarks/gpu_anchors.sh      carry [".anchors"] (nothing else: ~45 MiB), timeout_s 480
#   CPU dry run (here): ANCHOR_DEVICE=cpu ANCHOR_INSTALL=0 ANCHOR_ITERS=4 ANCHOR_VAL_EVERY=2 ANCHOR_SEEDS=0 \
#                       OUT=/tmp/anchors-dry nice bash benchmarks/gpu_anchors.sh
#
# Environment (defaults): ANCHOR_ITERS (2000), ANCHOR_SEEDS ("0 1 2"), ANCHOR_METHODS ("fs mt fm": SSL4MIS
# labeled-only, Mean Teacher, UniMatch FixMatch), ANCHOR_VAL_EVERY (1000: SSL4MIS's in-run
# validation, medpy HD95 on the CPU; UniMatch's own every 200 on the GPU), ANCHOR_SSL_WORKERS (2 loader workers
# per SSL4MIS run; UniMatch keeps its own 1 per loader), ANCHOR_DEADLINE (410: seconds after the start by which
# every run is trained and scored; each training gets what is left less ANCHOR_SCORE_LIMIT (60) and is stopped
# there, reported unfinished), ANCHOR_DEVICE (cuda; cpu for the dry run), ANCHOR_INSTALL (1: pip install -e .),
# ANCHOR_SLICES (ssl4mis; cycleseg: their training slices replaced by cycleseg's 128x128 preparation,
# anchors/cycleseg_slices.py, checked against ANCHOR_SLICES_CHECK = a cycleseg train.h5 if given).
# Comes back: $OUT/anchors.json (settings, per run: status, wall times, both scorings, the in-run validation
# curve; per method mean +- sample std over the finished seeds) and $OUT/anchors.tgz (every run's log and JSON,
# the GPU line, the install log), packed every 30 s and at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
A=$repo/.anchors
final=${OUT:-/tmp/anchors-out}
W=${ANCHOR_WORK:-/tmp/anchors}
R=$W/results
ITERS=${ANCHOR_ITERS:-2000}
SIZE=128
SEEDS=${ANCHOR_SEEDS:-0 1 2}
METHODS=${ANCHOR_METHODS:-fs mt fm}
VAL_EVERY=${ANCHOR_VAL_EVERY:-1000}
SSL_WORKERS=${ANCHOR_SSL_WORKERS:-2}
DEADLINE=${ANCHOR_DEADLINE:-410}
SCORE_LIMIT=${ANCHOR_SCORE_LIMIT:-60}
export ANCHOR_DEVICE=${ANCHOR_DEVICE:-cuda}
CSTART=$(( (ITERS * 1000 + 15000) / 30000 ))     # SSL4MIS's consistency start, 1000 of 30000 iterations
EVAL_EVERY=$(( ITERS < 200 ? ITERS : 200 ))       # UniMatch's evaluation interval (200 as in the 64x64 run)

mkdir -p "$final"
[ -f "$A/acdc.npz" ] || { echo "no $A/acdc.npz: run bash benchmarks/anchors/prepare.sh first (see the header)"; exit 1; }
rm -rf "$W" && mkdir -p "$R"
pack() { tar czf "$final/anchors.tgz.part" -C "$W" results 2>/dev/null && mv "$final/anchors.tgz.part" "$final/anchors.tgz"; true; }
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
echo "start $(date -u +%FT%TZ) iters $ITERS size $SIZE seeds [$SEEDS] device $ANCHOR_DEVICE" | tee "$R/setup.txt"

if [ "${ANCHOR_INSTALL:-1}" = 1 ]; then
  python -m pip install -q --no-deps --no-build-isolation -e . >"$R/install.log" 2>&1 ||
    { echo "install failed"; tail "$R/install.log"; pack; exit 1; }
fi
export PYTHONPATH=$W${PYTHONPATH:+:$PYTHONPATH}   # medpy's metric module
if [ "$ANCHOR_DEVICE" = cpu ]; then
  export PYTHONPATH=$A/cpu_shim:$repo:$PYTHONPATH  # the dry run: .cuda() a no-op, cycleseg from the tree
else
  nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader 2>&1 | tee -a "$R/setup.txt"
fi
python -c "import torch, numpy, scipy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__)" | tee -a "$R/setup.txt"

# their code, the medpy module and the scorer to a scratch folder (their runs write beside their code); the data
# rebuilt there in SSL4MIS's layout, checked against the source's sha256
cp -r "$A/SSL4MIS" "$A/UniMatch" "$A/medpy" "$A/score.py" "$A/acdc_pack.py" "$W/"
python "$W/acdc_pack.py" unpack "$A/acdc.npz" "$W/ACDC" 2>&1 | tee -a "$R/setup.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "unpack failed"; pack; exit 1; }
SLICES=${ANCHOR_SLICES:-ssl4mis}   # cycleseg: their training slices replaced by our converter's (the data swap)
if [ "$SLICES" = cycleseg ]; then
  python "$repo/benchmarks/anchors/cycleseg_slices.py" "$W/ACDC" $SIZE ${ANCHOR_SLICES_CHECK:+--check "$ANCHOR_SLICES_CHECK"} 2>&1 | tee -a "$R/setup.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "slice swap failed"; pack; exit 1; }
fi
UM=$W/UniMatch/more-scenarios/medical
sed -e "s#^data_root:.*#data_root: $W/ACDC#" -e "s#^max_iters:.*#max_iters: $ITERS#" -e "s#^eval_every:.*#eval_every: $EVAL_EVERY#" \
    -e "s#^crop_size:.*#crop_size: $SIZE#" "$UM/configs/acdc.yaml" > "$UM/configs/acdc_anchor.yaml"

# CUDA MPS: the nine runs' kernels share the GPU at once instead of by time slices; kept only if CUDA runs under it
mps=off
if [ "$ANCHOR_DEVICE" != cpu ] && command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
  if timeout 60 python -c "import torch; x = torch.ones(4, device='cuda'); assert float(x.sum()) == 4"; then
    mps=on
  else
    echo quit | nvidia-cuda-mps-control; sleep 2
  fi
fi
echo "MPS $mps; setup took $SECONDS s" | tee -a "$R/setup.txt"

# one run: train (stopped at its limit), then score its last-iteration model; its log and JSON in $R
run() {   # name method seed code checkpoint folder command...
  local name=$1 method=$2 seed=$3 code=$4 ckpt=$5 dir=$6; shift 6
  local log=$R/$name.log limit=$(( DEADLINE - SECONDS - SCORE_LIMIT - 5 ))
  local t0 t1 t2 rc src=-1
  [ $limit -lt 30 ] && limit=30
  echo "== $name: $* (limit $limit s)" >"$log"
  t0=$(date +%s.%N)
  ( cd "$dir" && exec timeout -k 5 "$limit" "$@" ) >>"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  if [ $rc = 0 ] && [ -f "$ckpt" ]; then
    timeout -k 5 "$SCORE_LIMIT" python "$W/score.py" --code "$code" --ckpt "$ckpt" --data "$W/ACDC" --size $SIZE \
        --out "$R/$name.score.json" >>"$log" 2>&1
    src=$?
  fi
  t2=$(date +%s.%N)
  python - "$R/$name.json" "$name" "$method" "$seed" "$rc" "$src" "$t0" "$t1" "$t2" "$limit" "$log" "$R/$name.score.json" "$ITERS" <<'PY'
import json, re, sys
from pathlib import Path
out, name, method, seed, rc, src, t0, t1, t2, limit, log, score, iters = sys.argv[1:]
text = Path(log).read_text(errors="replace")
its = [int(x) for x in re.findall(r"iteration (\d+) : loss", text)]             # SSL4MIS
its += [int(x) for x in re.findall(r"Evaluation at iteration (\d+)", text)]     # UniMatch
epoch = 0
for line in text.splitlines():                                                  # UniMatch's progress lines:
    if m := re.search(r"Epoch: (\d+),", line):                                  # 1176 // 8 = 147 batches an epoch
        epoch = int(m.group(1))
    elif m := re.search(r"\] Iters: (\d+),", line):
        its.append(epoch * 147 + int(m.group(1)) + 1)
curve = [{"iter": int(i), "mean_dice": float(d), "mean_hd95": float(h)}         # SSL4MIS (its scoring)
         for i, d, h in re.findall(r"iteration (\d+) : mean_dice : ([\d.eE+-]+) mean_hd95 : ([\d.eE+-]+)", text)]
curve += [{"iter": int(i), "mean_dice": float(d) / 100}                         # UniMatch (its own Dice)
          for i, d in re.findall(r"Evaluation at iteration (\d+)\n(?:.*\n)*?.*MeanDice: ([\d.]+)", text)]
r = {"run": name, "method": method, "seed": int(seed), "train_rc": int(rc), "score_rc": int(src),
     "train_s": round(float(t1) - float(t0), 1), "score_s": round(float(t2) - float(t1), 1), "train_limit_s": int(limit),
     "last_iteration": max(its, default=0), "iterations": int(iters), "validation_curve": curve}
if Path(score).exists():
    r.update(json.loads(Path(score).read_text()))
r["status"] = ("ok" if Path(score).exists() and int(src) == 0 else
               "unfinished (stopped at its limit)" if int(rc) in (124, 137) else
               "training failed" if int(rc) != 0 else "scoring failed")
Path(out).write_text(json.dumps(r, indent=1))
s, c = r.get("ssl4mis_scoring") or {}, r.get("cycleseg_scoring") or {}
num = lambda v: float("nan") if v is None else v
print(f"{name}: {r['status']}, trained {r['train_s']} s to iteration {r['last_iteration']}, scored in {r['score_s']} s; "
      f"SSL4MIS Dice {num(s.get('mean_dice')):.4f} HD95 {num(s.get('mean_hd95')):.2f}, "
      f"cycleseg Dice {num(c.get('volume_mdice')):.4f}")
PY
}

( while sleep 30; do pack; done ) & packer=$!
start=$SECONDS
SSLC=$W/SSL4MIS/code
has() { case " $METHODS " in *" $1 "*) return 0;; esac; return 1; }
for s in $SEEDS; do
  has fs && run fs_s$s ssl4mis_labeled_only $s ssl4mis "$W/SSL4MIS/model/ACDC/FS_s${s}_7_labeled/unet/iter_$ITERS.pth" "$SSLC" \
      python train_fully_supervised_2D.py --root_path "$W/ACDC" --exp ACDC/FS_s$s --labeled_num 7 --batch_size 8 \
      --max_iterations $ITERS --seed $s --val_every $VAL_EVERY --num_workers $SSL_WORKERS &
  has mt && run mt_s$s ssl4mis_mean_teacher $s ssl4mis "$W/SSL4MIS/model/ACDC/MT_s${s}_7_labeled/unet/iter_$ITERS.pth" "$SSLC" \
      python train_mean_teacher_2D.py --root_path "$W/ACDC" --exp ACDC/MT_s$s --labeled_num 7 --batch_size 16 \
      --labeled_bs 8 --max_iterations $ITERS --consistency_rampup $ITERS --consistency_start $CSTART --seed $s \
      --val_every $VAL_EVERY --num_workers $SSL_WORKERS &
  has fm && run fm_s$s unimatch_fixmatch $s unimatch "$UM/exp/acdc/fixmatch/7_s$s/latest.pth" "$UM" \
      python fixmatch.py --config configs/acdc_anchor.yaml --labeled-id-path splits/acdc/7/labeled.txt \
      --unlabeled-id-path splits/acdc/7/unlabeled.txt --save-path exp/acdc/fixmatch/7_s$s --seed $s &
done
wait $(jobs -p | grep -v "^$packer\$")
echo "== all runs done $((SECONDS - start)) s after their start, $SECONDS s in all (MPS $mps)" | tee -a "$R/setup.txt"
kill $packer 2>/dev/null
[ "$mps" = on ] && { echo quit | nvidia-cuda-mps-control; }

python - "$R" "$final/anchors.json" <<PY
import json, sys
from pathlib import Path
import numpy as np
res, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = [json.loads(p.read_text()) for p in sorted(res.glob("*_s*.json")) if not p.name.endswith(".score.json")]
methods = {}
for r in runs:
    methods.setdefault(r["method"], []).append(r)
summary = {}
for m, rs in methods.items():
    ok = [r for r in rs if r["status"] == "ok"]
    def stat(vals):
        a = np.array(vals, dtype=float)
        return {"mean": round(float(a.mean()), 4), "std": round(float(a.std(ddof=1)), 4) if len(a) > 1 else None,
                "n": len(a)} if len(a) else None
    summary[m] = {"seeds_ok": [r["seed"] for r in ok], "not_ok": {r["run"]: r["status"] for r in rs if r["status"] != "ok"},
                  "ssl4mis_mean_dice": stat([r["ssl4mis_scoring"]["mean_dice"] for r in ok]),
                  "ssl4mis_mean_hd95": stat([r["ssl4mis_scoring"]["mean_hd95"] for r in ok]),
                  "cycleseg_volume_mdice": stat([r["cycleseg_scoring"]["volume_mdice"] for r in ok]),
                  "train_s": [r["train_s"] for r in rs]}
setup = (res / "setup.txt").read_text()
doc = {"settings": {"iterations": $ITERS, "size": $SIZE, "labeled_patients": 7, "seeds": "$SEEDS".split(), "methods": "$METHODS".split(),
                    "mps": "$mps", "device": "$ANCHOR_DEVICE", "ssl4mis_val_every": $VAL_EVERY,
                    "unimatch_eval_every": $EVAL_EVERY, "consistency_start": $CSTART, "ssl_workers": $SSL_WORKERS,
                    "deadline_s": $DEADLINE, "score_limit_s": $SCORE_LIMIT, "total_s": $SECONDS,
                    "training_slices": "$SLICES"},
       "setup": setup.splitlines(), "summary": summary,
       "runs": [{k: v for k, v in r.items() if k not in ("ssl4mis_scoring", "cycleseg_scoring")} |
                {"ssl4mis": {k: r["ssl4mis_scoring"][k] for k in ("mean_dice", "dice", "mean_hd95", "hd95")} if "ssl4mis_scoring" in r else None,
                 "cycleseg": {k: r["cycleseg_scoring"][k] for k in ("volume_mdice", "volume_dice")} if "cycleseg_scoring" in r else None}
                for r in runs]}
out.write_text(json.dumps(doc, indent=1))
for m, s in summary.items():
    f = lambda x: "-" if x is None else f"{x['mean']:.4f} +- {x['std'] if x['std'] is not None else '-'} (n={x['n']})"
    print(f"{m}: SSL4MIS Dice {f(s['ssl4mis_mean_dice'])}, HD95 {f(s['ssl4mis_mean_hd95'])}; "
          f"cycleseg Dice {f(s['cycleseg_volume_mdice'])}; train s {s['train_s']}; not ok {s['not_ok'] or 'none'}")
PY
cp "$final/anchors.json" "$R/" 2>/dev/null
pack
echo "== done in $SECONDS s: $final/anchors.json, $final/anchors.tgz"
