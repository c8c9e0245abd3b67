"""python -m cycleseg.experiments: a tiny comparison grid, its table, plot and pictures, and resuming."""
import json

import numpy as np
import pytest
import torch

from cycleseg.experiments import Cell, grid_cells, main, summarize

TINY = ["--", "--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "32", "--batch-size", "2",
        "--device", "cpu", "--preset", "cpu", "--steps", "2", "--eval-every", "2"]


def split(path, seed):
    """A tiny split of data without volumes (an image folder's conversion): 6 grey 32x32 images, 3 classes."""
    import numpy as np

    from cycleseg.data.h5format import Meta, write_split

    rng = np.random.default_rng(seed)
    write_split(path, rng.integers(0, 256, (6, 32, 32, 1), dtype=np.uint8),
                rng.integers(0, 3, (6, 32, 32), dtype=np.uint8),
                Meta(num_classes=3, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3))


def test_grids():
    paper = grid_cells("paper", None)
    assert Cell("full", 1.0) in paper and Cell("adversarial", 0.2) in paper
    assert {c.fraction for c in paper if c.mode == "partial"} == {0.1, 0.2, 0.3, 0.5}
    assert {c.ablation for c in paper if c.ablation} == {"lambda2", "lambda3", "lambda4", "lambda5"}
    switched = {c.ablation: c for c in paper if c.ablation}          # the tuned recipe leaves L_cycle^I out
    assert switched["lambda3"].weight == 1.0 and switched["lambda3"].name == "semi-20pct-with-lambda3"
    assert switched["lambda4"].weight == 0.0 and switched["lambda4"].label == "Ours (semi), without L_disc^S"
    old = {c.ablation: c for c in grid_cells("paper", None, ["--recipe", "2019"]) if c.ablation}
    assert all(c.weight == 0.0 for c in old.values())                 # the 2019 weights: every term on
    assert [c.name for c in grid_cells("comparison", [0.1])] == ["full-100pct", "partial-10pct", "semi-10pct"]


def test_summary_mean_and_std():
    """The sample standard deviation (ddof 1): over 3 seeds the population one is 18 % smaller."""
    rows = summarize({Cell("semi", 0.1): {0: {"miou": 0.5}, 1: {"miou": 0.7}}, Cell("full", 1.0): {0: {"miou": 0.9}}})
    mean, std, n = rows[0]["miou"]
    assert (round(mean, 6), round(std, 6), n) == (0.6, round(0.02 ** 0.5, 6), 2)
    assert rows[1]["miou"] == (0.9, 0.0, 1)


def test_one_seed_shows_no_spread():
    """A cell run with one seed has no spread: the table shows its mean alone (not "± 0.000", which reads as a
    measured zero spread), the CSV an empty std; two seeds show mean ± sample std."""
    from cycleseg.report import grid_csv, grid_markdown

    rows = summarize({Cell("semi", 0.1): {0: {"miou": 0.5}, 1: {"miou": 0.7}}, Cell("full", 1.0): {0: {"miou": 0.9}}})
    table = grid_markdown(rows, "h")
    assert "| Ours (semi) | 10 % | 0.600 ± 0.141 | 2 |" in table and "| Full | 100 % | 0.900 | 1 |" in table, table
    assert grid_csv(rows).splitlines()[1:] == ["semi,0.1,,miou,0.600000,0.141421,2", "full,1.0,,miou,0.900000,,1"]


def test_a_score_some_seeds_lack_says_over_how_many(capsys):
    """A seed whose run predicted a structure nowhere has no HD95: the table showed the other seed's value
    under "seeds 2" with no word; now it says over how many seeds, with a line why."""
    from cycleseg.report import grid_markdown

    rows = summarize({Cell("meanteacher", 0.5): {0: {"miou": 0.1, "volume_hd95": 34.8},
                                                 1: {"miou": 0.05, "volume_hd95": None}}})
    table = grid_markdown(rows, "h")
    assert "| 34.8 (1 of 2 seeds) | 2 |" in table and "the mean is over n" in table, table
    full = grid_markdown(summarize({Cell("semi", 0.1): {0: {"miou": 0.5}, 1: {"miou": 0.7}}}), "h")
    assert "of 2 seeds" not in full and "(n of m seeds)" not in full


