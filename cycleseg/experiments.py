"""python -m cycleseg.experiments: the paper's experiments as one resumable grid, and its table, plot and
pictures.

    python -m cycleseg.experiments --grid paper --seeds 0 1 2                       # the built-in data
    python -m cycleseg.experiments --grid comparison --data ../ACDC --fractions 0.1 0.2 --seeds 0 1 2 \\
        --out runs/acdc-grid -- --image-size 64 --flip --rotate

Grids (every cell once per seed):
    paper        Full; Partial and semi at 10 / 20 / 30 / 50 %; the ablations: semi at 20 % with each of
                 lambda2..lambda5 switched (set to 0, or, where the recipe has it at 0, to the 2019 code's
                 weight); Hung et al.'s adversarial baseline at 20 %
    comparison   Full; --methods (default: partial semi; also meanteacher, fixmatch, adversarial) at
                 --fractions

Each cell is a training run in <out>/<cell>-seed<s>/ with the same options (those after `--` go to
every run: budget, size, augmentation, recipe), so the arms differ only in what the cell says and in
what --method-options gives one method alone (an arm at its authors' rate). A cell
whose run finished is not run again; an interrupted one resumes. Selection rule, the same for every
cell: the last checkpoint, scored by its final validation (never the best-scoring step). Writes
results.md and results.csv (mean and sample standard deviation over seeds of the slice mIoU and, on
data with volumes such as ACDC, the per-volume Dice, HD95 and ASD: the last two by `python -m
cycleseg.evaluate` on the last checkpoint, into <cell>/eval-final), seeds.csv (every run's scores), plot.png (score against labeled fraction,
one line per method, error bars: one standard deviation), time.png (each method's validation score
against its training time at the smallest fraction) and pictures.png (validation images: image, truth,
Partial, semi; the rows are the images at the quartiles of semi's per-image Dice minus Partial's, with
the extremes, each labelled with both Dice).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import figures, inference, report
from .checkpoint import CheckpointError, check_fingerprints, load_run, networks_from_checkpoint
from .config import MOVABLE, RECIPES, differing, flat, from_flat, get, given_fields, parse_args, runtime_names
from .report import percent
from .data.h5format import DataError
from .data.pixels import to_input
from .data.source import open_source
from .data.splits import open_splits, split_path
from .data.streams import check_batch, labeled_indices
from .evaluate import batches, main as evaluate_main
from .fileio import loads, occupied, write_files
from .gridprocs import Children, GridInterrupted, run_tasks
from .methods import METHODS
from .metrics import image_dice
from .runfolder import RunFolder, fcntl
from .usage import STOP_SIGNALS, Parser, UsageError, fail, first_repeat, path_arg, path_text, run_command

PAPER_ARMS = ("partial", "semi")        # the paper's comparison: the supervised baseline and the method
ABLATIONS = {"lambda2": "L_cycle^S", "lambda3": "L_cycle^I", "lambda4": "L_disc^S", "lambda5": "L_disc^I"}


@dataclass(frozen=True)
class Cell:
    mode: str
    fraction: float
    ablation: str | None = None          # a lambda switched: off, or on where the recipe leaves it out
    weight: float = 0.0                  # the ablated lambda's value in this cell

    @property
    def name(self) -> str:
        base = f"{self.mode}-{percent(self.fraction)}pct"
        if not self.ablation:
            return base
        return f"{base}-with-{self.ablation}" if self.weight else f"{base}-no-{self.ablation}"

    @property
    def label(self) -> str:
        text = METHODS[self.mode].label
        if not self.ablation:
            return text
        term = ABLATIONS[self.ablation]
        if self.weight:
            return f"{text}, with {term} (λ{self.ablation[-1]} = {self.weight:g})"
        return f"{text}, without {term}"


def grid_cells(grid: str, fractions, extra=(), methods=PAPER_ARMS) -> list[Cell]:
    """The cells of a grid: Full, then each of `methods` at each labeled fraction (the paper grid: Partial
    and semi at 10 / 20 / 30 / 50 %, the ablations and Hung et al.). Each ablation switches one of
    lambda2..lambda5 of the semi runs (as the recipe and the options after -- set them): off where it is
    on, on at the 2019 code's weight where it is off."""
    cells = [Cell("full", 1.0)]
    if grid == "paper":
        fractions, methods = (0.1, 0.2, 0.3, 0.5), PAPER_ARMS
    named = {}
    for f in fractions:
        if not 0 < f < 1:
            raise UsageError(f"--fractions: {f} is not a labeled fraction in (0, 1)" + (
                ": 1 labels every image, the Full cell every grid runs" if f == 1 else ""))
        if f in named.values():
            raise UsageError(f"--fractions: {f} is given twice; give each fraction once")
        if percent(f) == "0":
            raise UsageError(f"--fractions: {f} would be named 0 %: give a fraction of 0.0001 or more")
        if percent(f) in named and named[percent(f)] != f:
            raise UsageError(f"--fractions {named[percent(f)]} and {f} would share the folders and rows "
                             f"'{percent(f)} %': give fractions that differ by 0.0001 or more")
        named[percent(f)] = f
    for f in fractions:
        cells += [Cell(m, f) for m in methods]
    if grid == "paper":
        semi = parse_args(["--mode", "semi", *extra])[0].resolved()
        cells += [Cell("semi", 0.2, a, 0.0 if get(semi, a) else RECIPES["2019"][a]) for a in ABLATIONS]
        cells.append(Cell("adversarial", 0.2))
    return cells


