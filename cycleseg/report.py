"""Every table the package writes, as text, from results it is given (nothing here computes a score):

    evaluation_table    evaluate's terminal report: slice metrics, per class, per volume
    confusion_csv       the confusion matrix with class names
    volumes_csv         per-volume scores of each structure
    grid_markdown       the experiments' table: mean ± sample std (ddof 1) over seeds per cell (one seed: the mean)
    grid_csv            the same, one line per cell and score
    csv_line            one CSV line, fields quoted where they hold a comma, a quote or a line break (RFC 4180)
"""
from __future__ import annotations

from .usage import printable

STRUCTURE_SCORES = ("dice", "iou", "hd95", "asd")
GRID_SCORES = {"miou": "slice mIoU", "volume_mdice": "volume Dice", "volume_hd95": "HD95", "volume_asd": "ASD"}
GRID_DIGITS = {"volume_hd95": 1, "volume_asd": 1}                 # distances: voxels or mm; the rest: fractions


def percent(fraction: float) -> str:
    """A labeled fraction as the percentage that names run folders and labels results: 0.1 -> "10",
    0.104 -> "10.4", 0.001 -> "0.1" (two decimals at most)."""
    return f"{100 * fraction:.2f}".rstrip("0").rstrip(".")


def csv_line(*fields) -> str:
    """One CSV line: a field holding a comma, a quote or a line break is quoted (names come from users'
    files: a class "LV, cavity" or a case "a,b.nii.gz" would otherwise shift every column after it)."""
    def field(v) -> str:
        t = "" if v is None else str(v)
        return '"' + t.replace('"', '""') + '"' if any(c in t for c in ',"\n\r') else t
    return ",".join(map(field, fields))


def csv_bytes(text: str) -> bytes:
    """A CSV file's bytes: UTF-8, and a file name that is not UTF-8 (Python holds its bytes as surrogates)
    written back as the bytes it has on disk, instead of failing to encode."""
    return text.encode("utf-8", "surrogateescape")


def _fmt(v) -> str:
    return "NaN" if v is None else f"{v:.4f}"


def evaluation_table(r: dict) -> str:
    s = r["slices"]
    split = "" if r["split"] is None else f", split {r['split']}"
    lines = [f"{r['checkpoint']} (step {r['step']}) on {r['data']}{split}: {r['images']} images",
             f"mIoU {s['miou']:.4f} (standard: all classes, ignored pixels excluded)   mDice {s['mdice']:.4f}   "
             f"pixel accuracy {s['pixel_acc']:.4f}",
             f"mIoU without background (the 2019 code's variant, for comparison with the paper) {s['miou_no_bg']:.4f}",
             "", f"{'class':20s} {'IoU':>7s} {'Dice':>7s}"]
    lines += [f"{printable(name):20s} {_fmt(s['iou'][name]):>7s} {_fmt(s['dice'][name]):>7s}" for name in s["iou"]]
    if r["absent_classes"]:
        lines.append("absent from both prediction and truth (NaN, left out of the means): "
                     + ", ".join(map(printable, r["absent_classes"])))
    v = r.get("volumes")
    if v:
        lines += ["", f"per volume: {v['count']} volumes, {v['resolution']}; HD95 and ASD in {v.get('distance_units', 'voxels')}",
                  f"{'structure':20s} {'Dice':>7s} {'IoU':>7s} {'HD95':>7s} {'ASD':>7s}"]
        for st, sc in v["per_structure"].items():
            lines.append(f"{printable(st):20s} " + " ".join(f"{_fmt(sc[k]):>7s}" for k in STRUCTURE_SCORES))
        lines.append(f"{'mean':20s} " + " ".join(f"{_fmt(v['mean'][k]):>7s}" for k in STRUCTURE_SCORES))
        und = {k: n for k, n in v["undefined"].items() if n}
        if und:
            lines.append("undefined (a structure empty in prediction or truth; left out of the means): " +
                         ", ".join(f"{k} {n}" for k, n in und.items()))
    return "\n".join(lines)


def confusion_csv(mat, names) -> str:
    return csv_line("truth \\ prediction", *names) + "\n" + "".join(
        csv_line(names[i], *(int(v) for v in mat[i])) + "\n" for i in range(len(names)))


def volumes_csv(per_volume: list, structures) -> str:
    rows = ["volume,structure," + ",".join(STRUCTURE_SCORES)]
    for v in per_volume:
        for st in structures:
            rows.append(csv_line(v["volume"], st, *(v[k][st] for k in STRUCTURE_SCORES)))
    return "\n".join(rows) + "\n"


def grid_markdown(rows, header: str) -> str:
    """rows: experiments.summarize's (one per cell: its Cell and (mean, sample std, n) per score)."""
    keys = [k for k in GRID_SCORES if any(k in r for r in rows)]
    lines = [header, "", "| method | labeled | " + " | ".join(GRID_SCORES[k] for k in keys) + " | seeds |",
             "|---|---|" + "---|" * len(keys) + "---|"]
    for r in rows:
        c = r["cell"]
        d = {k: GRID_DIGITS.get(k, 3) for k in keys}
        cols = [f"{r[k][0]:.{d[k]}f}" + (f" ± {r[k][1]:.{d[k]}f}" if r[k][2] > 1 else "")   # one seed: no spread
                + (f" ({r[k][2]} of {len(r['seeds'])} seeds)" if r[k][2] < len(r["seeds"]) else "") if k in r else "-"
                for k in keys]                                      # a score some seeds lack: over the others
        lines.append(f"| {c.label} | {percent(c.fraction)} % | " + " | ".join(cols) + f" | {len(r['seeds'])} |")
    if any(k in r and r[k][2] < len(r["seeds"]) for r in rows for k in keys):
        lines += ["", "(n of m seeds): the score is undefined in the other seeds' runs (HD95 and ASD of a structure "
                      "a run predicts nowhere) and the mean is over n; seeds.csv leaves those cells empty."]
    return "\n".join(lines) + "\n"


def seeds_csv(results: dict) -> str:
    """Every run's final scores, a line per cell and seed: results is {Cell: {seed: final record}}."""
    out = ["mode,labeled_fraction,ablation,seed," + ",".join(GRID_SCORES)]
    for c, by_seed in results.items():
        for seed, r in sorted(by_seed.items()):
            scores = ",".join(f"{r[k]:.6f}" if r.get(k) is not None else "" for k in GRID_SCORES)
            out.append(csv_line(c.mode, c.fraction, c.name if c.ablation else "", seed) + f",{scores}")
    return "\n".join(out) + "\n"


def grid_csv(rows) -> str:
    out = ["mode,labeled_fraction,ablation,score,mean,std,seeds"]
    for r in rows:
        c = r["cell"]
        for k in GRID_SCORES:
            if k in r:
                std = f"{r[k][1]:.6f}" if r[k][2] > 1 else ""              # one seed: no spread
                out.append(csv_line(c.mode, c.fraction, c.name if c.ablation else "", k, f"{r[k][0]:.6f}", std, r[k][2]))
    return "\n".join(out) + "\n"