def test_comparison_grid_writes_results_and_resumes(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["--grid", "comparison", "--fractions", "0.1", "--seeds", "0", "1", "--out", str(out)] + TINY) == 0
    for f in ("results.md", "results.csv", "seeds.csv", "results.json", "plot.png", "pictures.png"):
        assert (out / f).exists(), f
    res = json.loads((out / "results.json").read_text())
    seeds = (out / "seeds.csv").read_text().splitlines()
    assert seeds[0] == "mode,labeled_fraction,ablation,seed,miou,volume_mdice,volume_hd95,volume_asd"
    assert len(seeds) == 1 + 3 * 2
    mode, frac, _, seed, miou, *_ = seeds[-1].split(",")
    assert float(miou) == pytest.approx(res[f"{mode}-{round(100 * float(frac))}pct"][seed]["miou"], abs=1e-6)
    table = (out / "results.md").read_text()
    assert "| Partial | 10 % |" in table and "| Ours (semi) | 10 % |" in table and "| Full | 100 % |" in table
    assert "± " in table and "the last checkpoint of every run" in table
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"full-100pct", "partial-10pct", "semi-10pct"} and set(res["semi-10pct"]) == {"0", "1"}
    stamp = (out / "semi-10pct-seed0" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--grid", "comparison", "--fractions", "0.1", "--seeds", "0", "1", "--out", str(out)] + TINY) == 0
    assert (out / "semi-10pct-seed0" / "last.pt").stat().st_mtime_ns == stamp          # finished: not rerun


def test_cells_run_jobs_at_a_time_give_the_same_results(tmp_path, capsys):
    """--jobs 2 trains two cells at a time (each child's lines prefixed with its cell) and writes the same
    table as one at a time: every run's final record and its evaluation alike."""
    argv = ["--grid", "comparison", "--fractions", "0.5", "--seeds", "0", "1"]
    assert main(argv + ["--out", str(tmp_path / "one")] + TINY) == 0
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "two"), "--jobs", "2"] + TINY) == 0
    err = capsys.readouterr().err
    assert "[semi-50pct-seed1] semi:" in err and "    semi-50pct seed 1: mIoU" in err, err
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert set(one) == set(two) == {"full-100pct", "partial-50pct", "semi-50pct"}
    for cell in one:
        assert list(two[cell]) == ["0", "1"]
        for seed in one[cell]:
            assert two[cell][seed]["miou"] == pytest.approx(one[cell][seed]["miou"], abs=1e-6), (cell, seed)
    with pytest.raises(SystemExit) as refused:
        main(argv + ["--out", str(tmp_path / "x"), "--jobs", "0"] + TINY)
    assert refused.value.code == 2 and "--jobs: 0 is not" in capsys.readouterr().err


def test_a_finished_run_whose_final_record_was_lost_is_validated_again(tiny_argv, tmp_path):
    """A power loss can drop the last (unsynced) line of metrics.jsonl after last.pt was saved: resuming the
    finished run validates it again, so a grid's rerun finds its final record instead of failing for good."""
    import json

    from cycleseg.train import main as train_main

    argv = tiny_argv("r", "--mode", "partial", "--steps", "4", "--eval-every", "4")
    assert train_main(argv) == 0
    metrics = tmp_path / "r" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    final = json.loads(lines[-1])
    assert final["split"] == "val" and final["step"] == 4
    metrics.write_text("\n".join(lines[:-1]) + "\n")                      # the final record lost
    assert train_main(argv + ["--resume"]) == 0
    again = json.loads(metrics.read_text().splitlines()[-1])
    assert again["split"] == "val" and again["step"] == 4 and abs(again["miou"] - final["miou"]) < 1e-9