COMPARED = tuple(mode for mode, method in METHODS.items() if not method.all_labels)   # the comparison's choices
# Options a cell sets itself: after `--` they would make every cell the same run.
CELL_OWNED = ("mode", "labeled_fraction", "seed", "out", "data", "resume", "stop_after")
# Options that shape the images every arm is trained and scored on: one arm's own value would compare arms on
# different data, so --method-options refuses them (they go after --, shared).
ARM_SHARED = ("image_size", "val_data")
MAX_JOBS = 256                          # --jobs: cells at a time, each a training process with its memory


def check_extra(extra, where: str = "after --") -> None:
    """UsageError for options after `--` (or in --method-options: `where`) that a cell owns or that no run
    accepts."""
    if {"-h", "--help"} & set(extra):
        raise UsageError(f"--help {where} would print the training command's help and run no cell: see "
                         f"python -m cycleseg.train --help for the options a cell takes")
    owned = sorted(given_fields(extra) & set(CELL_OWNED))
    if owned:
        flags = ", ".join("--" + k.replace("_", "-") for k in owned)
        raise UsageError(f"{flags} {where} would be the same for every cell; the grid sets them per cell "
                         f"(--data and --out are options of the grid itself, before --)")
    shaping = sorted(given_fields(extra) & set(ARM_SHARED)) if "method-options" in where else []
    if shaping:
        flags = ", ".join("--" + k.replace("_", "-") for k in shaping)
        raise UsageError(f"{flags} {where} would train and score this arm on other images than the others; give "
                         f"{'them' if len(shaping) > 1 else 'it'} after -- for every arm alike")
    cfg, dry_run = parse_args(["--mode", "semi", *extra])
    if dry_run:
        raise UsageError(f"--dry-run {where} would print each cell's configuration and train none; the grid has no "
                         f"dry run: check one cell's with python -m cycleseg.train --dry-run and its options")
    cfg.resolved()


def method_options(pairs, methods) -> dict[str, list[str]]:
    """{method: options} from --method-options' (METHOD, "OPTIONS") pairs: what one arm takes beside the
    shared options (FixMatch at UniMatch's effective rate: `--method-options fixmatch "--lr 0.0025"`)."""
    given: dict[str, list[str]] = {}
    for mode, text in pairs or ():
        if mode not in methods:
            raise UsageError(f"--method-options {mode}: not a method of this grid ({', '.join(methods)})")
        try:
            opts = shlex.split(text)
        except ValueError as e:
            raise UsageError(f"--method-options {mode} {text!r}: {e}") from None
        check_extra(opts, f"in --method-options {mode}")
        given[mode] = given.get(mode, []) + opts
        flags = [o.split("=", 1)[0].replace("--no-", "--", 1) for o in given[mode] if o.startswith("--")]
        twice = first_repeat(flags)
        if twice is not None:                                       # argparse kept the last without a word
            raise UsageError(f"--method-options {mode}: {twice} is given twice for {mode}; give it once")
    return given


def cell_args(cell: Cell, seed: int, out: Path, data, extra, own=None) -> list[str]:
    """The training command line of a cell: the shared options, its method's own (--method-options), then
    what the cell sets (which wins)."""
    args = list(extra) + list((own or {}).get(cell.mode, ())) + ["--mode", cell.mode, "--labeled-fraction", str(cell.fraction), "--seed", str(seed),
                          "--out", str(out / f"{cell.name}-seed{seed}"), "--no-progress"]
    if data:
        args += ["--data", str(data)]
    if cell.ablation:
        args += [f"--{cell.ablation}", f"{cell.weight:g}"]
    return args


