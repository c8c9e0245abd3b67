#!/usr/bin/env bash
# Rebuilds the ignored folder .anchors/ that benchmarks/gpu_anchors.sh carries to the GPU: the few files of the
# field's code it runs (HiLab-git/SSL4MIS 06df604, LiheYoung/UniMatch 0324f3d, each with its LICENSE), taken
# file by file from the bare git mirrors (`git cat-file`, not `git archive`: the UniMatch mirror lacks some large
# blobs elsewhere in the tree), patched with patches/*.diff (git-style, `git apply`; the new files fixmatch.py
# and tv_transforms.py are in them), medpy's pure-Python __init__.py, core/ and metric/ copied from the installed
# medpy (SSL4MIS's Dice / HD95), our acdc_pack.py, score.py, cpu_shim/ and patches/ copied beside them, and the
# ACDC data packed, checked array by array against the source and digested (~2 min). Fetch the repos first (the
# fetch tool: github:HiLab-git/SSL4MIS, github:LiheYoung/UniMatch, to /work/.mirror/owner+name/).
# The diffs hold our changes to their files (both MIT-licensed; their LICENSE files travel with the code).
#   usage: bash benchmarks/anchors/prepare.sh [OUT (.anchors)] [SSL4MIS_GITDIR] [UNIMATCH_GITDIR]
#   environment: ACDC (../shared/data/ACDC), PYTHON (python), MIRRORS (/work/.mirror)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/.anchors}
data=${ACDC:-$repo/../shared/data/ACDC}
py=${PYTHON:-python}
S_COMMIT=06df6047a59aba9988ced8331998b5957ecb356b
U_COMMIT=0324f3dd4a22128105a5eb135d2586c0bb3cc647

gitdir() {  # $1 owner+name, $2 commit: the first git dir under the mirror folder that holds the commit
  local d
  for d in "${MIRRORS:-/work/.mirror}/$1" "${MIRRORS:-/work/.mirror}/$1"/*; do
    git --git-dir="$d" cat-file -e "$2^{commit}" 2>/dev/null && { echo "$d"; return; }
  done
  echo "no git dir holding $2 under ${MIRRORS:-/work/.mirror}/$1: fetch it first" >&2; exit 1
}
S_GIT=${2:-$(gitdir HiLab-git+SSL4MIS $S_COMMIT)}
U_GIT=${3:-$(gitdir LiheYoung+UniMatch $U_COMMIT)}

take() {  # $1 git dir, $2 commit, $3 destination folder, then the paths
  local g=$1 c=$2 d=$3 p; shift 3
  for p in "$@"; do mkdir -p "$d/$(dirname "$p")"; git --git-dir="$g" cat-file blob "$c:$p" >"$d/$p"; done
}

mkdir -p "$out"
rm -rf "$out/SSL4MIS" "$out/UniMatch" "$out/medpy" "$out/cpu_shim" "$out/patches"
take "$S_GIT" $S_COMMIT "$out/SSL4MIS" LICENSE code/train_fully_supervised_2D.py code/train_mean_teacher_2D.py \
  code/val_2D.py code/dataloaders/dataset.py code/networks/unet.py code/utils/losses.py code/utils/metrics.py \
  code/utils/ramps.py
m=more-scenarios/medical
take "$U_GIT" $U_COMMIT "$out/UniMatch" LICENSE $m/configs/acdc.yaml $m/dataset/acdc.py $m/dataset/transform.py \
  $m/model/unet.py $m/util/utils.py $m/util/classes.py $m/splits/acdc/val.txt $m/splits/acdc/7/labeled.txt \
  $m/splits/acdc/7/unlabeled.txt
apply() {  # git apply in $1 as a plain folder (the ceiling keeps it from reading an enclosing repo such as ours)
  (cd "$1" && GIT_CEILING_DIRECTORIES=$(dirname "$PWD") git apply -p1 --whitespace=nowarn "$2")
}
apply "$out/SSL4MIS" "$here/patches/SSL4MIS-06df604.diff"
apply "$out/UniMatch" "$here/patches/UniMatch-0324f3d.diff"

medpy=$("$py" -c "import medpy, os; print(os.path.dirname(medpy.__file__))")
"$py" -c "import importlib.metadata as m; v = m.version('medpy'); v == '0.5.2' or print('note: medpy', v, 'not 0.5.2')"
mkdir -p "$out/medpy/core" "$out/medpy/metric"
cp "$medpy/__init__.py" "$out/medpy/"
cp "$medpy"/core/{__init__,exceptions,logger}.py "$out/medpy/core/"
cp "$medpy"/metric/{__init__,binary,histogram,image}.py "$out/medpy/metric/"

cp "$here/acdc_pack.py" "$here/score.py" "$out/"
cp -r "$here/cpu_shim" "$here/patches" "$out/"

"$py" "$out/acdc_pack.py" pack "$data" "$out/acdc.npz"
"$py" "$out/acdc_pack.py" verify "$out/acdc.npz" "$data"
"$py" "$out/acdc_pack.py" digest "$data" "$out/acdc.sha256"
echo "prepared $out"