def alive(pid: int) -> bool:
    """A process that runs (not gone, not a zombie left for a parent to reap)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("signum,jobs", [("SIGTERM", 1), ("SIGINT", 1), ("SIGHUP", 1), ("SIGKILL", 1), ("SIGTERM", 2), ("SIGKILL", 2)])
def test_a_signal_to_the_grid_stops_its_cell_and_leaves_no_orphan(tmp_path, signum, jobs):
    """SIGTERM or SIGINT (kill -INT: the grid alone) to a grid reaches its training child, which stops with a
    checkpoint; the grid waits for it, says how to go on in one line (no traceback, not the cell's own
    advice to resume it with train) and exits 128 + the signal it received (SIGINT was reported as the
    SIGTERM it forwards: 143); it leaves no process behind. A grid killed outright (SIGKILL) takes its cell
    with it too (the cell gets SIGTERM: it stops with a checkpoint). With --jobs 2, both running cells stop
    with a checkpoint and the grid says so in one line."""
    import signal
    import sys
    import time

    from conftest import TINY
    from procs import Proc, descendants

    grid = Proc([sys.executable, "-m", "cycleseg.experiments", "--grid", "comparison", "--fractions", "0.5",
                 "--methods", "partial", "--seeds", "0", "--out", tmp_path / "g", "--jobs", str(jobs), "--", *TINY[:-4],
                 "--steps", "400", "--log-every", "1"])
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "g").glob("*/metrics.jsonl"))) < jobs:
        time.sleep(0.2)
    children = descendants(grid.p.pid)
    assert children, grid.stderr
    grid.send_signal(getattr(signal, signum))
    if signum == "SIGKILL":
        assert grid.wait(120) == -signal.SIGKILL
        deadline = time.time() + 120
        while time.time() < deadline and [pid for pid in children if alive(pid)]:
            time.sleep(0.2)
    else:
        assert grid.wait(120) == 128 + getattr(signal, signum), grid.stderr           # 130 for SIGINT, 143 SIGTERM
        assert grid.stderr.count("interrupted") == 1 and "Traceback" not in grid.stderr, grid.stderr
        assert f"error: interrupted by {signum}: the run in" in grid.stderr and "Resume with" not in grid.stderr
        assert "stopped with a checkpoint" in grid.stderr and "exit code" not in grid.stderr, grid.stderr
    assert not [pid for pid in children if alive(pid)]   # no orphan
    assert len(list((tmp_path / "g").glob("*/last.pt"))) >= jobs       # each running cell stopped with a checkpoint



def test_a_cell_stopped_before_its_first_checkpoint_is_said_to_start_again(tmp_path):
    """A grid's Ctrl-C before its cell's first checkpoint said "the run ... stopped (exit code 143); rerun the
    same command to go on where it stopped": 143 was the grid's own SIGTERM to the cell, and the cell (its
    folder removed) starts again. Now the line says so, without the child's code."""
    import signal

    from conftest import TINY

    from cycleseg.experiments import run_cell
    from cycleseg.gridprocs import GridInterrupted

    class Stopping:                                                 # the grid got SIGINT while the cell ran
        stopped = None

        def run(self, cmd, label):
            self.stopped = signal.SIGINT
            return 128 + signal.SIGTERM

    with pytest.raises(GridInterrupted) as e:
        run_cell(TINY + ["--mode", "partial", "--out", str(tmp_path / "c")], Stopping())
    assert str(e.value) == (f"interrupted by SIGINT: the run in {tmp_path / 'c'} stopped before its first checkpoint "
                            f"(nothing of it kept); rerun the same command to go on where it stopped (this cell starts "
                            f"again from its beginning)")


def test_a_stop_as_a_cell_finishes_says_it_finished(tmp_path):
    """SIGTERM to a grid as its cell was ending (the cell exited 0 with its final record) said the run
    "stopped with a checkpoint": it says the run had finished and is kept."""
    import shutil
    import signal

    from conftest import TINY

    from cycleseg.experiments import run_cell
    from cycleseg.gridprocs import GridInterrupted

    args = TINY + ["--mode", "partial", "--out", str(tmp_path / "c")]

    class Finishing:                                                # the cell trains whole; the stop comes as it ends
        stopped = None

        def run(self, cmd, label):
            from cycleseg.train import main as train_main
            code = train_main(cmd[3:-1] if cmd[-1] == "--resume" else cmd[3:])
            self.stopped = signal.SIGTERM
            return code

    with pytest.raises(GridInterrupted) as e:
        run_cell(args, Finishing())
    assert str(e.value) == (f"interrupted by SIGTERM: the run in {tmp_path / 'c'} had finished (it is kept); rerun "
                            f"the same command to go on where it stopped"), str(e.value)
    assert (tmp_path / "c" / "last.pt").exists()
    shutil.rmtree(tmp_path / "c")