def check_cell_folder(cfg, folder: Path) -> bool:
    """Whether the folder holds a start of the cell's run to go on from (last.pt, or config.json alone: a
    cell killed with its grid before its first checkpoint, which train --resume starts again);
    CheckpointError when what it holds is a run of another configuration than the cell's."""
    if os.path.lexists(folder) and not folder.is_dir():             # found before any cell trains, in one line
        raise UsageError(f"{folder} is {'a link to nothing' if not folder.exists() else 'a file'} where the grid "
                         f"keeps that cell's run folder; move it away, or give the grid another --out")
    last, started = folder / "last.pt", folder / "config.json"
    if last.exists():
        try:
            state = load_run(last)
            saved, where = flat(from_flat(state["config"])), last
            now = data_fingerprints(cfg.data, cfg.val_data, cfg.image_size)
            check_fingerprints(state, now["fingerprints"], now["paths"], last)
        except CheckpointError as e:
            raise CheckpointError(f"{e}. The cell cannot go on from it: move {folder} away (or delete it) and "
                                  f"rerun the grid to train the cell again from its start") from e
    elif started.exists() and not (folder / "best.pt").exists():
        try:
            saved, where = loads(started.read_text()), started
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{started}: not readable as a run's configuration ({e}); move {folder} away "
                                  f"or give the grid another --out") from e
    else:
        return False
    ours = flat(cfg)
    diff = differing(saved, ours, runtime_names() + MOVABLE)         # the data's path: its content is checked
    if diff:
        shown = ", ".join(f"{k} {saved[k]!r} where the cell has {ours[k]!r}" for k in diff[:3])
        raise CheckpointError(f"{where}: a run of another configuration than this cell's ({shown}); move it away "
                              f"or give the grid another --out")
    return True


@functools.lru_cache(maxsize=4)
def grid_splits(data, val_data, image_size):
    """The splits the grid's cells read, opened (and checked) once."""
    return open_splits(data, val_data, image_size or 64, progress=False)


@functools.lru_cache(maxsize=4)
def data_fingerprints(data, val_data, image_size) -> dict:
    """The content fingerprints of the data the grid's cells read, computed once: a finished or started
    cell whose checkpoint read other data (the folder's content replaced since) is not taken into the table."""
    splits = grid_splits(data, val_data, image_size)
    return {"fingerprints": splits.fingerprints(), "paths": {"train": splits.train.path, "val": splits.val.path}}


def check_cells(cells, seeds, out: Path, data, extra, own) -> None:
    """Every cell's configuration, folder and labeled fraction, before any cell runs (the data read afresh:
    a grid run again in this process may find other content at the same path)."""
    grid_splits.cache_clear(), data_fingerprints.cache_clear()
    subsets: dict = {}                                              # (seed, mode, ablation, weight) -> {subset: fraction}
    for seed, cell in ((s, c) for s in seeds for c in cells):
        cfg = parse_args(cell_args(cell, seed, out, data, extra, own))[0].resolved()
        check_cell_folder(cfg, Path(cfg.out))
        lab = frozenset(check_fraction(cfg).tolist())
        same = subsets.setdefault((seed, cell.mode, cell.ablation, cell.weight), {}).setdefault(lab, cell.fraction)
        if same != cell.fraction:                                  # two cells, one run: the table showed both
            raise UsageError(f"--fractions {same:g} and {cell.fraction:g} label the same images of this data "
                             f"({share_text(cfg, lab)}): their cells would be one run twice; give fractions that "
                             f"label different subsets")
    train = grid_splits(cfg.data, cfg.val_data, cfg.image_size).train if cells else None
    for fraction in dict.fromkeys(c.fraction for c in cells if c.fraction < 1.0):
        lab = labeled_indices(train, fraction, seeds[0])
        have, of, _ = subset_counts(train, lab)
        real = have / of
        if abs(real - fraction) > 0.005:                            # whole patients (groups) or images
            print(f"note: --fractions {fraction:g} labels {share_text(cfg, frozenset(lab.tolist()))}; the tables "
                  f"name it {percent(fraction)} %", file=sys.stderr)


def subset_counts(train, lab) -> tuple[int, int, str]:
    """(held, of, what) of a labeled subset: its groups (patients) of the split's where it has them, else
    its images."""
    if train.groups is not None:
        return len(np.unique(train.groups[lab])), len(np.unique(train.groups)), "groups (patients)"
    return len(lab), len(train), "images"