def test_one_ctrl_c_delivered_twice_is_one_stop_with_a_checkpoint(tmp_path):
    """A terminal's Ctrl-C reaches the grid's whole process group, and GNU `timeout` (without --foreground)
    passes it to that group once more: the cell got SIGINT twice within milliseconds, took the second for a
    second Ctrl-C and stopped at once, without its checkpoint. The same stop delivered twice is one stop: the
    cell saves after its step; a Ctrl-C a second or more later still stops a run at once."""
    import os
    import signal
    import sys
    import time

    from conftest import TINY
    from procs import Proc

    from cycleseg.faults import StopSignals

    grid = Proc([sys.executable, "-m", "cycleseg.experiments", "--grid", "comparison", "--fractions", "0.5",
                 "--methods", "partial", "--seeds", "0", "--out", tmp_path / "g", "--", *TINY[:-4],
                 "--steps", "400", "--log-every", "1"])
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "g").glob("*/metrics.jsonl")):
        time.sleep(0.2)
    os.killpg(grid.p.pid, signal.SIGINT)                        # the terminal's Ctrl-C, to the group
    time.sleep(0.1)                                             # (one pending SIGINT would absorb the next)
    os.killpg(grid.p.pid, signal.SIGINT)                        # timeout's copy of it, to the group again
    assert grid.wait(120) == 130, grid.stderr
    assert "error: interrupted by SIGINT: the run in" in grid.stderr and "Traceback" not in grid.stderr, grid.stderr
    saved = list((tmp_path / "g").glob("*/last.pt"))
    assert len(saved) == 1, grid.stderr                         # the cell stopped after its step, with a checkpoint
    assert 0 < torch.load(saved[0], weights_only=True)["step"] < 400

    with StopSignals() as stop:                                 # as train holds them: copies vs a second press
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        stop._first -= StopSignals.SAME_STOP_S
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)

def test_fractions_are_named_to_their_precision_and_never_share_a_folder():
    from cycleseg.experiments import grid_cells
    from cycleseg.report import percent
    from cycleseg.usage import UsageError

    assert [percent(f) for f in (0.1, 0.104, 0.001, 1.0)] == ["10", "10.4", "0.1", "100"]
    names = [c.name for c in grid_cells("comparison", [0.1, 0.104, 0.001], methods=("partial",))]
    assert names == ["full-100pct", "partial-10pct", "partial-10.4pct", "partial-0.1pct"]
    with pytest.raises(UsageError, match="would share the folders"):
        grid_cells("comparison", [0.1, 0.10001])
    with pytest.raises(UsageError, match="1e-320 would be named 0 %"):     # was the folder partial-0pct
        grid_cells("comparison", [1e-320])


def test_method_options_reach_only_their_methods_cells(tmp_path, capsys):
    """--method-options gives one arm options of its own (FixMatch at UniMatch's rate), after the shared ones;
    options a cell owns, --help (which printed train's help and exited 0), unknown methods and unparsable text
    are refused before any cell runs, naming --method-options."""
    from cycleseg.config import get, parse_args
    from cycleseg.experiments import cell_args, method_options
    from cycleseg.usage import UsageError

    own = method_options([("fixmatch", "--lr 0.0025"), ("fixmatch", "--fm-weight 2")], ["fixmatch", "partial"])
    assert own == {"fixmatch": ["--lr", "0.0025", "--fm-weight", "2"]}
    shared = ["--lr", "0.005", "--steps", "3"]
    fm = parse_args(cell_args(Cell("fixmatch", 0.1), 0, tmp_path, None, shared, own))[0].resolved()
    partial = parse_args(cell_args(Cell("partial", 0.1), 0, tmp_path, None, shared, own))[0].resolved()
    assert (fm.lr, get(fm, "fm_weight"), fm.steps) == (0.0025, 2.0, 3) and partial.lr == 0.005
    for pairs, match in (([("semi", "--lr 1")], "not a method of this grid"),
                         ([("fixmatch", "--seed 3")], "--seed in --method-options fixmatch would be the same"),
                         ([("fixmatch", " --help")], "--help in --method-options fixmatch would print the training"),
                         ([("fixmatch", "--lr 'x")], "No closing quotation")):
        with pytest.raises(UsageError, match=match):
            method_options(pairs, ["fixmatch", "partial"])
    with pytest.raises(SystemExit):                       # the training command's own parser: one line, exit 2
        method_options([("fixmatch", "--lr nope")], ["fixmatch"])
    out = tmp_path / "g"
    assert main(["--grid", "comparison", "--fractions", "0.1", "--methods", "partial", "--seeds", "0",
                 "--method-options", "meanteacher", "--lr 1", "--out", str(out)] + TINY) == 2
    assert not out.exists()
    for word, match in (("--resume", "--resume in --method-options partial"), ("--dry-run", "--dry-run in --method-options"),
                        ("--help", "--help in --method-options partial would print"), ("-h", "--help in --method-options")):
        capsys.readouterr()                                # one option alone: refused by name ("expected 2 arguments")
        assert main(["--grid", "comparison", "--fractions", "0.1", "--methods", "partial", "--seeds", "0",
                     "--method-options", "partial", word, "--out", str(out)] + TINY) == 2
        assert match in capsys.readouterr().err and not out.exists()



def test_the_header_names_every_budget_when_one_method_trains_longer(tmp_path, capsys):
    """--method-options giving one method --steps of its own: the table's header reads the runs' budgets from
    their final records (it named the last cell's count for every run)."""
    from cycleseg.experiments import steps_text

    out = tmp_path / "g"
    assert main(["--grid", "comparison", "--fractions", "0.5", "--methods", "partial", "semi", "--seeds", "0",
                 "--method-options", "partial", "--steps 4 --eval-every 4", "--out", str(out)] + TINY) == 0
    header = (out / "results.md").read_text().splitlines()[0]
    assert "2 steps (Partial 4)," in header, header
    assert "Runs resolved to preset cpu, batch 2 (+ 2 unlabeled where a method reads them) on cpu." in header, header
    res = json.loads((out / "results.json").read_text())
    assert res["partial-50pct"]["0"]["step"] == 4 and res["semi-50pct"]["0"]["step"] == 2
    assert steps_text({Cell("semi", 0.1): {0: {"step": 7}, 1: {"step": 7}}}) == "7 steps"

def test_a_grid_on_volumes_reports_hd95_and_asd_of_the_last_checkpoints(tmp_path, monkeypatch, make_acdc):
    """On data with volumes (ACDC) each cell's last checkpoint is also scored by `python -m cycleseg.evaluate`
    (<cell>/eval-final): results.md and seeds.csv carry its HD95 and ASD, equal to the report's; a rerun reads
    the reports again instead of evaluating again."""
    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ACDC"
    make_acdc(root, patients=tuple(range(1, 11)))
    out = tmp_path / "grid"
    argv = ["--grid", "comparison", "--data", str(root), "--fractions", "0.3", "--methods", "partial", "--seeds", "0",
            "--out", str(out), "--", "--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "16",
            "--batch-size", "2", "--device", "cpu", "--preset", "cpu", "--steps", "2", "--eval-every", "2"]
    assert main(argv) == 0
    table = (out / "results.md").read_text()
    assert "| volume Dice | HD95 | ASD | seeds |" in table and "per-volume means, in voxels" in table
    header, *rows = (out / "seeds.csv").read_text().splitlines()
    assert header == "mode,labeled_fraction,ablation,seed,miou,volume_mdice,volume_hd95,volume_asd"
    for row in rows:
        mode, frac, _, seed, *_, hd95, asd = row.split(",")
        report = json.loads((out / f"{mode}-{round(100 * float(frac))}pct-seed{seed}" / "eval-final" /
                             "report.json").read_text())["volumes"]["mean"]
        for value, key in ((hd95, "hd95"), (asd, "asd")):
            assert (value == "" and report[key] is None) or float(value) == pytest.approx(report[key], abs=1e-6)
    found = out / "partial-30pct-seed0" / "eval-final" / "report.json"
    stamp, good = found.stat().st_mtime_ns, found.read_text()
    assert main(argv) == 0
    assert found.stat().st_mtime_ns == stamp
    # a report of another evaluation (other data), damaged or edited: evaluated again, never taken in
    other = json.loads(good)
    other["slices"]["miou"] += 0.05
    other["volumes"]["mean"]["hd95"] = 99.0
    endless = json.loads(good)
    endless["volumes"]["mean"]["hd95"] = float("inf")               # a hand-written 1e999
    for text in (json.dumps(other), "{", "[]", json.dumps({"volumes": {"mean": {"hd95": "x"}}}), json.dumps(endless)):
        found.write_text(text)
        assert main(argv) == 0
        assert json.loads(found.read_text()) == json.loads(good) and "99.0" not in (out / "seeds.csv").read_text()
    # a final record edited by hand: its checkpoint does not score it
    metrics = out / "partial-30pct-seed0" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["split"] == "val"
    metrics.write_text("\n".join(lines[:-1] + [json.dumps(dict(last, miou=0.99))]) + "\n")
    assert main(argv) == 2