def share_text(cfg, lab: frozenset) -> str:
    """'2 of 8 groups (patients), 25 %' or '12 of 100 images, 12 %' of a labeled subset."""
    train = grid_splits(cfg.data, cfg.val_data, cfg.image_size).train
    have, of, what = subset_counts(train, np.array(sorted(lab), dtype=np.int64))
    return f"{have} of {of} {what}, {percent(have / of)} %"


def check_fraction(cfg) -> np.ndarray:
    """The labeled subset of a cell, as its streams draw it; DataError, before any cell trains, when it holds
    no image of its data, or fewer than its batch (each failed only when that cell's turn came, after the
    cells before it had trained)."""
    train = grid_splits(cfg.data, cfg.val_data, cfg.image_size).train
    lab = labeled_indices(train, cfg.labeled_fraction, cfg.seed)
    check_batch(cfg.batch_size, len(lab), cfg.labeled_fraction)
    return lab


def final_record(folder: Path, steps: int) -> dict | None:
    """The validation record at the last step of a finished run, or None."""
    recs = [r for r in RunFolder(folder).records("val") if r["step"] == steps]
    return recs[-1] if recs and (folder / "last.pt").exists() else None


def run_cell(args: list[str], children: Children, label: str | None = None) -> dict:
    """Train one cell with `python -m cycleseg.train` in its own process (resuming it if it was
    interrupted); its final validation record."""
    cfg = parse_args(args)[0].resolved()
    folder = Path(cfg.out)
    started = check_cell_folder(cfg, folder)
    done = final_record(folder, cfg.steps)
    if done is not None:
        return done
    cmd = [sys.executable, "-m", "cycleseg.train", *args] + (["--resume"] if started else [])
    code = children.run(cmd, label)
    kept, rec = (folder / "last.pt").exists(), final_record(folder, cfg.steps)
    how = ("had finished (it is kept)" if code == 0 and rec is not None       # the stop came as it ended
           else "stopped with a checkpoint" if kept else "stopped before its first checkpoint (nothing of it kept)")
    stopped(children, code, f"the run in {folder} {how}"
                            + ("" if children.stopped is not None else f", exit code {code}"),  # the grid's own stop:
            fresh=not kept)                                         # the code is the grid's SIGTERM to it

    if code is not None and code < 0:                               # SIGKILL: the out-of-memory killer, or a user
        raise RuntimeError(f"the run in {folder} was killed by {signal.Signals(-code).name} (out of memory?); "
                           f"rerun the grid to go on from its last checkpoint")
    if code != 0 or rec is None:
        raise RuntimeError(f"the run in {folder} failed (exit code {code}): {' '.join(cmd)}")
    return rec


def stopped(children: Children, code: int | None, what: str, fresh: bool = False) -> None:
    """GridInterrupted when the grid received a stop signal or a child was stopped by one; fresh: the cell
    kept nothing (stopped before its first checkpoint), a rerun starts it again."""
    signum = children.stopped
    if signum is None and code is not None and (-code in STOP_SIGNALS or code - 128 in STOP_SIGNALS):
        signum = code - 128 if code > 0 else -code                  # a stop the child got (a terminal's Ctrl-C)
    if signum is not None:
        raise GridInterrupted(f"interrupted by {signal.Signals(signum).name}: "
                              f"{what if code is not None else 'cells not started'}; rerun the same command to go on "
                              f"where it stopped" + (" (this cell starts again from its beginning)" if fresh else ""),
                              signum)