def test_a_cell_killed_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    """A grid and its cell killed together (SIGKILL, a machine going down) before the cell's first checkpoint
    leave config.json and a few records but no last.pt: rerunning the grid trains that cell again from step 0
    (it refused the folder before); a config.json of another configuration is refused, naming the field."""
    out = tmp_path / "g"
    argv = ["--grid", "comparison", "--fractions", "0.5", "--methods", "partial", "--seeds", "0", "--out", str(out)]
    assert main(argv + TINY) == 0
    cell = out / "partial-50pct-seed0"
    first = json.loads((out / "results.json").read_text())["partial-50pct"]["0"]["miou"]
    for name in ("last.pt", "best.pt"):
        (cell / name).unlink()                                         # as if killed at its first steps
    lines = (cell / "metrics.jsonl").read_text().splitlines()
    (cell / "metrics.jsonl").write_text(lines[0] + "\n")
    assert main(argv + TINY) == 0
    assert (cell / "last.pt").exists()
    again = json.loads((out / "results.json").read_text())["partial-50pct"]["0"]["miou"]
    assert again == pytest.approx(first, abs=1e-6)                       # the same run, trained again from step 0
    (cell / "last.pt").unlink()
    (cell / "best.pt").unlink()
    config = json.loads((cell / "config.json").read_text())
    config["lr"] = 0.123
    (cell / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(argv + TINY) == 2
    err = capsys.readouterr().err
    assert "config.json: a run of another configuration than this cell's (lr 0.123 where" in err, err
    assert not (cell / "last.pt").exists()                                # nothing trained over it


def test_a_rerun_on_other_data_does_not_take_the_finished_cells(tmp_path, capsys):
    """The grid's --data now holds other images (converted again, edited): a rerun must not put the cells
    trained on the old content into the new table; it names the fingerprints and trains nothing."""
    data = tmp_path / "data"
    data.mkdir()
    split(data / "train.h5", 0)
    split(data / "val.h5", 1)
    argv = ["--grid", "comparison", "--data", str(data), "--fractions", "0.5", "--methods", "partial", "--seeds", "0",
            "--out", str(tmp_path / "g")]
    assert main(argv + TINY) == 0
    stamp = (tmp_path / "g" / "partial-50pct-seed0" / "last.pt").stat().st_mtime_ns
    split(data / "train.h5", 2)                                        # same path, other images
    capsys.readouterr()
    assert main(argv + TINY) == 2
    err = capsys.readouterr().err
    assert "read other train data than" in err and "content fingerprint" in err, err
    assert (tmp_path / "g" / "partial-50pct-seed0" / "last.pt").stat().st_mtime_ns == stamp


def test_an_edited_final_record_is_refused_on_data_without_volumes(tmp_path, capsys):
    """Data without volumes (an image folder's conversion) has no HD95 to evaluate, but its cells' final
    records are checked against their last checkpoints all the same: one edited by hand is refused."""
    data = tmp_path / "data"
    data.mkdir()
    split(data / "train.h5", 0)
    split(data / "val.h5", 1)
    out = tmp_path / "g"
    argv = ["--grid", "comparison", "--data", str(data), "--fractions", "0.5", "--methods", "partial", "--seeds", "0",
            "--out", str(out)] + TINY
    assert main(argv) == 0
    found = out / "partial-50pct-seed0" / "eval-final" / "report.json"
    assert "volumes" not in json.loads(found.read_text())
    stamp = found.stat().st_mtime_ns
    assert main(argv) == 0 and found.stat().st_mtime_ns == stamp      # a rerun reads the evaluation again
    metrics = out / "partial-50pct-seed0" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["split"] == "val" and "volume_mdice" not in last
    metrics.write_text("\n".join(lines[:-1] + [json.dumps(dict(last, miou=last["miou"] + 0.3))]) + "\n")
    capsys.readouterr()
    assert main(argv) == 2
    assert "its last.pt does not score that" in capsys.readouterr().err


def test_a_grid_whose_data_moved_takes_its_cells_at_the_new_path(tmp_path, capsys):
    """The data folder moved, its content the same: the grid rerun with --data at the new path takes its
    finished cells (it refused them as "a run of another configuration (data ...)"); other content there is
    still refused by its fingerprint."""
    data = tmp_path / "data"
    data.mkdir()
    split(data / "train.h5", 0)
    split(data / "val.h5", 1)
    argv = ["--grid", "comparison", "--fractions", "0.5", "--methods", "partial", "--seeds", "0", "--out", str(tmp_path / "g")]
    assert main(argv + ["--data", str(data)] + TINY) == 0
    first = (tmp_path / "g" / "results.csv").read_text()
    stamp = (tmp_path / "g" / "partial-50pct-seed0" / "last.pt").stat().st_mtime_ns
    data.rename(tmp_path / "moved")
    assert main(argv + ["--data", str(tmp_path / "moved")] + TINY) == 0
    assert (tmp_path / "g" / "partial-50pct-seed0" / "last.pt").stat().st_mtime_ns == stamp
    assert (tmp_path / "g" / "results.csv").read_text() == first
    split(tmp_path / "moved" / "train.h5", 2)
    capsys.readouterr()
    assert main(argv + ["--data", str(tmp_path / "moved")] + TINY) == 2
    assert "read other train data than" in capsys.readouterr().err


def test_a_grid_replaces_only_its_own_results_and_drops_stale_ones(tmp_path, capsys):
    """A user's results.md in --out was replaced without a word; a rerun with fewer methods left the
    earlier pictures.png (semi against Partial) beside results without semi, and one with semi alone drew
    the Partial run an earlier grid left in the folder. Now the first is refused before any cell, the grid's
    own set is replaced whole, and its pictures show its own arms only."""
    out = tmp_path / "g"
    out.mkdir()
    (out / "results.md").write_text("my notes")
    argv = ["--grid", "comparison", "--fractions", "0.5", "--seeds", "0", "--out", str(out)]
    capsys.readouterr()
    assert main(argv + ["--methods", "partial", "semi"] + TINY) == 2
    assert "holds no grid's results.json" in capsys.readouterr().err
    assert (out / "results.md").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == ["results.md"]
    (out / "results.md").unlink()
    assert main(argv + ["--methods", "partial", "semi"] + TINY) == 0
    assert (out / "pictures.png").exists()
    assert main(argv + ["--methods", "partial"] + TINY) == 0
    assert not (out / "pictures.png").exists() and "semi" not in (out / "results.json").read_text()
    assert main(argv + ["--methods", "semi"] + TINY) == 0          # the Partial run left there is no arm of it
    assert not (out / "pictures.png").exists() and "partial" not in (out / "results.json").read_text()


def test_a_grid_that_fails_before_any_cell_wrote_leaves_no_folder(tmp_path, monkeypatch, capsys):
    """A grid whose first cell fails before its first checkpoint (a full disk, a crash) leaves neither the
    cell's folder nor the grid folder it made; a folder the user made stays."""
    import os
    import sys

    import cycleseg.gridprocs as gridprocs

    faulty = os.path.join(os.path.dirname(__file__), "faulty_train.py")
    real_run = gridprocs.Children.run

    def failing_cell(self, cmd, label=None, quiet=False):          # the real training child, failing after step 1
        return real_run(self, [sys.executable, faulty, *cmd[3:]], label, quiet)

    monkeypatch.setattr(gridprocs.Children, "run", failing_cell)
    monkeypatch.setenv("FAIL_AT", "0:1")
    argv = ["--grid", "comparison", "--fractions", "0.5", "--methods", "partial", "--seeds", "0"]
    assert main(argv + ["--out", str(tmp_path / "g")] + TINY) == 2
    assert "failed" in capsys.readouterr().err and not (tmp_path / "g").exists()
    (tmp_path / "mine").mkdir()
    assert main(argv + ["--out", str(tmp_path / "mine")] + TINY) == 2
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_a_grid_folder_is_held_by_one_grid_and_must_be_a_folder(tmp_path, capsys):
    """Two grids on one folder would train and evaluate the same cells at once (the loser failed at a cell's
    lock or at the winner's evaluation, advising an --overwrite the grid has not): the second is refused in
    one line before any cell. An --out that is a file or a link to nothing is refused before any cell."""
    import fcntl
    import os

    argv = ["--grid", "comparison", "--fractions", "0.5", "--methods", "partial", "--seeds", "0"]
    out = tmp_path / "g"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)                   # what a running grid holds
    try:
        assert main(argv + ["--out", str(out)] + TINY) == 2
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert "in use by another grid" in err and "[1/" not in err and not list(out.iterdir()), err
    (tmp_path / "f").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name, what in (("f", "a file"), ("dangling", "a link to nothing")):
        assert main(argv + ["--out", str(tmp_path / name)] + TINY) == 2
        err = capsys.readouterr().err
        assert f"{what}, not a folder" in err and "[1/" not in err and err.count("error:") == 1, err
    assert (tmp_path / "f").read_text() == "mine" and not (tmp_path / "nowhere").exists()


def test_no_cell_starts_after_one_failed_and_a_killed_cell_is_no_stop_of_the_grid():
    """--jobs: a worker freed by a failure took the next cell at once (a whole training before the error was
    reported); a cell SIGKILLed (the out-of-memory killer) was reported as the grid killed, exit 137."""
    import signal
    import threading
    import time

    from cycleseg.experiments import stopped
    from cycleseg.gridprocs import Children, GridInterrupted, run_tasks

    started, lock, one = [], threading.Lock(), threading.Event()

    def work(t):
        with lock:
            started.append(t)
        if t == 1:
            one.set()
        if t == 0:
            one.wait(10)                                                # both workers busy, then cell 0 fails
            raise ValueError("cell 0 failed")
        time.sleep(0.5)
        return t

    with pytest.raises(ValueError, match="cell 0 failed"):
        list(run_tasks([0, 1, 2, 3], work, jobs=2))
    assert sorted(started) == [0, 1], started
    stopped(Children(), -signal.SIGKILL, "x")                           # not the grid's stop: the run's failure
    with pytest.raises(GridInterrupted):
        stopped(Children(), 128 + signal.SIGTERM, "x")


@pytest.mark.timeout(300)
def test_a_special_file_where_a_grid_reads_or_writes_is_refused(tmp_path, capsys):
    """A FIFO as a cell's eval-final/report.json or as the grid's results.json blocked the grid for good
    (and no stop signal reached it: it had no child to forward one to)."""
    import os

    argv = ["--grid", "comparison", "--fractions", "0.5", "--methods", "partial", "--seeds", "0", "--out",
            str(tmp_path / "g")] + TINY
    assert main(argv) == 0
    report = tmp_path / "g" / "partial-50pct-seed0" / "eval-final" / "report.json"
    report.unlink()
    os.mkfifo(report)
    capsys.readouterr()
    assert main(argv) == 2
    assert "report.json is a folder or special file" in capsys.readouterr().err
    report.unlink()
    (tmp_path / "g" / "results.json").unlink()
    os.mkfifo(tmp_path / "g" / "results.json")
    assert main(argv) == 2
    assert "results.json is a folder or special file where the grid writes" in capsys.readouterr().err