def evaluate_in_process(argv: list[str]) -> int:
    """`python -m cycleseg.evaluate argv` in this process, its table dropped (it is in report.json)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluate_main(argv)


def checked_record(folder: Path, rec: dict, evaluate=evaluate_in_process) -> dict:
    """A finished cell's final record, checked against its last checkpoint by `python -m cycleseg.evaluate`
    into <cell>/eval-final, which a rerun reads again if it is the evaluation of this last.pt, at this step,
    scoring the record's mIoU (else it evaluates again: a report of other data, damaged or edited). A record
    its checkpoint does not reproduce (metrics.jsonl edited) is refused. On data with volumes (ACDC, NIfTI
    conversions) the record gains the per-volume means of HD95 and ASD of that evaluation."""
    last, out = folder / "last.pt", folder / "eval-final"
    found = out / "report.json"
    if occupied(found):                                             # a FIFO would block the grid for good
        raise DataError(f"{found} is a folder or special file, not an evaluation's report; move it away and rerun")
    kept = found.exists() and found.stat().st_mtime >= last.stat().st_mtime and cell_report(found, last, rec)
    if not kept:
        argv = [str(last), "--out", str(out), "--no-progress"] + (["--overwrite"] if found.exists() else [])
        code = evaluate(argv)
        if code != 0:
            raise RuntimeError(f"python -m cycleseg.evaluate {' '.join(argv)} failed (exit code {code})")
        kept = cell_report(found, last, rec)
        if not kept:
            raise DataError(f"{folder}: its final record (metrics.jsonl, step {rec['step']}) says val mIoU "
                            f"{rec['miou']:.4f}, but its last.pt does not score that on the same data: the record "
                            f"was edited or is another run's; move {folder} away and rerun the grid")
    if "volumes" not in kept:
        return rec
    volumes = kept["volumes"]
    return {**rec, "volume_hd95": volumes["mean"].get("hd95"), "volume_asd": volumes["mean"].get("asd"),
            "distance_units": volumes.get("distance_units")}


def cell_report(found: Path, last: Path, rec: dict) -> dict | None:
    """eval-final/report.json if it is the evaluation of `last` at the record's step that scores the record's
    mIoU (within 1e-4: training's validation and evaluate compute the same), with volumes where the record has
    them and finite distances; else None."""
    try:
        r = loads(found.read_text())
        if ("volumes" in r) != ("volume_mdice" in rec):            # scored with volumes, recorded without
            return None
        mean = r["volumes"]["mean"] if "volumes" in r else {}
        same = (Path(r["checkpoint"]).resolve() == last.resolve() and r["step"] == rec["step"]
                and abs(r["slices"]["miou"] - rec["miou"]) <= 1e-4)
        finite = all(mean.get(k) is None or (isinstance(mean[k], (int, float)) and math.isfinite(mean[k]))
                     for k in ("hd95", "asd"))
        return r if same and finite else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # damaged, edited, of another kind
        return None


def summarize(results: dict) -> list[dict]:
    """Rows (one per cell): mean and sample standard deviation (ddof 1) over seeds of each score present."""
    rows = []
    for cell, by_seed in results.items():
        row = {"cell": cell, "seeds": sorted(by_seed)}
        for k in report.GRID_SCORES:
            vals = [r[k] for r in by_seed.values() if r.get(k) is not None]
            if vals:
                row[k] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals))
        rows.append(row)
    return rows


def fraction_series(rows, score: str) -> tuple[dict, list]:
    """({method: [(fraction, mean, std)]}, Full's [(mean, std)]) of the summarized rows."""
    modes = dict.fromkeys(r["cell"].mode for r in rows if r["cell"].mode != "full" and not r["cell"].ablation)
    series = {m: sorted((r["cell"].fraction, *r[score][:2]) for r in rows
                        if r["cell"].mode == m and not r["cell"].ablation and score in r) for m in modes}
    return {m: pts for m, pts in series.items() if pts}, [r[score][:2] for r in rows
                                                         if r["cell"].mode == "full" and score in r]


def time_series(out: Path, cells, seeds, score: str, fraction: float) -> dict:
    """{method label: [(training seconds, score)]}: each validation of the cells at `fraction` (and Full),
    averaged over seeds step by step (the time spent training, evaluations left out)."""
    series = {}
    for cell in cells:
        if cell.ablation or cell.fraction not in (fraction, 1.0):
            continue
        runs = [[r for r in RunFolder(out / f"{cell.name}-seed{s}").records("val") if score in r] for s in seeds]
        runs = [r for r in runs if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        series[f"{cell.label} ({percent(cell.fraction)} %)"] = [
            (float(np.mean([r[i].get("train_time", r[i].get("time", 0.0)) for r in runs])),
             float(np.mean([r[i][score] for r in runs]))) for i in range(n)]
    return series


QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def pictures(out: Path, fraction: float, seed: int):
    """Validation images: image | truth | Partial | semi (the last checkpoints at `fraction`, one seed), or
    None when a cell is missing. The rule: of the validation images with a structure in their truth or
    either prediction, those at the quantiles QUANTILES of semi's per-image Dice minus Partial's (the worst
    case for semi, the quartiles, the best), each row labelled with both Dice."""
    predictions, source = {}, None
    for mode, title in (("partial", "Partial"), ("semi", "semi")):
        ckpt = out / f"{mode}-{percent(fraction)}pct-seed{seed}" / "last.pt"
        if not ckpt.exists():
            return None
        cfg, _, nets = networks_from_checkpoint(load_run(ckpt), ckpt)
        if source is None:
            source = open_source(split_path(cfg.data, "val", cfg.val_data, cfg.image_size, False)[0])
        g_is = inference.prepare(nets["G_IS"], "cpu")
        predictions[f"{title} {percent(fraction)} %"] = np.concatenate(
            [inference.segment(g_is, to_input(images)).numpy() for _, images, _ in batches(source, 64)])
    masks = np.concatenate([m.numpy() for _, _, m in batches(source, 256)])
    meta = source.meta
    dice = {k: image_dice(p, masks, meta.num_classes, meta.ignore_index) for k, p in predictions.items()}
    partial, semi = dice.values()
    diff = semi - partial
    order = np.flatnonzero(~np.isnan(diff))
    order = order[np.argsort(diff[order], kind="stable")]
    if len(order) == 0:
        return None
    picked = {int(order[round(q * (len(order) - 1))]): q for q in reversed(QUANTILES)}   # an image once
    rows = sorted(picked, key=lambda i: picked[i])
    images, _ = source.batch(np.array(rows))
    labels = [f"q{percent(picked[i])}: P {partial[i]:.2f}, s {semi[i]:.2f}" for i in rows]
    return figures.comparison_grid(images.permute(0, 2, 3, 1).numpy(), masks[rows],
                                   {k: p[rows] for k, p in predictions.items()}, meta, row_labels=labels)


def options_as_values(argv: list, p: argparse.ArgumentParser) -> list:
    """argv with the OPTIONS of `--method-options METHOD OPTIONS` kept as a value when it is one training
    option (`"--resume"`): argparse takes a lone option-like word for an option and said "expected 2
    arguments" where two were given; the value then gets method_options' own check. A grid option there is
    taken as the grid's, except --help (a METHOD's OPTIONS "--help" are answered by method_options' check)."""
    argv = list(argv)
    for i, word in enumerate(argv[:-2]):
        value = argv[i + 2]
        if word == "--method-options" and value.startswith("-") and " " not in value \
                and (value.split("=")[0] not in p._option_string_actions or value in ("-h", "--help")):
            argv[i + 2] = " " + value                              # a space: argparse reads it as a value
    return argv


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = Parser(prog="python -m cycleseg.experiments", description=__doc__)
    p.add_argument("--grid", choices=["paper", "comparison"], default="paper",
                   help="paper: the paper's table (Partial / semi / Full at its fractions, and the ablations); "
                        "comparison: --methods at --fractions beside Full")
    p.add_argument("--data", type=path_text, default=None, help="any --data of the training command (default: the built-in dataset)")
    p.add_argument("--fractions", type=float, nargs="+", default=None,
                   help="labeled fractions (comparison grid; default 0.1 0.2)")
    p.add_argument("--methods", nargs="+", default=None, choices=COMPARED,
                   help="the methods of the comparison grid, each at every fraction (Full always runs; default "
                        "partial semi)")
    p.add_argument("--method-options", nargs=2, action="append", metavar=("METHOD", "OPTIONS"),
                   help='options for one method\'s cells only, after the shared ones (repeatable), e.g. '
                        '--method-options fixmatch "--lr 0.0025"')
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run of each cell per seed")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells trained at a time (default 1): several share one GPU or the machine's cores; their "
                        "lines are prefixed with the cell's name, and each run's times (time.png) are under that load")
    p.add_argument("--out", type=path_arg, default=None, help="grid folder (default runs/grid-<grid>)")
    a = p.parse_args(options_as_values(argv, p))
    bad = next((s for s in a.seeds if not 0 <= s < 2 ** 32), None)
    if bad is not None:
        p.error(f"--seeds: {bad} is not a seed (0 .. 2**32 - 1)")
    if not 1 <= a.jobs <= MAX_JOBS:                                 # each a training process, its memory and threads
        p.error(f"--jobs: {a.jobs} is not a number of cells at a time (1 .. {MAX_JOBS})")
    if a.grid == "paper" and (a.fractions or a.methods):
        p.error("--fractions and --methods choose the comparison grid's cells; the paper grid's are fixed "
                "(see --help)")
    a.fractions, a.methods = a.fractions or [0.1, 0.2], a.methods or list(PAPER_ARMS)
    out = a.out or Path("runs") / f"grid-{a.grid}"
    for flag, given in (("--seeds", a.seeds), ("--methods", a.methods or [])):
        twice = first_repeat(given)
        if twice is not None:                                       # one run (two at once under --jobs): the
            p.error(f"{flag}: {twice} is given twice; give each once")   # grid's mean would be over fewer
    seeds = a.seeds
    try:
        check_extra(extra)
        cells = grid_cells(a.grid, a.fractions, extra, a.methods)
        own = method_options(a.method_options, sorted({c.mode for c in cells}))
        check_grid_folder(out)
        with grid_lock(out):
            check_cells(cells, seeds, out, a.data, extra, own)
            return run_and_write(a, out, cells, seeds, extra, own)
    except (UsageError, CheckpointError, DataError) as e:
        return fail(e)


@contextlib.contextmanager
def grid_lock(out: Path):
    """Hold the grid folder (made if missing) while the grid runs: UsageError if another grid holds it (two
    grids would train and evaluate the same cells at once). A folder this grid made and left empty (it failed
    before any cell wrote: a full disk) is removed."""
    made = not os.path.lexists(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot make the grid folder ({e.strerror or e})") from None
    fd = os.open(out, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UsageError(f"{out} is in use by another grid (or a training run in it); wait for it to end, "
                                 f"or give this grid another --out") from None
        yield
    finally:
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()                                         # only if empty


def run_and_write(a, out: Path, cells, seeds, extra, own) -> int:
    """Run the grid, write its results and print its table: the exit status."""
    try:
        results = run_grid(cells, seeds, a, out, extra, own)
        rows = summarize(results)
        files = report_files(a, out, cells, seeds, results, rows, extra, own)
        write_files(out, files, remove=GRID_FILES)                  # a picture this rerun does not draw: gone
    except GridInterrupted as e:
        fail(e)
        return 128 + e.signum
    except (DataError, CheckpointError, UsageError, RuntimeError, OSError) as e:
        return fail(e)
    print(files["results.md"].decode())
    print(f"wrote {', '.join(sorted(files))} in {out}")
    return 0


def run_grid(cells, seeds, a, out: Path, extra, own) -> dict:
    """Train every cell of the grid for every seed (a.jobs at a time; the longest, the CycleGAN's four
    networks, first) and check each final record: {cell: {seed: record}}."""
    results: dict = {c: {} for c in cells}
    tasks = [(s, c) for s in seeds for c in cells]
    if a.jobs > 1:
        tasks.sort(key=lambda t: t[1].mode != "semi")
    children, position = Children(), {t: i for i, t in enumerate(tasks)}
    with children.forwarding():
        for (seed, cell), rec in run_tasks(tasks, lambda t: run_and_check(t, a, out, extra, own, children,
                                                                            len(tasks), position[t]), a.jobs):
            results[cell][seed] = rec
            print(("    " if a.jobs == 1 else f"    {cell.name} seed {seed}: ") + f"mIoU {rec['miou']:.4f}" +
                  (f"  volume Dice {rec['volume_mdice']:.4f}" if "volume_mdice" in rec else "") +
                  (f"  HD95 {rec['volume_hd95']:.2f} {rec['distance_units']}" if rec.get("volume_hd95") is not None
                   else ""), file=sys.stderr)
    return {c: dict(sorted(v.items())) for c, v in results.items()}


def run_and_check(task, a, out: Path, extra, own, children: Children, total: int, i: int) -> dict:
    """Train one cell of the grid (unless finished) and check its final record against its last checkpoint."""
    seed, cell = task
    args = cell_args(cell, seed, out, a.data, extra, own)
    print(f"[{i + 1}/{total}] {cell.name} seed {seed}: {' '.join(args)}", file=sys.stderr)
    folder = Path(parse_args(args)[0].resolved().out)
    if a.jobs == 1:
        return checked_record(folder, run_cell(args, children))
    label = f"{cell.name}-seed{seed}"

    def evaluate(argv):
        code = children.run([sys.executable, "-m", "cycleseg.evaluate", *argv], label, quiet=True)
        stopped(children, code, f"the evaluation of {folder / 'last.pt'} stopped")
        return code

    return checked_record(folder, run_cell(args, children, label), evaluate)


GRID_FILES = ("results.md", "results.csv", "seeds.csv", "results.json", "plot.png", "time.png", "pictures.png")


def check_grid_folder(out: Path) -> None:
    """UsageError, before any cell, when `out` holds files of a grid's names but no grid's results.json
    (a user's notes named results.md, a plot of their own): a grid replaces only its own results."""
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {out}: {'a link to nothing' if not out.exists() else 'a file'}, not a folder; "
                         f"give the grid a folder (made if missing)")
    held = RunFolder(out).held()
    if held:                                                        # a run's files would be mixed with the cells
        raise UsageError(f"--out {out} holds a training run ({', '.join(held)}), not a grid; give the grid a "
                         f"folder of its own")
    odd = [n for n in GRID_FILES if occupied(out / n)]
    if odd:
        raise UsageError(f"{out / odd[0]} is a folder or special file where the grid writes its results; move it "
                         f"or choose another --out")
    theirs = [n for n in GRID_FILES if (out / n).exists()]
    if not theirs:
        return
    try:
        own = loads((out / "results.json").read_text())
        own = isinstance(own, dict) and all(isinstance(v, dict) for v in own.values())
    except (OSError, ValueError):
        own = False
    if not own:
        raise UsageError(f"{out / theirs[0]} exists and {out} holds no grid's results.json: a grid writes its "
                         f"results ({', '.join(GRID_FILES)}) only over its own; move those files or choose another --out")


def steps_text(results) -> str:
    """The runs' step counts for the table's header, read from their final records: "2000 steps", or, where
    --method-options gave one method a budget of its own, "2000 steps (Mean Teacher 1000)"."""
    by_mode: dict = {}
    for cell, recs in results.items():
        for rec in recs.values():
            by_mode.setdefault(rec["step"], set()).add(cell.mode)
    if len(by_mode) <= 1:
        return f"{next(iter(by_mode), 0)} steps"
    main = max(by_mode, key=lambda n: (len(by_mode[n]), n))
    others = ", ".join(f"{' / '.join(METHODS[m].label for m in sorted(by_mode[n]))} {n}"
                       for n in sorted(by_mode) if n != main)
    return f"{main} steps ({others})"


def resolved_text(out: Path, results) -> str:
    """What the runs' presets resolved to (their config.json), for the header: the same command gives a GPU
    the paper's preset (batch 5, G_SI and discriminators at the paper's size) and a CPU the cpu preset (batch
    8, smaller networks), which the options alone do not show."""
    seen = set()
    for cell, recs in results.items():
        for seed in recs:
            config = out / f"{cell.name}-seed{seed}" / "config.json"
            try:
                if not config.is_file():                            # a FIFO would block the grid for good
                    continue
                c = loads(config.read_text())
                resolved = (str(c["preset"]), int(c["batch_size"]), str(c["device"]))
                "".join(resolved[::2]).encode()                     # a lone surrogate: not text a table can hold
                seen.add(resolved)
            except (OSError, ValueError, KeyError, TypeError, OverflowError):   # UnicodeError is a ValueError
                continue
    return " Runs resolved to " + "; ".join(f"preset {p}, batch {b} (+ {b} unlabeled where a method reads them) on "
                                            f"{d}" for p, b, d in sorted(seen)) + "." if seen else ""


def report_files(a, out: Path, cells, seeds, results, rows, extra, own=None) -> dict:
    """{name: bytes} of the grid's table, CSV, JSON, plot and pictures."""
    per_method = "".join(f", {METHODS[m].label} also `{shlex.join(o)}`" for m, o in sorted((own or {}).items()))
    units = {r.get("distance_units") for v in results.values() for r in v.values()} - {None}
    distances = (f" HD95 and ASD: per-volume means, in {' / '.join(sorted(units))}, by `python -m cycleseg.evaluate` "
                 f"on the same checkpoint (<cell>/eval-final)." if units else "")
    header = (f"Grid `{a.grid}` on {a.data or 'the built-in dataset'}, seeds {seeds}, {steps_text(results)}, options "
              f"`{' '.join(extra) or '(defaults)'}`{per_method}; the last checkpoint of every run, scored by its "
              f"final validation.{resolved_text(out, results)}{distances}")
    files = {"results.md": report.grid_markdown(rows, header).encode(), "results.csv": report.grid_csv(rows).encode(),
             "seeds.csv": report.seeds_csv(results).encode(),
             "results.json": json.dumps({c.name: {str(s): r for s, r in v.items()} for c, v in results.items()},
                                        indent=1).encode()}
    score = "volume_mdice" if any("volume_mdice" in r for r in rows) else "miou"
    plot = figures.fraction_plot(*fraction_series(rows, score),
                                 report.GRID_SCORES[score] + " (mean, error bars: 1 std over seeds)")
    if plot is not None:
        files["plot.png"] = figures.png(plot)
    first = min((c.fraction for c in cells if c.mode != "full" and not c.ablation), default=None)
    timed = time_series(out, cells, seeds, score, first) if first is not None else {}
    if timed:
        files["time.png"] = figures.png(figures.time_plot(
            timed, f"validation {report.GRID_SCORES[score]} against training time (mean over seeds)"))
    arms = {(c.mode, c.fraction) for c in cells if not c.ablation}   # this grid's Partial beside its semi, never
    fractions = sorted(f for m, f in arms if m == "semi" and ("partial", f) in arms)   # a run left in the folder
    pics = pictures(out, fractions[0], seeds[0]) if fractions else None
    if pics is not None:
        files["pictures.png"] = figures.png(pics)
    return files


if __name__ == "__main__":
    sys.exit(run_command(main))