def test_a_grid_cell_leaves_the_stop_line_to_its_grid_and_a_gone_terminal_is_no_error(monkeypatch, capsys):
    """A cell stopped while it started or evaluated printed its own `error: stopped by` line beside the grid's;
    a closed terminal (EIO on stderr) turned a stop into exit 1 with a traceback."""
    import signal
    import sys

    from cycleseg.usage import say, stopped

    monkeypatch.setenv("CYCLESEG_GRID_CELL", "1")
    assert stopped(signal.SIGTERM) == 143 and capsys.readouterr().err == ""
    monkeypatch.delenv("CYCLESEG_GRID_CELL")
    assert stopped(signal.SIGHUP) == 129 and "stopped by SIGHUP" in capsys.readouterr().err

    class Gone:
        def write(self, text):
            raise OSError(5, "Input/output error")

        def flush(self):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(sys, "stderr", Gone())
    say("error: stopped by SIGHUP")                                     # no exception
    assert stopped(signal.SIGHUP) == 129


def test_fractions_that_label_one_subset_are_refused_and_a_rounded_one_is_noted(tmp_path, capsys):
    """--fractions 0.501 0.502 on data of 8 patients labeled 4 patients in both cells, which ran as two cells
    with identical scores; 0.3 labeled 2 of 8 patients (25 %) and was tabled as 30 %. The first is refused
    before any cell trains, the second noted."""
    from cycleseg.data.h5format import Meta, write_split

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        write_split(tmp_path / "d" / f"{split}.h5", rng.integers(0, 256, (n, 32, 32, 1), dtype=np.uint8),
                    rng.integers(0, 3, (n, 32, 32), dtype=np.uint8),
                    Meta(num_classes=3, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, labeled_subset="first_groups"),
                    groups=np.repeat(np.arange(n // 2), 2))
    base = ["--grid", "comparison", "--data", str(tmp_path / "d"), "--methods", "partial", "--seeds", "0",
            "--out", str(tmp_path / "g")]
    assert main(base[:4] + ["--fractions", "0.501", "0.502"] + base[4:] + TINY) == 2
    assert "--fractions 0.501 and 0.502 label the same images of this data (4 of 8 groups (patients), 50 %)" in \
        capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    assert main(base[:4] + ["--fractions", "0.3"] + base[4:] + TINY) == 0
    assert "note: --fractions 0.3 labels 2 of 8 groups (patients), 25 %; the tables name it 30 %" in capsys.readouterr().err
