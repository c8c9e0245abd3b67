"""Every user error of every command: one line (`error: ...`) naming what was wrong, exit status 2, and
nothing written or replaced. One table per command; each row is a mistake a user made (or a hostile
file), found by probing the commands."""
import fcntl
import json
import os

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from cycleseg.data.__main__ import main as data_main
from cycleseg.data.h5format import Meta, write_split
from cycleseg.evaluate import main as evaluate_main
from cycleseg.experiments import main as experiments_main
from cycleseg.predict import main as predict_main
from cycleseg.train import main as train_main

TINY = ["--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "16", "--batch-size", "2", "--no-progress",
        "--device", "cpu", "--preset", "cpu", "--steps", "2", "--eval-every", "2"]


def snapshot(root):
    """{relative path: bytes} of every file below root (what 'nothing written or replaced' compares)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(main, argv, capsys, match: str, root):
    """main(argv) exits 2 with exactly one line on stderr, `error: ...` containing `match`; nothing under
    root changed."""
    before = snapshot(root)
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:                                         # argparse errors exit from inside main
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert snapshot(root) == before, "a file was written or replaced"
    return err[0]


def tiny_split(path, side, n=6, k=3, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, side, side, channels), dtype=np.uint8)
    masks = rng.integers(0, k, (n, side, side), dtype=np.uint8)
    write_split(path, images, masks, Meta(num_classes=k, class_names=[str(i) for i in range(k)],
                                         palette=[[0, 0, 0]] * k))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny semi run on the built-in data (last.pt, best.pt, metrics, samples)."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert train_main(TINY + ["--out", str(out)]) == 0
    return out


# -- training ------------------------------------------------------------------------------------------

TRAIN_OPTIONS = [
    (["--image-size", "30"], "--image-size 30: the networks need a multiple of 4"),
    (["--image-size", "10000000"], "at most 4096"),
    (["--ngf", "100000"], "--ngf must be in 1..1024"),
    (["--ndf", "0"], "--ndf must be in 1..1024"),
    (["--n-blocks", "1000"], "--n-blocks must be in 1..64"),
    (["--batch-size", "100000"], "--batch-size must be in 1..4096"),
    (["--mode", "meanteacher", "--mt-noise", "1e300"], "--mt-noise must be in [0, 2]"),
    (["--pool-size", "100000000"], "--pool-size must be in 0..1000"),
    (["--prefetch", "100000"], "--prefetch must be in 1..64"),
    (["--labeled-fraction", "1e-9"], "--labeled-fraction 1e-09 of 100 patients (groups) labels less than half of one"),
    (["--mode", "adversarial", "--image-size", "16"], "at least 32"),
    (["--lr", "-1"], "--lr must be in (0, 10]"),
    (["--lr", "1e300"], "--lr must be in (0, 10]"),
    (["--lr-d", "0"], "--lr-d must be in (0, 10]"),
    (["--pool-size", "-1"], "--pool-size must be in 0..1000"),
    (["--dropout", "2"], "--dropout must be in [0, 1)"),
    (["--beta1", "1.5"], "--beta1 must be in [0, 1)"),
    (["--labeled-fraction", "0"], "--labeled-fraction must be in (0, 1]"),
    (["--steps", "0"], "--steps must be in 1..10^9"),
    (["--stop-after", "0"], "--stop-after must be in 1..10^9"),
    (["--steps", "99999999999999999999"], "--steps must be in 1..10^9"),
    (["--eval-every", str(10 ** 20)], "--eval-every must be in 1..10^9"),
    (["--lambda2", "-0.5"], "--lambda2 must be in [0, 1000]"),
    (["--lambda1", "1e300"], "--lambda1 must be in [0, 1000]"),
    (["--mode", "fixmatch", "--fm-weight", "1e6"], "--fm-weight must be in [0, 1000]"),
    (["--device", "bogus"], "--device 'bogus': not a device"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--lr", "abc"], "invalid float value: 'abc'"),
    (["--mode", "fullest"], "invalid choice: 'fullest'"),
    (["--steps", "1_000"], "invalid int value: '1_000' (a whole number written plainly: digits and an optional "
                           "sign)"),                                # int() read 1000
    (["--steps", "1e3"], "invalid int value: '1e3' (a whole number written plainly: digits and an optional sign)"),
    (["--lambda1", "1_0.5"], "invalid float value: '1_0.5' (a number written plainly"),  # float() read 10.5
    (["--lr", " 0.1"], "invalid float value: ' 0.1' (a number written plainly"),
]


@pytest.mark.parametrize("extra, match", TRAIN_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_training_options(tmp_path, capsys, extra, match):
    one_line_error(train_main, TINY + ["--out", tmp_path / "r"] + extra, capsys, match, tmp_path)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("side", [1, 4, 30])
def test_training_data_the_networks_cannot_read(tmp_path, capsys, side):
    tiny_split(tmp_path / "train.h5", side)
    tiny_split(tmp_path / "val.h5", side)
    one_line_error(train_main, TINY + ["--data", tmp_path / "train.h5", "--out", tmp_path / "r"], capsys,
                   f"images {side}x{side}: the networks need a multiple of 4", tmp_path)


def test_data_of_one_class_is_refused_by_the_converters_and_by_training(tmp_path, capsys):
    """Labels that are all background gave a 1-class file (exit 0) whose training ended in an IndexError
    traceback at its first validation, with a run folder and no checkpoint: both converters refuse such
    masks, and a 1-class file made otherwise is refused by training before anything is written."""
    import h5py
    import nibabel as nib

    src = folder_tree(tmp_path / "f", [np.zeros((8, 8), np.uint8)] * 2)
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "o.h5", "--no-progress"], capsys,
                   "the masks hold 1 class (0) alone; a segmentation needs at least 2", tmp_path)
    scans = tmp_path / "n"
    for sub, data in (("images", np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)),
                      ("labels", np.zeros((8, 8, 3), np.uint8))):
        (scans / sub).mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(scans / sub / "a.nii.gz"))
    one_line_error(data_main, ["convert", "nifti", scans, tmp_path / "o.h5", "--split", "all", "--size", "8", "8",
                               "--no-progress"], capsys, "a segmentation needs at least 2", tmp_path)
    (tmp_path / "d").mkdir()
    for name in ("train.h5", "val.h5"):
        tiny_split(tmp_path / "d" / name, 16, k=2)
        with h5py.File(tmp_path / "d" / name, "r+") as f:                # made by hand: 1 class
            f["masks"][...] = 0
            f.attrs["num_classes"], f.attrs["class_names"], f.attrs["palette"] = 1, '["bg"]', "[[0, 0, 0]]"
    one_line_error(train_main, TINY + ["--data", tmp_path / "d", "--out", tmp_path / "r"], capsys,
                   "num_classes is 1; a segmentation needs at least 2 classes", tmp_path)


def test_validating_on_the_training_file_is_noted(tmp_path, capsys):
    """--val-data naming the training file itself trains (a user may want the fit), with a note that the
    validation scores are not of unseen images (it passed without a word)."""
    tiny_split(tmp_path / "train.h5", 16, n=8)
    assert train_main([str(a) for a in TINY + ["--data", tmp_path / "train.h5", "--val-data", tmp_path / "train.h5",
                                               "--out", tmp_path / "r", "--labeled-fraction", "0.5"]]) == 0
    assert "note: the val split is the training file" in capsys.readouterr().err


def test_a_folder_holding_a_run_is_never_trained_into(finished_run, capsys):
    one_line_error(train_main, TINY + ["--out", finished_run], capsys, "already holds a run", finished_run)
    (finished_run / "last.pt").rename(finished_run / "moved.pt")    # results (best.pt) but nothing to resume
    try:
        for resume in ([], ["--resume"]):
            one_line_error(train_main, TINY + ["--out", finished_run, *resume], capsys,
                           "holds a run (config.json, metrics.jsonl, best.pt, samples/) but no last.pt", finished_run)
    finally:
        (finished_run / "moved.pt").rename(finished_run / "last.pt")


def test_a_run_refuses_other_data_under_its_data_path(tmp_path, capsys):
    """A folder of the same name, or a file converted again, under the path a run recorded: a resume and
    the run's own evaluation refuse it in one line naming the split (its content fingerprint differs); the
    same images written again pass, and data named with --data is scored as asked."""
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    tiny_split(data / "train.h5", 16, n=8)
    tiny_split(data / "val.h5", 16, n=4)
    assert train_main(TINY + ["--data", str(data), "--out", str(run), "--stop-after", "1", "--mode", "full"]) == 0
    tiny_split(data / "train.h5", 16, n=8, seed=1)                   # other images, same shapes and count
    one_line_error(train_main, TINY + ["--data", data, "--out", run, "--resume", "--mode", "full", "--steps", "4"],
                   capsys, "its run read other train data than", run)     # one line: no "resuming ... with --steps 4"
    tiny_split(data / "train.h5", 16, n=8)                           # the run's images again
    tiny_split(data / "val.h5", 16, n=4, seed=1)
    one_line_error(evaluate_main, [run / "last.pt", "--no-progress"], capsys, "its run read other val data", run)
    assert evaluate_main([str(run / "last.pt"), "--data", str(data), "--out", str(tmp_path / "e"),
                          "--no-progress"]) == 0
    tiny_split(data / "val.h5", 16, n=4)
    assert train_main(TINY + ["--data", str(data), "--out", str(run), "--resume", "--mode", "full"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2
    data.rename(tmp_path / "moved")                                 # it named <parent>/val.h5, not the folder
    one_line_error(evaluate_main, [run / "last.pt", "--out", tmp_path / "e2", "--no-progress"], capsys,
                   f"{data}: no such file or folder (the data; a run records its absolute path", run)
    # the data moved, its content the same: a resume given its new path goes on there (was refused: "--data
    # differs from the checkpoint's ... drop the option", a dead end after "give --data where it is now")
    capsys.readouterr()
    assert train_main(TINY + ["--data", str(tmp_path / "moved"), "--out", str(run), "--resume", "--mode", "full",
                              "--steps", "4"]) == 0
    assert "read only if its content is the run's" in capsys.readouterr().err
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 4
    assert json.loads((run / "config.json").read_text())["data"] == str(tmp_path / "moved")
    tiny_split(tmp_path / "moved" / "train.h5", 16, n=8, seed=1)     # other content at the new path: refused
    one_line_error(train_main, TINY + ["--data", tmp_path / "moved", "--out", run, "--resume", "--mode", "full",
                                       "--steps", "6"], capsys, "its run read other train data than", run)


def test_a_split_fingerprint_follows_its_content(tmp_path):
    """The digest a run records: equal for the same images in another file (compressed, other chunks),
    different for one changed pixel of any image or mask."""
    from cycleseg.data.source import H5Source

    a = tiny_split(tmp_path / "a.h5", 16, n=8)
    with h5py.File(a) as f, h5py.File(tmp_path / "b.h5", "w") as g:
        for k in f:
            g.create_dataset(k, data=f[k][...], compression="gzip", chunks=True)
        g.attrs.update(f.attrs)
    prints = {p: H5Source(tmp_path / p).fingerprint() for p in ("a.h5", "b.h5")}
    assert prints["a.h5"] == prints["b.h5"]
    for ds, idx in (("images", (7, 3, 3, 0)), ("masks", (0, 5, 5))):
        with h5py.File(tmp_path / "b.h5", "r+") as g:
            g[ds][idx] = (int(g[ds][idx]) + 1) % 3
        assert H5Source(tmp_path / "b.h5").fingerprint() != prints["a.h5"]
        with h5py.File(tmp_path / "b.h5", "r+") as g, h5py.File(a) as f:
            g[ds][...] = f[ds][...]
        assert H5Source(tmp_path / "b.h5").fingerprint() == prints["a.h5"]


@pytest.mark.parametrize("extra, match", [
    (["--batch-size", "4"], "--batch-size 4 differs from the checkpoint's 2: a resumed run keeps the data"),
    (["--ngf", "8"], "--ngf 8 differs from the checkpoint's 4: a resumed run keeps the networks' shapes"),
    (["--mode", "partial"], "--mode partial differs from the checkpoint's semi"),
    (["--seed", "3"], "keeps the seed"),
])
def test_a_resume_refuses_what_it_cannot_change(finished_run, capsys, extra, match):
    one_line_error(train_main, TINY + ["--out", finished_run, "--resume", *extra], capsys, match, finished_run)


def test_a_resume_below_the_step_reached_is_refused_or_trains_nothing(finished_run, tmp_path, capsys):
    """--steps below the step a run reached is refused (it was a no-op that rewrote config.json's steps); a
    finished run resumed, or --stop-after at or below the step reached, trains nothing, says so, and prints
    the last validation scores (not null)."""
    one_line_error(train_main, TINY + ["--out", finished_run, "--resume", "--steps", "1"], capsys,
                   "--steps 1 is below the step", finished_run)
    last = (finished_run / "last.pt").read_bytes()
    assert train_main(TINY + ["--out", str(finished_run), "--resume"]) == 0
    out, err = capsys.readouterr()
    final = [r for r in map(json.loads, (finished_run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"]
    assert json.loads(out)["miou"] == pytest.approx(final[-1]["miou"]) and "done earlier: 2 steps" in err
    assert (finished_run / "last.pt").read_bytes() == last
    run = tmp_path / "stopped"
    assert train_main(TINY + ["--out", str(run), "--steps", "4", "--stop-after", "2"]) == 0
    capsys.readouterr()
    last = (run / "last.pt").read_bytes()
    for stop in ("1", "2"):
        assert train_main(TINY + ["--out", str(run), "--resume", "--steps", "4", "--stop-after", stop]) == 0
        out, err = capsys.readouterr()
        assert f"is already at step 2 (--stop-after {stop}): nothing to train" in err, err
        assert json.loads(out)["miou"] is not None and (run / "last.pt").read_bytes() == last


def test_a_damaged_last_checkpoint_says_what_to_do(tmp_path, capsys):
    """A last.pt damaged after it was written (random bytes, cut short): --resume names it, says the file is
    corrupt without torch's weights_only advice (loading it unsafely would not help), and what to do."""
    run = tmp_path / "r"
    assert train_main(TINY + ["--out", str(run)]) == 0
    data = (run / "last.pt").read_bytes()
    for damaged in (data[:len(data) // 3], os.urandom(len(data))):
        (run / "last.pt").write_bytes(damaged)
        err = one_line_error(train_main, TINY + ["--out", run, "--resume"], capsys,
                             "last.pt: could not be read as a checkpoint: the file is corrupt, truncated", tmp_path)
        assert "train again into another --out" in err and "its best.pt still evaluates" in err
        assert "weights_only" not in err and "file an issue" not in err


def _set(key, value):
    return lambda s: s.__setitem__(key, value)


def _rank0(key, value):
    return lambda s: s["ranks"][0].__setitem__(key, value)


RUN_STATE_EDITS = {
    "ranks missing": (lambda s: s.pop("ranks"), "'ranks' must be a non-empty list"),
    "ranks empty": (_set("ranks", []), "'ranks' must be a non-empty list"),
    "rng of floats": (lambda s: s["ranks"][0]["rng"].__setitem__("torch", torch.zeros(8)), "'rng' must hold torch's"),
    "rng a string": (_rank0("rng", "seed"), "must hold dicts 'pools', 'streams' and 'rng'"),
    "optimizers a list": (_set("optimizers", [1]), "'optimizers' must map names to state dicts"),
    "an optimizer of another kind": (lambda s: s["optimizers"].__setitem__("G", {"state": 5, "param_groups": 3}),
                                     "does not match this run's networks, optimizers"),
    "a pool of another kind": (lambda s: s["ranks"][0]["pools"].__setitem__("seg", 3), "pool 'seg' must have"),
    "plan flags a string": (lambda s: s["plan"].__setitem__("fused_ops", "yes"), "plan's fused_ops must be true"),
    "a stream at pass -1": (lambda s: next(iter(s["ranks"][0]["streams"].values())).__setitem__("pass", -1),
                            "must have a pass and a position"),
    "a stream position far beyond its pass": (lambda s: next(iter(s["ranks"][0]["streams"].values())).__setitem__(
        "pos", 10 ** 15), "saved position 1000000000000000 in a pass of"),
    "a stream pass no run of its steps reaches": (lambda s: next(iter(s["ranks"][0]["streams"].values())).__setitem__(
        "pass", 10 ** 15), "saved pass 1000000000000000 after"),
    "a step the schedules never reached": (lambda s: s.__setitem__("step", s["step"] - 1), "the checkpoint's step is 1"),
    "betas no optimizer takes": (lambda s: [g.__setitem__("betas", (2.0, 0.999)) for o in s["optimizers"].values()
                                            for g in o["param_groups"] if "betas" in g], "'s betas is (2.0, 0.999)"),
    "an optimizer's state emptied": (lambda s: [o.__setitem__("state", {}) for o in s["optimizers"].values()],
                                     "holds no state after"),
    "an optimizer counting steps never made": (lambda s: [v.__setitem__("step", torch.tensor(1e9)) for o in
                                                          s["optimizers"].values() for v in o["state"].values()],
                                               "counts 1e+09 steps"),
    "a stream position a run could have": (lambda s: next(iter(s["ranks"][0]["streams"].values())).__setitem__(
        "pos", 0), "the digest it was saved with differs"),
    "a plan flag flipped": (lambda s: s["plan"].__setitem__("fused_ops", not s["plan"]["fused_ops"]),
                            "the digest it was saved with differs"),
    "best_miou a string": (_set("best_miou", "0.5"), "'best_miou' must be a number"),
    "best_miou None": (_set("best_miou", None), "'best_miou' must be a number"),
    "best_miou NaN": (_set("best_miou", float("nan")), "'best_miou' must be a number"),
}


@pytest.mark.parametrize("case", sorted(RUN_STATE_EDITS))
def test_a_resume_from_an_edited_checkpoint_says_what_is_wrong(finished_run, tmp_path, capsys, case):
    """The parts a resume restores (processes' states, optimizers, pools, plan, best score), of another kind:
    one line before anything is trained or written, not a traceback steps later (or, best_miou NaN, a best.pt
    that never updates again)."""
    import shutil

    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    edit, match = RUN_STATE_EDITS[case]
    state = torch.load(run / "last.pt", weights_only=True)
    edit(state)
    torch.save(state, run / "last.pt")
    one_line_error(train_main, TINY + ["--out", run, "--resume"], capsys, match, tmp_path)


def test_a_folder_in_use_by_another_training_is_refused(finished_run, capsys):
    fd = os.open(finished_run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)                  # what a running training holds
    try:
        one_line_error(train_main, TINY + ["--out", finished_run, "--resume", "--steps", "4"], capsys,
                       "is in use by another training process", finished_run)
    finally:
        os.close(fd)


def test_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("not a folder")
    one_line_error(train_main, TINY + ["--out", tmp_path / "f"], capsys, "is a file, not a folder", tmp_path)


# -- evaluate and predict --------------------------------------------------------------------------------

def edited(ckpt, tmp_path, name, edit):
    """A copy of a checkpoint with `edit(state)` applied (a hand-edited or hostile file)."""
    state = torch.load(ckpt, weights_only=True)
    edit(state)
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    return path


def _config(**kv):
    return lambda s: s["config"].update(kv)


CHECKPOINT_EDITS = {
    "config not a dict": (_set("config", [1, 2]), "'config' must be a dict"),
    "nets an int": (_set("nets", 3), "'nets' must map network names to state dicts"),
    "nets without G_IS": (lambda s: s["nets"].pop("G_IS"), "no G_IS among its networks"),
    "G_IS not a state dict": (lambda s: s["nets"].__setitem__("G_IS", {"w": 1}), "must hold dense real tensors; w is a int"),
    "a key not a string": (lambda s: s["nets"]["G_IS"].__setitem__(7, torch.zeros(1)), "must map parameter names to tensors"),
    "a complex weight": (lambda s: s["nets"]["G_IS"].__setitem__("model.1.weight", torch.full((2, 2), complex("nan"))),
                         "model.1.weight is a torch.strided torch.complex64 tensor"),
    "a sparse weight": (lambda s: s["nets"]["G_IS"].__setitem__("model.1.weight", torch.eye(3).to_sparse()),
                        "model.1.weight is a torch.sparse_coo torch.float32 tensor"),
    "foreign networks": (lambda s: (s.__setitem__("config", {}), s.__setitem__("data", {}),
                                    s.__setitem__("nets", {"G_IS": {"w": torch.zeros(3)}})),
                         "its G_IS weights are not those of a cycleseg generator"),
    "a tensor in preprocessing": (lambda s: s["data"].__setitem__("preprocessing", {"spacing": torch.ones(2)}),
                                  "preprocessing holds a value that is not plain data"),
    "step a string": (_set("step", "ten"), "'step' must be a whole number"),
    "step negative": (_set("step", -4), "'step' must be a whole number"),
    "step beyond its steps": (_set("step", 10 ** 12), "'step' 1000000000000 is beyond its config's --steps"),
    "unknown mode": (_config(mode="fancy"), "mode must be one of"),
    "negative ngf": (_config(ngf=-8), "--ngf must be in 1..1024"),
    "zero n_blocks": (_config(n_blocks=0), "--n-blocks must be in 1..64"),
    "ngf a string": (_config(ngf="8"), "its config is not valid"),
    "unknown recipe": (_config(recipe="secret"), "recipe must be one of"),
    "unknown preset": (_config(preset="huge"), "preset must be one of"),
    "huge image size": (_config(image_size=10 ** 7), "at most 4096"),
    "odd image size": (_config(image_size=30), "multiple of 4"),
    "negative lr": (_config(lr=-1.0), "--lr must be in (0, 10]"),
    "classes a string": (lambda s: s["data"].__setitem__("num_classes", "five"), "classes"),
    "two channels": (lambda s: s["data"].__setitem__("channels", 2), "2 channels"),
    "data 1x1": (lambda s: s["data"].update(height=1, width=1), "its data's image size 1"),
    "data height a string": (lambda s: s["data"].update(height="16"), "its data's description: height '16' (expected a whole number"),
    "fingerprints a list": (lambda s: s["data"].__setitem__("fingerprints", ["x"]), "its data's fingerprints"),
    "class_names too short": (lambda s: s["data"].__setitem__("class_names", ["bg"]), "class_names ['bg']"),
    "preprocessing a string": (lambda s: s["data"].__setitem__("preprocessing", "x"), "preprocessing 'x'"),
    "slice_axis True": (lambda s: s["data"].__setitem__("preprocessing", {"slice_axis": True}),
                        "preprocessing slice_axis True"),
    "ignore_index 300": (lambda s: s["data"].__setitem__("ignore_index", 300), "ignore_index 300"),
    "ignore_index a class id": (lambda s: s["data"].__setitem__("ignore_index", 1),
                                "ignore_index 1 (expected a whole number in"),      # an .h5 refuses it so
    "intensity rule unknown": (lambda s: s["data"].__setitem__("preprocessing", {"volume_intensity": "bogus"}),
                               "preprocessing volume_intensity 'bogus'"),
    "data a number": (_config(data=5), "--data 5: not a path"),
    "weights of other shapes": (lambda s: s["nets"]["G_IS"].__setitem__("model.1.weight", torch.zeros(2, 2)),
                                "its networks do not match its own config"),
    "a weight missing": (lambda s: s["nets"]["G_IS"].pop("model.1.weight"), "its networks do not match"),
    "NaN weights": (lambda s: s["nets"]["G_IS"]["model.1.weight"].fill_(float("nan")),
                    "the weights of G_IS hold NaN or infinite values (model.1.weight)"),
    "not a checkpoint": (lambda s: None, "could not be read"),
    "a list": (lambda s: None, "not a cycleseg checkpoint"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_EDITS))
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_hand_edited_checkpoints(tiny_checkpoint, tmp_path, capsys, case, command):
    """Evaluate, predict and export read a checkpoint through one check (load_run): what one refuses, every
    one refuses, so nothing exports a model that predict then calls damaged."""
    from cycleseg.export import main as export_main

    edit, match = CHECKPOINT_EDITS[case]
    path = edited(tiny_checkpoint, tmp_path, "edited", edit)
    if case == "not a checkpoint":
        path.write_bytes(b"PK\x03\x04 half a zip")
    elif case == "a list":
        torch.save([1, 2, 3], path)
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    argv = {"evaluate": [path, "--out", tmp_path / "o", "--no-progress"], "export": [path, "--out", tmp_path / "o"],
            "predict": [path, image, "--out", tmp_path / "o", "--no-progress"]}[command]
    main = {"evaluate": evaluate_main, "predict": predict_main, "export": export_main}[command]
    err = one_line_error(main, argv, capsys, match, tmp_path)
    assert err.count("not a usable cycleseg checkpoint") <= 1, err        # said once, not nested in another reason


@pytest.mark.parametrize("option, match", [(["--batch-size", "0"], "--batch-size: must be in 1..4096, got 0"),
                                           (["--batch-size", "-3"], "must be in 1..4096, got -3"),
                                           (["--batch-size", "100000000"], "must be in 1..4096, got 100000000"),
                                           (["--device", "bogus"], "--device 'bogus': not a device")])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_checkpoint_command_options(tiny_checkpoint, tmp_path, capsys, option, match, command):
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    args = [tiny_checkpoint, "--out", tmp_path / "o", "--no-progress", *option]
    if command == "predict":
        args.insert(1, image)
    one_line_error(evaluate_main if command == "evaluate" else predict_main, args, capsys, match, tmp_path)


def test_evaluate_refuses_val_data_without_data(tiny_checkpoint, tmp_path, capsys):
    """--val-data alone was ignored (the checkpoint's own data scored, into its default folder)."""
    one_line_error(evaluate_main, [tiny_checkpoint, "--val-data", tmp_path / "v.h5", "--out", tmp_path / "o"], capsys,
                   "--val-data names the val split", tmp_path)


def test_evaluate_never_replaces_an_earlier_report(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_main([str(tiny_checkpoint), "--out", str(out), "--no-progress"]) == 0
    one_line_error(evaluate_main, [tiny_checkpoint, "--out", out, "--no-progress"], capsys,
                   "exist already (an earlier evaluation); pass --overwrite", tmp_path)
    assert evaluate_main([str(tiny_checkpoint), "--out", str(out), "--no-progress", "--overwrite"]) == 0


def test_evaluate_on_other_data_gets_its_own_folder(tiny_checkpoint, tmp_path):
    import shutil

    ckpt = tmp_path / "run" / "last.pt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_checkpoint, ckpt)
    assert evaluate_main([str(ckpt), "--no-progress"]) == 0
    data = tmp_path / "other"
    data.mkdir()
    tiny_split(data / "val.h5", 16, k=4, channels=1)                 # what the built-in phantoms are
    assert evaluate_main([str(ckpt), "--data", str(data), "--no-progress"]) == 0
    assert sorted(p.name for p in ckpt.parent.glob("eval-*")) == ["eval-val-last", "eval-val-last-other"]


def test_evaluate_data_of_another_size_the_networks_cannot_read(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "small"
    data.mkdir()
    tiny_split(data / "val.h5", 4, k=4, channels=1)
    one_line_error(evaluate_main, [tiny_checkpoint, "--data", data, "--out", tmp_path / "o", "--no-progress"], capsys,
                   "images 4x4: the networks need a multiple of 4 of at least 8", tmp_path)


def test_predict_never_replaces_outputs_and_names_an_unreadable_image(tiny_checkpoint, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / "a.png")
    out = tmp_path / "out"
    assert predict_main([str(tiny_checkpoint), str(images), "--out", str(out), "--no-progress"]) == 0
    one_line_error(predict_main, [tiny_checkpoint, images, "--out", out, "--no-progress"], capsys,
                   "a_mask.png and 3 more exist already", tmp_path)
    assert predict_main([str(tiny_checkpoint), str(images), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    full = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(full).save(images / "b.jpg", quality=95)
    data = (images / "b.jpg").read_bytes()
    (images / "b.jpg").write_bytes(data[:len(data) // 2])            # truncated: the header still reads
    one_line_error(predict_main, [tiny_checkpoint, images, "--out", tmp_path / "new", "--no-progress"], capsys,
                   "b.jpg: could not be read", tmp_path)


def save_frames(path, n):
    frames = [Image.fromarray(np.full((16, 16), 60 * i, np.uint8)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


@pytest.mark.parametrize("suffix", [".tif", ".gif"])
def test_a_multi_frame_image_is_refused_not_read_as_its_first_frame(tiny_checkpoint, tmp_path, capsys, suffix):
    """A TIFF stack or an animated GIF: predict (named or in a folder) and the folder converter (as an image
    or a mask) name it and its frame count; a one-frame GIF is an image like any other."""
    images = tmp_path / "in"
    images.mkdir()
    stack = save_frames(images / f"stack{suffix}", 3)
    for target in (stack, images):
        one_line_error(predict_main, [tiny_checkpoint, target, "--out", tmp_path / "out", "--no-progress"], capsys,
                       f"stack{suffix}: 3 frames", tmp_path)
    src = folder_tree(tmp_path / "src", [np.eye(16, dtype=np.uint8)])
    save_frames(src / "images" / f"1{suffix}", 2)
    save_frames(src / "masks" / "1.png", 1)
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "x.h5", "--no-progress"], capsys,
                   f"1{suffix}: 2 frames", tmp_path)
    (src / "images" / f"1{suffix}").unlink()
    save_frames(src / "images" / "1.gif", 1)
    save_frames(src / "masks" / "1.png", 2)                    # an animated PNG as a mask
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "x.h5", "--no-progress"], capsys,
                   "1.png: 2 frames", tmp_path)
    save_frames(src / "masks" / "1.png", 1)
    assert data_main(["convert", "folder", str(src), str(tmp_path / "x.h5"), "--no-progress"]) == 0
    stack.unlink()
    save_frames(images / "one.gif", 1)
    assert predict_main([str(tiny_checkpoint), str(images), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert (tmp_path / "out" / "one_mask.png").exists()


@pytest.mark.parametrize("command", ["evaluate", "predict", "convert"])
def test_an_output_folder_that_cannot_be_written(tiny_checkpoint, tmp_path, capsys, command):
    """The output's parent is a file (the same error as a read-only folder, and one root cannot bypass)."""
    (tmp_path / "blocked").write_text("a file")
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    target = tmp_path / "blocked" / "out"
    if command == "convert":
        src = tmp_path / "src"
        for d in ("images", "masks"):
            (src / d).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "images" / "a.png")
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(src / "masks" / "a.png")
        main, argv = data_main, ["convert", "folder", src, target / "x.h5", "--no-progress"]
    elif command == "evaluate":
        main, argv = evaluate_main, [tiny_checkpoint, "--out", target, "--no-progress"]
    else:
        main, argv = predict_main, [tiny_checkpoint, image, "--out", target, "--no-progress"]
    one_line_error(main, argv, capsys, "cannot write", tmp_path)


# -- data convert ---------------------------------------------------------------------------------------

def folder_tree(root, masks, images=None):
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(masks):
        img = images[i] if images is not None else np.zeros(m.shape + (3,), np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
    return root


def test_convert_folder_refuses_what_would_corrupt_the_masks(tmp_path, capsys):
    base = np.zeros((8, 8), np.uint8)
    wide = base.astype(np.uint16)
    wide[0, :3] = 300                                              # a 16-bit mask with ids above 255
    one_line_error(data_main, ["convert", "folder", folder_tree(tmp_path / "a", [wide]), tmp_path / "a.h5",
                               "--no-progress"], capsys, "mask value 300 (3 pixels outside 0..255)", tmp_path)
    stray = base.copy()
    stray[1, 1] = 200                                              # one stray value
    ones = np.ones((8, 8), np.uint8)
    msg = one_line_error(data_main, ["convert", "folder", folder_tree(tmp_path / "b", [ones, stray]),
                                     tmp_path / "b.h5", "--no-progress"], capsys, "never appear below 200", tmp_path)
    assert f"1 pixels, e.g. {tmp_path / 'b' / 'masks' / '1.png'}" in msg and "--num-classes" in msg and "--map" in msg
    one_line_error(data_main, ["convert", "folder", folder_tree(tmp_path / "c", [np.full((8, 8), 255, np.uint8)]),
                               tmp_path / "c.h5", "--no-progress"], capsys, "every mask is all 255", tmp_path)
    # ... or converted as the user asks
    assert data_main(["convert", "folder", str(tmp_path / "b"), str(tmp_path / "b.h5"), "--map", "200=255",
                      "--no-progress"]) == 0
    with h5py.File(tmp_path / "b.h5") as f:
        assert f.attrs["num_classes"] == 2 and f["masks"][1][1, 1] == 255
    capsys.readouterr()                                            # a value no mask holds: said, not refused
    assert data_main(["convert", "folder", str(tmp_path / "b"), str(tmp_path / "b2.h5"), "--map", "200=255",
                      "--map", "300=1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--map 300=1: no mask of" in err and "holds the value 300" in err and "200" not in err.replace(str(tmp_path), "")
    assert "its masks are 8-bit (values 0..255): none can hold it" in err, err     # why, when no mask type can
    capsys.readouterr()
    assert data_main(["convert", "folder", str(tmp_path / "a"), str(tmp_path / "a2.h5"), "--map", "300=1",
                      "--map", "301=2", "--no-progress"]) == 0                     # the 16-bit mask holds 300
    err = capsys.readouterr().err
    assert "holds the value 301 (a typo, or a value of another split only)" in err and "value 300" not in err, err


def test_convert_never_replaces_a_file_unasked_nor_writes_over_an_input(tmp_path, capsys):
    src = folder_tree(tmp_path / "d", [np.eye(8, dtype=np.uint8)])
    out = tmp_path / "d.h5"
    assert data_main(["convert", "folder", str(src), str(out), "--no-progress"]) == 0
    first = out.read_bytes()
    one_line_error(data_main, ["convert", "folder", src, out, "--no-progress"], capsys,
                   "exists already; pass --overwrite", tmp_path)
    one_line_error(data_main, ["convert", "folder", src, src / "images" / "0.png", "--overwrite", "--no-progress"],
                   capsys, "the output must be an .h5 file", tmp_path)
    one_line_error(data_main, ["convert", "folder", src, src, "--no-progress"], capsys, "must be an .h5", tmp_path)
    assert out.read_bytes() == first
    assert data_main(["convert", "folder", str(src), str(out), "--overwrite", "--no-progress"]) == 0


def acdc_tree(root, image):
    (root / "data" / "slices").mkdir(parents=True)
    with h5py.File(root / "data" / "slices" / "patient001_frame01_slice_1.h5", "w") as f:
        f["image"] = image
        f["label"] = np.zeros(image.shape, np.uint8)
    (root / "train_slices.list").write_text("patient001_frame01_slice_1\n")
    return root


@pytest.mark.parametrize("image, match", [
    (np.full((8, 8), 900, np.int16), "int16 image with values 900..900"),
    (np.linspace(-2.0, 600.0, 64, dtype=np.float32).reshape(8, 8), "float32 image with values -2..600"),
    (np.where(np.eye(8) > 0, np.nan, 0.5).astype(np.float32), "8 NaN or infinite pixel values"),
])
def test_convert_acdc_refuses_images_it_would_saturate(tmp_path, capsys, image, match):
    src = acdc_tree(tmp_path / "acdc", image)
    one_line_error(data_main, ["convert", "acdc", src, tmp_path / "a.h5", "--no-progress"], capsys, match, tmp_path)


def test_convert_acdc_rescales_when_asked(tmp_path):
    image = np.linspace(-2.0, 600.0, 64, dtype=np.float32).reshape(8, 8)
    src = acdc_tree(tmp_path / "acdc", image)
    assert data_main(["convert", "acdc", str(src), str(tmp_path / "a.h5"), "--intensity", "minmax",
                      "--no-progress"]) == 0
    with h5py.File(tmp_path / "a.h5") as f:
        stored = f["images"][0, ..., 0]
    assert stored.min() == 0 and stored.max() == 255
    np.testing.assert_array_equal(stored, np.rint((image - image.min()) / (image.max() - image.min()) * 255))


@pytest.mark.parametrize("argv, match", [(["--map", "7"], "--map 7: expected V=C"),
                                         (["--map", "1=300"], "C a class id or 255"),
                                         (["--num-classes", "0"], "--num-classes must be in 2..255"),
                                         (["--num-classes", "300"], "--num-classes must be in 2..255"),
                                         (["--size", "0", "8"], "--size must be in 1..4096"),
                                         (["--size", "100000", "100000"], "--size must be in 1..4096")])
def test_convert_options(tmp_path, capsys, argv, match):
    src = folder_tree(tmp_path / "f", [np.eye(8, dtype=np.uint8)])
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "o.h5", "--no-progress", *argv], capsys, match,
                   tmp_path)


# -- experiments ----------------------------------------------------------------------------------------

GRID = ["--grid", "comparison", "--fractions", "0.5", "--seeds", "0"]


@pytest.mark.parametrize("extra, match", [
    (["--out", "g/same"], "--out after -- would be the same for every cell"),
    (["--seed", "5"], "--seed after --"),
    (["--mode", "semi"], "--mode after --"),
    (["--labeled-fraction", "0.5"], "--labeled-fraction after --"),
    (["--data", "x.h5"], "--data after --"),
    (["--resume"], "--resume after --"),
    (["--image-size", "30"], "--image-size 30: the networks need"),
])
def test_grid_options_a_cell_owns(tmp_path, capsys, extra, match):
    one_line_error(experiments_main, GRID + ["--out", tmp_path / "g", "--", *TINY[:-4], *extra], capsys, match,
                   tmp_path)
    assert not (tmp_path / "g").exists()


def test_grid_refuses_a_fraction_that_labels_no_image_before_any_cell_trains(tmp_path, capsys):
    """The refusal came when the cell's turn came, after Full (and the cells before it) had trained; so did a
    labeled subset smaller than the cell's batch."""
    data = tmp_path / "d"
    data.mkdir()
    tiny_split(data / "train.h5", 16)
    tiny_split(data / "val.h5", 16)
    one_line_error(experiments_main, ["--grid", "comparison", "--fractions", "0.05", "--seeds", "0", "--data", data,
                                      "--out", tmp_path / "g", "--", *TINY], capsys,
                   "--labeled-fraction 0.05 of 6 images labels less than half of one", tmp_path)
    assert not (tmp_path / "g").exists()
    one_line_error(experiments_main, ["--grid", "comparison", "--fractions", "0.2", "--seeds", "0", "--data", data,
                                      "--out", tmp_path / "g", "--", *TINY], capsys,       # 1 labeled image, batch 2
                   "--batch-size 2 is larger than the labeled subset (1 image at --labeled-fraction 0.2)", tmp_path)
    assert not (tmp_path / "g").exists()


def test_grid_refuses_a_cell_folder_of_another_configuration(tmp_path, capsys):
    grid = tmp_path / "g"
    cell = grid / "full-100pct-seed0"
    assert train_main(TINY + ["--mode", "full", "--seed", "0", "--out", str(cell), "--steps", "4",
                              "--eval-every", "4"]) == 0
    one_line_error(experiments_main, GRID + ["--out", grid, "--", *TINY], capsys,
                   "a run of another configuration than this cell's (steps 4 where the cell has 2", tmp_path)
    data = (cell / "last.pt").read_bytes()
    for damaged in (b"garbage", data[:len(data) // 2], os.urandom(4096)):   # a cell's checkpoint damaged
        (cell / "last.pt").write_bytes(damaged)
        err = one_line_error(experiments_main, GRID + ["--out", grid, "--", *TINY], capsys,
                             "could not be read as a checkpoint: the file is corrupt, truncated", tmp_path)
        assert f"move {cell} away (or delete it) and rerun the grid" in err and "weights_only" not in err


@pytest.mark.parametrize("flags, match", [
    (["--seed", "-1"], "--seed must be in 0 .. 2**32 - 1"),
    (["--seed", "99999999999999"], "--seed must be in 0 .. 2**32 - 1"),
    (["--scale-crop", "inf"], "--scale-crop must be a finite number"),
    (["--scale-crop", "nan"], "--scale-crop must be a finite number"),
    (["--scale-crop", "1e308"], "--scale-crop must be in [1, 16]"),
    (["--lambda2", "nan"], "--lambda2 must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--mode", "adversarial", "--adv-beta1-d", "2.5"], "--adv-beta1-d must be in [0, 1)"),
    (["--mode", "adversarial", "--adv-beta2-d", "-1"], "--adv-beta2-d must be in [0, 1)"),
    (["--mode", "adversarial", "--adv-lr-d-scale", "-1"], "--adv-lr-d-scale must be in (0, 100]"),
    (["--mode", "adversarial", "--adv-lr-d-scale", "1e300"], "--adv-lr-d-scale must be in (0, 100]"),
    (["--mode", "adversarial", "--adv-threshold", "1e9"], "--adv-threshold must be in [0, 1]"),
    (["--val-data", "elsewhere.h5"], "--val-data elsewhere.h5: the built-in dataset brings its own validation split"),
])
def test_numeric_options_are_finite_and_in_range(tmp_path, capsys, flags, match):
    one_line_error(train_main, TINY + ["--out", tmp_path / "r", *flags], capsys, match, tmp_path)
    assert not (tmp_path / "r").exists()


def test_help_prints_text_not_argparse_internals(capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    out = capsys.readouterr().out
    assert "G_IS on 100 % of the" in out and "option_strings" not in out


def test_a_train_that_fails_before_it_begins_leaves_no_run_folder(tmp_path, capsys):
    one_line_error(train_main, TINY + ["--out", tmp_path / "r", "--data", tmp_path / "missing.h5"], capsys,
                   "no such file", tmp_path)
    assert not (tmp_path / "r").exists()


def test_fifos_are_refused_not_read_forever(tmp_path, capsys, tiny_checkpoint):
    os.mkfifo(tmp_path / "pipe.png")
    os.mkfifo(tmp_path / "pipe.h5")
    one_line_error(predict_main, [tiny_checkpoint, tmp_path / "pipe.png", "--out", tmp_path / "o"], capsys,
                   "not a regular file", tmp_path)
    from cycleseg.data.h5format import DataError, open_h5
    with pytest.raises(DataError, match="not a regular file"):
        open_h5(tmp_path / "pipe.h5")
    os.mkfifo(tmp_path / "pipe.pt")
    one_line_error(evaluate_main, [tmp_path / "pipe.pt", "--out", tmp_path / "o"], capsys, "not a regular file",
                   tmp_path)


def test_the_folder_converter_refuses_a_fifo_and_leaves_no_folder_when_it_refuses(tmp_path, capsys):
    """A FIFO among the images is named, not read forever; an output folder made for a refused conversion is
    removed again (nothing written)."""
    src = folder_tree(tmp_path / "src", [np.eye(8, dtype=np.uint8)] * 2)
    (src / "images" / "1.png").unlink()
    os.mkfifo(src / "images" / "1.png")
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "deep" / "er" / "x.h5", "--no-progress"], capsys,
                   "1.png: not a regular file", tmp_path)
    assert not (tmp_path / "deep").exists()


def test_exif_orientation_is_applied_as_viewers_show_the_image(tmp_path, tiny_checkpoint):
    """A photo stored rotated with an EXIF orientation (6: rotate 90 degrees clockwise to view) is read as
    viewers and annotation tools show it: a mask drawn over the shown photo pairs with it pixel for pixel in
    the converter, and predict's mask has the shown photo's size."""
    import h5py

    shown = np.zeros((24, 24, 3), np.uint8)
    shown[:8, :8] = 255                                             # a white square, top left, as shown
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "src"
    for d in ("images", "masks"):
        (src / d).mkdir(parents=True)
    Image.fromarray(np.rot90(shown)).save(src / "images" / "a.jpg", exif=exif, quality=100)   # stored pixels
    Image.fromarray((shown[..., 0] > 0).astype(np.uint8)).save(src / "masks" / "a.png")
    assert data_main(["convert", "folder", str(src), str(tmp_path / "x.h5"), "--size", "24", "24",
                      "--num-classes", "2", "--no-progress"]) == 0
    with h5py.File(tmp_path / "x.h5") as f:
        image, mask = f["images"][0], f["masks"][0]
    assert image[mask == 1].mean() > 200 and image[mask == 0].mean() < 50
    tall = np.zeros((20, 40, 3), np.uint8)                            # stored 20 x 40, shown 40 x 20
    Image.fromarray(tall).save(tmp_path / "tall.jpg", exif=exif)
    assert predict_main([str(tiny_checkpoint), str(tmp_path / "tall.jpg"), "--out", str(tmp_path / "o"),
                         "--no-progress"]) == 0
    assert Image.open(tmp_path / "o" / "tall_mask.png").size == (20, 40)        # (width, height) as shown


def test_a_train_refused_at_start_leaves_nothing_and_can_run_again(tmp_path):
    """The C++ kernels' build folder is a file (refused after the run folder was set up; a fresh process, so
    that the kernels are not loaded already): exit 2, and no config.json or samples/ left behind that would
    make the same command refuse 'already holds a run'."""
    import subprocess
    import sys

    (tmp_path / "ext").write_text("a file")
    run = tmp_path / "r"
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "cycleseg.train", *TINY, "--out", str(run)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")})
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "where cycleseg's C++ kernels are built" in err[-1], done.stderr[-2000:]
    assert snapshot(tmp_path) == before and not run.exists()


def test_predict_names_a_pt2_and_refuses_a_malformed_palette(tmp_path, capsys, tiny_checkpoint):
    (tmp_path / "model.pt2").write_bytes(b"PK\x03\x04")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "x.png")
    one_line_error(predict_main, [tmp_path / "model.pt2", tmp_path / "x.png", "--out", tmp_path / "o"], capsys,
                   "a torch.export program", tmp_path)
    state = torch.load(tiny_checkpoint, weights_only=False)
    state["data"]["palette"] = [[0, 0, 0], ["red", 0, 0]]
    torch.save(state, tmp_path / "bad.pt")
    one_line_error(predict_main, [tmp_path / "bad.pt", tmp_path / "x.png", "--out", tmp_path / "o"], capsys,
                   "palette colour", tmp_path)


def test_an_output_name_longer_than_file_names_may_be_is_refused_before_predicting(tmp_path, capsys, tiny_checkpoint):
    """An input named with 250 bytes makes <stem>_mask.png of 259: refused in one line naming the output and
    the cause, before anything is written (the error named predict's staging folder, after predicting); a
    242-byte stem, whose outputs fit in 255 bytes, predicts."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(src / ("b" * 250 + ".png"))
    one_line_error(predict_main, [tiny_checkpoint, src, "--out", tmp_path / "o"], capsys,
                   "an output name of 259 bytes, longer than file names may be (255)", tmp_path)
    (src / ("b" * 250 + ".png")).rename(src / ("a" * 242 + ".png"))
    assert predict_main([str(tiny_checkpoint), str(src), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert (tmp_path / "o" / ("a" * 242 + "_overlay.png")).exists()


def png_rgb16(path, values):
    """A PNG of 16 bits per RGB channel, written by hand (Pillow writes none)."""
    import struct
    import zlib

    h, w, _ = values.shape
    raw = b"".join(b"\x00" + values[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_a_16_bit_rgb_image_is_refused_by_predict_and_the_converters(tmp_path, capsys, tiny_checkpoint):
    """Pillow reads a PNG of 16 bits per RGB channel as its high bytes alone: 12-bit data came out nearly
    black (values 0..15), exit 0, in convert and predict alike. Refused in their one reader, with or without
    --intensity minmax (which cannot see the low bytes either)."""
    from cycleseg.data.__main__ import main as data_main

    rng = np.random.default_rng(0)
    (tmp_path / "d" / "masks").mkdir(parents=True)
    for i in range(2):
        png_rgb16(tmp_path / "d" / "images" / f"x{i}.png", rng.integers(0, 4096, (16, 16, 3)))
        Image.fromarray(rng.integers(0, 2, (16, 16), dtype=np.uint8)).save(tmp_path / "d" / "masks" / f"x{i}.png")
    for extra in ([], ["--intensity", "minmax"]):
        one_line_error(data_main, ["convert", "folder", tmp_path / "d", tmp_path / "o.h5", "--no-progress", *extra],
                       capsys, "RGB of 16 bits per channel, which would be read as its high byte alone", tmp_path)
        one_line_error(predict_main, [tiny_checkpoint, tmp_path / "d" / "images" / "x0.png", "--out", tmp_path / "p",
                                      *extra], capsys, "x0.png: RGB of 16 bits per channel", tmp_path)


def test_a_palette_shorter_than_the_classes_is_filled_with_a_note(tmp_path, capsys, tiny_checkpoint):
    """A model whose palette colours 2 of its 4 classes predicts, the others in the default colours, and says
    so in one note (it was filled without a word)."""
    from cycleseg.checkpoint import digest
    from cycleseg.data.h5format import default_palette

    state = torch.load(tiny_checkpoint, weights_only=False)
    k = state["data"]["num_classes"]
    state["data"]["palette"] = [[1, 2, 3], [4, 5, 6]]
    state["digest"] = digest(state)                                 # as a run on data with this palette saves it
    torch.save(state, tmp_path / "short.pt")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "x.png")
    capsys.readouterr()
    assert predict_main([str(tmp_path / "short.pt"), str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert f"short.pt: its palette colours 2 of the {k} classes; the others are drawn in the default colours" in err, err
    got = Image.open(tmp_path / "o" / "x_mask.png").getpalette()[:3 * k]
    assert got == [1, 2, 3, 4, 5, 6] + sum(default_palette(k)[2:], [])


@pytest.mark.parametrize("edit, match", [
    ({"cycleseg.channels": "2"}, "1 classes and 2 channels"),
    ({"cycleseg.image_size": "[16]"}, "image_size [16]"),
    ({"cycleseg.palette": "[[0, 0]]"}, "palette colour"),
    ({"cycleseg.num_classes": "{"}, "not JSON"),
])
def test_edited_onnx_metadata_is_refused_in_one_line(tmp_path, capsys, edit, match):
    import json as js

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 1, 16, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = {"cycleseg.channels": "1", "cycleseg.num_classes": "1", "cycleseg.image_size": "[16, 16]",
            "cycleseg.palette": js.dumps([[0, 0, 0]]), **edit}
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(tmp_path / "m.onnx"))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "x.png")
    one_line_error(predict_main, [tmp_path / "m.onnx", tmp_path / "x.png", "--out", tmp_path / "o"], capsys,
                   match, tmp_path)


def test_no_output_replaces_an_input_even_with_overwrite(tmp_path, capsys, tiny_checkpoint, finished_run, make_acdc):
    """One rule for every command's outputs: an output that is one of the command's inputs, or a folder, is
    refused before anything is written, --overwrite or not (a checkpoint named .pt2, a run's records, images
    in the output folder, the .h5 volumes of an ACDC folder)."""
    import shutil

    from cycleseg.export import main as export_main
    from cycleseg.plot import main as plot_main

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    one_line_error(plot_main, [run, "--out", run / "metrics.jsonl", "--overwrite"], capsys, "the plot is a PNG", tmp_path)
    one_line_error(plot_main, [run, "--out", run / "last.pt", "--overwrite"], capsys, "the plot is a PNG", tmp_path)
    one_line_error(plot_main, [run, "--out", tmp_path / ("p" * 300 + ".png")], capsys,
                   "a name of 304 bytes in the path, longer than file systems take (255); shorten it", tmp_path)
    pt2 = tmp_path / "m.pt2"
    shutil.copy(tiny_checkpoint, pt2)
    one_line_error(export_main, [pt2, "--formats", "pt2", "--overwrite"], capsys, "is one of this command's inputs",
                   tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "a_mask"):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(images / f"{name}.png")
    one_line_error(predict_main, [tiny_checkpoint, images, "--out", images, "--overwrite", "--no-progress"], capsys,
                   f"--out {images} is the input folder", tmp_path)
    (tmp_path / "linked").mkdir()                                    # the same files under other names: hard links
    for name in ("a", "a_mask"):
        os.link(images / f"{name}.png", tmp_path / "linked" / f"{name}.png")
    one_line_error(predict_main, [tiny_checkpoint, tmp_path / "linked", "--out", images, "--overwrite", "--no-progress"],
                   capsys, "a_mask.png is one of this command's inputs", tmp_path)
    (tmp_path / "e" / "confusion.png").mkdir(parents=True)
    one_line_error(evaluate_main, [tiny_checkpoint, "--out", tmp_path / "e", "--overwrite", "--no-progress"], capsys,
                   "confusion.png is a folder", tmp_path)
    acdc = tmp_path / "ACDC"
    make_acdc(acdc)
    one_line_error(data_main, ["convert", "acdc", acdc, acdc / "data" / "patient009_frame01.h5", "--split", "val",
                               "--size", "16", "16", "--overwrite", "--no-progress"], capsys,
                   "a converter never writes over its inputs", tmp_path)


def test_a_conversion_killed_while_writing_leaves_nothing_for_long(tmp_path):
    """A converter killed (OOM, SIGKILL) leaves .<out>.cycleseg-tmp<pid>; the next conversion to that output
    removes it (only temporaries of that name whose process is gone; a user's .o.h5.tmp<digits> stays)."""
    src = folder_tree(tmp_path / "f", [np.eye(8, dtype=np.uint8)])
    stale, mine = tmp_path / f".o.h5.cycleseg-tmp{2 ** 22 + 7}", tmp_path / f".other.h5.cycleseg-tmp{2 ** 22 + 7}"
    users = tmp_path / f".o.h5.tmp{2 ** 22 + 7}"
    stale.write_bytes(b"half")
    mine.write_bytes(b"someone else's")
    users.write_bytes(b"keep")
    assert data_main(["convert", "folder", str(src), str(tmp_path / "o.h5"), "--no-progress"]) == 0
    assert not stale.exists() and mine.exists() and users.read_bytes() == b"keep"


def test_a_conversion_that_cannot_fit_on_the_disk_is_refused_before_writing(tmp_path, capsys, monkeypatch):
    """h5py on a full disk printed thousands of traceback lines and crashed (segmentation fault, exit 139):
    a split whose images cannot fit in the free space of the output's disk is refused first, in one line
    naming the output, and nothing is left."""
    from collections import namedtuple

    from cycleseg.data import h5format

    src = folder_tree(tmp_path / "f", [np.eye(8, dtype=np.uint8)] * 4)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(h5format.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 100, 100))
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "o.h5", "--no-progress"], capsys,
                   f"cannot write {tmp_path / 'o.h5'}: No space left on device (the file needs", tmp_path)
    monkeypatch.undo()
    assert data_main(["convert", "folder", str(src), str(tmp_path / "o.h5"), "--no-progress"]) == 0


def test_advice_the_probe_found_missing(tmp_path, capsys, monkeypatch):
    """A mask saved as .jpg is named with the rule (masks are lossless .png); a 1-bit mask is class ids 0 / 1;
    a folder where plot reads metrics.jsonl is called a folder, not an unwritable file; --stop-after says how
    to resume; CYCLESEG_CACHE set but empty means the default cache, not the working folder."""
    from cycleseg.data.cache import cache_dir
    from cycleseg.plot import main as plot_main

    src = folder_tree(tmp_path / "src", [np.eye(8, dtype=np.uint8)])
    (src / "masks" / "0.png").rename(src / "masks" / "0.jpg")
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "x.h5", "--no-progress"], capsys,
                   "masks are read as lossless .png only (found 0.jpg", tmp_path)
    (src / "masks" / "0.jpg").unlink()
    Image.fromarray(np.eye(8, dtype=bool)).save(src / "masks" / "0.png")          # mode "1"
    assert Image.open(src / "masks" / "0.png").mode == "1"
    assert data_main(["convert", "folder", str(src), str(tmp_path / "x.h5"), "--no-progress"]) == 0
    import h5py
    with h5py.File(tmp_path / "x.h5") as f:
        assert f["masks"][0].tolist() == np.eye(8, dtype=np.uint8).tolist()
    run = tmp_path / "run"
    (run / "metrics.jsonl").mkdir(parents=True)
    one_line_error(plot_main, [run], capsys, "metrics.jsonl is a folder, where a file is read or written", tmp_path)
    capsys.readouterr()
    assert train_main(TINY + ["--out", str(tmp_path / "s"), "--steps", "4", "--stop-after", "1"]) == 0
    assert f"stopped after step 1 of 4 (--stop-after); saved {tmp_path / 's' / 'last.pt'}. Resume with: python -m " \
           f"cycleseg.train --resume --out {tmp_path / 's'}" in capsys.readouterr().err
    monkeypatch.setenv("CYCLESEG_CACHE", "")
    assert cache_dir().is_absolute() and cache_dir().name == "cycleseg"


def test_a_missing_test_split_and_one_class_name_are_named_with_their_fix(tmp_path, capsys):
    from cycleseg.metrics import main as metrics_main

    data = tmp_path / "d"
    data.mkdir()
    for split in ("train", "val"):
        tiny_split(data / f"{split}.h5", 16)
    assert train_main(TINY + ["--data", str(data), "--out", str(tmp_path / "r"), "--mode", "full"]) == 0
    err = one_line_error(evaluate_main, [tmp_path / "r" / "last.pt", "--split", "test", "--out", tmp_path / "o"],
                         capsys, "test.h5: no such file (the test split of the data", tmp_path)
    assert "convert a test split to test.h5 beside it" in err and "--data" not in err.split("(")[1].split(";")[0]
    (tmp_path / "p").mkdir()
    (tmp_path / "t").mkdir()
    one_line_error(metrics_main, [tmp_path / "p", tmp_path / "t", "--classes", "a"], capsys,
                   "--classes names 1 class(es); give 2..255 names, background first", tmp_path)
    one_line_error(metrics_main, [tmp_path / "p", tmp_path / "t", "--classes", "a", "a", "b"], capsys,
                   "--classes: class_names ['a', 'a', 'b']: 'a' named twice", tmp_path)


def test_a_value_mapped_twice_and_a_symlink_loop_as_output(tmp_path, capsys, tiny_checkpoint):
    src = folder_tree(tmp_path / "src", [np.eye(8, dtype=np.uint8)])
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "x.h5", "--map", "1=2", "--map", "1=0",
                               "--num-classes", "3", "--no-progress"], capsys,
                   "--map 1=2 and --map 1=0: mask value 1 mapped to two classes", tmp_path)
    (tmp_path / "loop").symlink_to("loop")
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    for main, argv in ((predict_main, [tiny_checkpoint, image, "--out", tmp_path / "loop" / "out", "--no-progress"]),
                       (evaluate_main, [tiny_checkpoint, "--out", tmp_path / "loop" / "out", "--no-progress"]),
                       (data_main, ["convert", "folder", src, tmp_path / "loop" / "x.h5", "--no-progress"])):
        one_line_error(main, argv, capsys, f"{tmp_path / 'loop'} is a symbolic link that leads nowhere", tmp_path)


def test_a_jpeg_mask_under_a_png_name_and_a_grid_dry_run(tmp_path, capsys):
    """A mask is judged by what its file is, not by its name: a JPEG saved as .png is refused as a .jpg is;
    --dry-run after a grid's -- is refused before any cell runs (it trained nothing and called that failed)."""
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 1
    src = folder_tree(tmp_path / "f", [mask, mask])
    Image.fromarray(mask).save(src / "masks" / "1.png", format="JPEG")
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "o.h5", "--no-progress"], capsys,
                   "1.png: a JPEG file (named .png): its lossy compression changes class ids", tmp_path)
    one_line_error(experiments_main, ["--grid", "comparison", "--fractions", "0.5", "--seeds", "0", "--out",
                                      tmp_path / "g", "--", *TINY, "--dry-run"], capsys,
                   "--dry-run after -- would print each cell's configuration and train none", tmp_path)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.attrs.__setitem__("ignore_index", 1), "ignore_index 1 must lie outside the class ids 0..2"),
    (lambda f: f.create_dataset("volumes", data=np.full(6, 7)), "dataset 'volumes' must hold integers -1 (no volume) "
                                                                "or 0..-1 (indexes into the 0 volume_names), found 7"),
    (lambda f: f.attrs.__setitem__("class_names", '["a", "a", "b"]'),   # scores are keyed by name: one was lost
     "attribute class_names ['a', 'a', 'b']: 'a' named twice (names must be distinct)"),
    (lambda f: f.attrs.__setitem__("class_names", '["a", "b\\nc", "d"]'),     # it broke evaluate's table in two
     "'b\\nc' is empty, over 100 characters or holds a control character"),
])
def test_an_h5_whose_attributes_contradict_its_data_is_refused(tmp_path, capsys, finished_run, edit, match):
    """An ignore index that is a class id (that class never learned, yet scored) and slices of volumes the
    file does not name (evaluate crashed after writing its outputs) are refused when the file is read."""
    tiny_split(tmp_path / "d.h5", 16)
    with h5py.File(tmp_path / "d.h5", "r+") as f:
        edit(f)
    one_line_error(evaluate_main, [finished_run / "last.pt", "--data", tmp_path / "d.h5", "--out", tmp_path / "e"],
                   capsys, match, tmp_path)


def test_two_writers_of_one_output_never_replace_each_other(tmp_path):
    """An output that appeared while a command worked (another process's, both started before either
    wrote) is kept, and the command says so, unless it was told --overwrite (fileio.commit)."""
    from cycleseg.fileio import atomic_path, atomic_write_bytes, write_files
    from cycleseg.usage import message

    with pytest.raises(FileExistsError) as e:
        with atomic_path(tmp_path / "o.h5", replace=False) as tmp:
            tmp.write_bytes(b"ours")
            (tmp_path / "o.h5").write_bytes(b"theirs")                # the other process finished first
    assert (tmp_path / "o.h5").read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["o.h5"]
    assert message(e.value) == (f"{tmp_path / 'o.h5'} was written by another process while this one worked; it is "
                                f"kept, nothing was replaced (--overwrite replaces it)")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.csv").write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        write_files(tmp_path / "out", {"a.csv": b"ours", "b.csv": b"ours"}, replace=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.csv"]        # all or nothing, theirs kept
    assert (tmp_path / "out" / "b.csv").read_bytes() == b"theirs"
    write_files(tmp_path / "out", {"a.csv": b"ours", "b.csv": b"ours"})                # --overwrite: replaced
    assert (tmp_path / "out" / "b.csv").read_bytes() == b"ours"
    atomic_write_bytes(tmp_path / "o.h5", lambda f: f.write(b"new"))
    assert (tmp_path / "o.h5").read_bytes() == b"new"


def test_a_checkpoint_copied_in_from_another_run_is_not_resumed(tmp_path, capsys):
    """--resume continues the run the folder records (config.json): a last.pt of another run (another
    generator here) copied into it would have mixed two runs' records and replaced best.pt; refused, nothing
    changed. A change a resume may make (--lr) is no mismatch."""
    import shutil

    for name, extra in (("a", []), ("b", ["--generator", "unet", "--image-size", "16"])):
        assert train_main(TINY + ["--steps", "4", "--stop-after", "2", "--out", str(tmp_path / name), *extra]) in (0, 130)
    shutil.copy(tmp_path / "b" / "last.pt", tmp_path / "a" / "last.pt")
    err = one_line_error(train_main, ["--resume", "--out", tmp_path / "a", "--no-progress"], capsys,
                         "generator 'unet' where config.json has 'resnet'", tmp_path)
    assert "copied in from another run" in err
    assert train_main(["--resume", "--out", str(tmp_path / "b"), "--lr", "0.0005", "--no-progress"]) == 0


def test_a_folder_pairs_each_image_with_its_own_mask(tmp_path, capsys):
    """Two images of one name (a.png, a.jpg) would share the mask a.png: refused; a mask named a.PNG is a
    PNG (extensions in any case, as for images); hidden files (macOS ._a.png) are not images."""
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 1
    src = folder_tree(tmp_path / "f", [mask, mask])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "images" / "0.jpg")
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "o.h5", "--no-progress"], capsys,
                   "share the name '0', and so the one mask 0.png", tmp_path)
    (src / "images" / "0.jpg").unlink()
    (src / "masks" / "1.png").rename(src / "masks" / "1.PNG")
    (src / "images" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert data_main(["convert", "folder", str(src), str(tmp_path / "o.h5"), "--no-progress"]) == 0
    with h5py.File(tmp_path / "o.h5") as f:
        assert len(f["masks"]) == 2 and f["masks"][1].sum() == 16


def test_the_folder_converter_says_what_it_leaves_out(tmp_path, capsys):
    """Subfolders of images/ and masks/, files of images/ that are no image, and masks without an image were
    left out without a word: each now gets a note (the conversion goes on); an images/ holding only
    subfolders is refused naming them."""
    mask = np.eye(8, dtype=np.uint8)                                  # two classes
    src = folder_tree(tmp_path / "f", [mask])
    nested = folder_tree(src / "images" / "train", [mask])
    (src / "masks" / "7.png").write_bytes((src / "masks" / "0.png").read_bytes())
    (src / "images" / "notes.txt").write_text("scanner settings")
    assert data_main(["convert", "folder", str(src), str(tmp_path / "o.h5"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "1 subfolder(s) not read (train)" in err and "1 file(s) not read as images (notes.txt" in err
    assert "1 mask(s) without an image of their name, not converted (7.png)" in err
    for hidden in (".png", ".x.png"):                                # were dropped without a word
        (src / "images" / hidden).write_bytes((src / "images" / "0.png").read_bytes())
    assert data_main(["convert", "folder", str(src), str(tmp_path / "h.h5"), "--no-progress"]) == 0
    assert "2 hidden file(s) not read (.png, .x.png)" in capsys.readouterr().err
    with h5py.File(tmp_path / "o.h5") as f:
        assert len(f["masks"]) == 1
    for p in (src / "images").iterdir():
        if p.is_file():
            p.unlink()
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "p.h5", "--no-progress"], capsys,
                   "its subfolders (train) are not read", tmp_path)
    assert nested.is_dir()


def test_class_names_must_be_names(tmp_path, capsys):
    import json

    tiny_split(tmp_path / "d.h5", 16)
    with h5py.File(tmp_path / "d.h5", "r+") as f:
        f.attrs["class_names"] = json.dumps([0, 1, 2])
    one_line_error(data_main, ["info", tmp_path / "d.h5"], capsys, "class_names must list the 3 classes' names "
                   "(strings)", tmp_path)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.attrs.__setitem__("format_version", 99), "format_version 99 was written by a newer cycleseg"),
    (lambda f: f.attrs.__setitem__("num_classes", 3.9), "attribute 'num_classes' must be a whole number, got 3.9"),
    (lambda f: f.create_dataset("labeled", data=np.full(6, 0.5)), "'labeled' must hold 0 (no annotation) or 1 "
                                                                   "per image, found dtype float64"),
    (lambda f: f.create_dataset("labeled", data=np.array([b"y"] * 6)), "found dtype |S1"),
    (lambda f: f.create_dataset("labeled", data=np.zeros(6, np.uint8)), "dataset 'masks', index 0: flagged as not "
                                                                        "annotated ('labeled' 0) but its mask holds"),
    (lambda f: f.create_dataset("labeled", data=np.full(6, 2, np.uint8)), "or 1 per image, found 2"),
    (lambda f: f.create_dataset("groups", data=np.full(6, np.nan)), "'groups' must hold integers"),
    (lambda f: f.attrs.__setitem__("palette", "[[300, -5, 0], \"x\"]"), "attribute 'palette': palette colour "
                                                                         "[300, -5, 0] is not [r, g, b]"),
    (lambda f: f.attrs.__setitem__("preprocessing", "[1, 2]"), "'preprocessing' must be a JSON object"),
    (lambda f: f.attrs.__setitem__("preprocessing", '{"slice_axis": 7}'), "attribute 'preprocessing': "
                                                                           "preprocessing slice_axis 7 (expected 0, 1"),
    (lambda f: f.attrs.__setitem__("preprocessing", '{"volume_intensity": "bogus"}'), "volume_intensity 'bogus' "
                                                                                      "(expected one of percentile"),
    (lambda f: f.attrs.__setitem__("format_version", -3), "format_version -3 is no version of the format"),
    (lambda f: f.attrs.__setitem__("volume_names", '"abc"'), "'volume_names' must be a JSON list of names"),
    (lambda f: f.create_group("groups"), "'groups' is a group, where a dataset belongs"),
    (lambda f: (f.__delitem__("masks"), f.create_group("masks")), "'masks' is a group, where a dataset belongs"),
    (lambda f: (f.create_dataset("volumes", data=np.array([0, 0, 1, 1, 2, 2])),
                f.attrs.__setitem__("volume_names", '["v", "v", "w"]')), "'volume_names' names 'v' twice"),
    (lambda f: (f.create_dataset("volumes", data=np.array([0, 0, 1, 1, 0, 0])),
                f.attrs.__setitem__("volume_names", '["v", "w"]')), "the slices of volume 'v' are not consecutive"),
])
def test_a_split_file_is_read_as_written_or_refused(tmp_path, capsys, edit, match):
    """An h5 edited by hand: a newer format_version, 3.9 classes (was read as 3), a 'labeled' flag of floats or
    bytes (was cast to bool) or of 2, groups of NaN (were blamed on the labeled fraction), a palette of
    colours out of range (crashed training's pictures), a list as preprocessing (crashed the first
    checkpoint), a string as volume_names (three volumes 'a', 'b', 'c'), a group where a dataset belongs
    (AttributeError traceback), two volumes of one name or a volume's slices apart (scored as one 3D
    volume), a slicing axis or intensity rule no converter writes (trained; then every checkpoint refused),
    a format_version below 1: each refused naming it."""
    tiny_split(tmp_path / "d.h5", 16)
    with h5py.File(tmp_path / "d.h5", "r+") as f:
        edit(f)
    one_line_error(data_main, ["info", tmp_path / "d.h5"], capsys, match, tmp_path)


def test_a_split_open_for_writing_elsewhere_is_called_so(tmp_path, capsys):
    import subprocess
    import sys

    path = tiny_split(tmp_path / "d.h5", 16)
    writer = subprocess.Popen([sys.executable, "-c", f"import h5py, sys, time\nf = h5py.File({str(path)!r}, 'a')\n"
                               f"print('open', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        one_line_error(data_main, ["info", path], capsys, "another process has it open for writing (HDF5's file "
                       "lock); wait until it has finished", tmp_path)
    finally:
        writer.kill()
        writer.wait()


def test_plot_refuses_records_without_a_number(tmp_path, capsys, finished_run):
    """metrics.jsonl whose values are all strings or null drew empty axes and exited 0: refused; beside a run
    with numbers it is noted and left out."""
    from cycleseg.plot import main as plot_main

    run = tmp_path / "odd"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": "high"}\n'
                                       '{"step": 2, "split": "val", "miou": null}\n')   # NaN: not a record
    one_line_error(plot_main, [run], capsys, "odd/metrics.jsonl: no finite number to draw (2 records", tmp_path)
    assert plot_main([str(run), str(finished_run), "--out", str(tmp_path / "both.png")]) == 0
    assert "no finite number to draw (2 records, none with a loss or score that is a finite float32 number); drawn without it" in \
        capsys.readouterr().err and (tmp_path / "both.png").stat().st_size > 0
    garbled = tmp_path / "garbled"                                  # lines that are not records: said, not hidden
    garbled.mkdir()
    (garbled / "metrics.jsonl").write_bytes((finished_run / "metrics.jsonl").read_bytes() + b'[1, 2]\n{"no": "step"}\n\xff\n')
    assert plot_main([str(garbled), "--out", str(tmp_path / "g.png")]) == 0
    assert "garbled/metrics.jsonl: 3 of its" in capsys.readouterr().err


def test_paths_that_name_nothing_usable(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    """An empty --out (an unset shell variable) trained or exported into the working folder, and an empty
    --data / input was read as the working folder (evaluate, predict) or the built-in data (experiments):
    refused; an
    export into /dev/null said "File exists"; `--formats onnx onnx` wrote and printed one file twice (now
    refused, as a grid's repeated --seeds); a file named samples in a run folder gave "File exists"."""
    from cycleseg.export import main as export_main

    monkeypatch.chdir(tmp_path)
    one_line_error(train_main, TINY + ["--out", ""], capsys, "--out '': an empty path", tmp_path)
    one_line_error(export_main, [tiny_checkpoint, "--out", ""], capsys, "--out: an empty path", tmp_path)
    one_line_error(evaluate_main, [tiny_checkpoint, "--data", ""], capsys, "--data: an empty path", tmp_path)
    one_line_error(evaluate_main, [tiny_checkpoint, "--val-data", " "], capsys, "--val-data: an empty path", tmp_path)
    one_line_error(predict_main, [tiny_checkpoint, "", "--out", "p"], capsys, "inputs: an empty path", tmp_path)
    one_line_error(experiments_main, ["--data", "", "--out", "g"], capsys, "--data: an empty path", tmp_path)
    one_line_error(export_main, [tiny_checkpoint, "--out", "/dev/null/x", "--formats", "pt2"], capsys,
                   "/dev/null is a device or other special file, not a folder", tmp_path)
    one_line_error(export_main, [tiny_checkpoint, "--out", tmp_path / "e", "--formats", "pt2", "pt2"], capsys,
                   "--formats: pt2 is given twice; give each once", tmp_path)   # refused, as the grid's --seeds
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "samples").write_text("my notes")
    one_line_error(train_main, TINY + ["--out", tmp_path / "r"], capsys, "samples is a file where the run keeps its "
                   "pictures (a folder); nothing was written", tmp_path)


def test_a_resume_whose_config_json_is_a_folder_is_refused_before_training(tmp_path, capsys, finished_run):
    """config.json made a folder: the resume trained, replaced last.pt, then said "could not write last.pt
    ... the previous last.pt is intact", neither true nor naming config.json. Now refused before a step."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.json").unlink()
    (run / "config.json").mkdir()
    one_line_error(train_main, TINY + ["--out", run, "--resume", "--steps", "6"], capsys,
                   "config.json is a folder or special file where the run keeps a file; nothing was written", tmp_path)


def test_numbers_that_python_reads_otherwise_are_refused_by_every_command(tmp_path, capsys, tiny_checkpoint):
    """"1_0" (int() and float() read 10) was taken by predict's --batch-size, convert's --num-classes and --map,
    and the grid's --jobs: refused, as train's options are (TRAIN_OPTIONS)."""
    image = tmp_path / "x.png"
    Image.new("L", (16, 16)).save(image)
    one_line_error(predict_main, [tiny_checkpoint, image, "--out", tmp_path / "p", "--batch-size", "1_0"], capsys,
                   "--batch-size: expected a whole number in 1..4096, got '1_0'", tmp_path)
    src = folder_tree(tmp_path / "f", [np.eye(8, dtype=np.uint8)] * 2)
    for flags, match in [(["--num-classes", "1_0"], "invalid int value: '1_0'"),
                         (["--map", "1_0=1"], "--map 1_0=1: expected V=C with whole numbers")]:
        one_line_error(data_main, ["convert", "folder", src, tmp_path / "o.h5", "--no-progress", *flags], capsys,
                       match, tmp_path)
    one_line_error(experiments_main, ["--jobs", "1_0", "--out", tmp_path / "g"], capsys,
                   "argument --jobs: invalid int value: '1_0'", tmp_path)
    one_line_error(experiments_main, ["--jobs", "99999", "--out", tmp_path / "g"], capsys,   # taken before
                   "--jobs: 99999 is not a number of cells at a time (1 .. 256)", tmp_path)


def test_transparent_pixels_given_to_predict_are_noted(tmp_path, capsys, tiny_checkpoint):
    """An RGBA or LA image predicted from its colour values alone (alpha dropped) without a word: noted once,
    naming the first; opaque images (an RGBA one whose alpha is 255 throughout) are not."""
    images = tmp_path / "in"
    images.mkdir()
    Image.new("RGBA", (16, 16), (10, 20, 30, 0)).save(images / "a.png")
    Image.new("RGBA", (16, 16), (10, 20, 30, 255)).save(images / "b.png")
    Image.new("LA", (16, 16), (10, 128)).save(images / "c.png")
    assert predict_main([str(tiny_checkpoint), str(images), "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    notes = [l for l in capsys.readouterr().err.splitlines() if "transparent pixels" in l]
    assert notes == [f"note: 2 images have transparent pixels (first: {images / 'a.png'}): read without their alpha "
                     f"channel, a transparent pixel as the colour it holds; flatten them onto a background first to "
                     f"predict what a viewer shows"], notes


def test_a_name_longer_than_file_systems_take_is_one_line_in_every_command(tmp_path, capsys, tiny_checkpoint):
    """A path with a 300-byte name gave OSError tracebacks (File name too long) in train, predict, convert,
    export, evaluate and the grid: refused where the option is read."""
    from cycleseg.export import main as export_main

    long = tmp_path / ("d" * 300)
    why = "a name of 300 bytes in the path, longer than file systems take (255); shorten it"
    one_line_error(train_main, TINY + ["--out", long], capsys, why, tmp_path)
    one_line_error(train_main, TINY + ["--data", long, "--out", tmp_path / "r"], capsys, why, tmp_path)
    one_line_error(predict_main, [tiny_checkpoint, tmp_path, "--out", long], capsys, why, tmp_path)
    one_line_error(export_main, [tiny_checkpoint, "--out", long], capsys, why, tmp_path)
    one_line_error(evaluate_main, [long], capsys, why, tmp_path)
    one_line_error(experiments_main, ["--out", long], capsys, why, tmp_path)
    one_line_error(data_main, ["convert", "folder", tmp_path, long], capsys, why, tmp_path)


def test_json_beyond_what_readers_parse_is_a_bad_line_not_a_traceback(tmp_path, capsys, finished_run):
    """A metrics.jsonl line with a 5000-digit integer (ValueError) or nested 200000 deep (RecursionError), and
    a config.json nested as deep, crashed --resume and plot with a traceback: now lines that are not records,
    and a config.json not readable as JSON, as any other garbled text."""
    import shutil

    from cycleseg.plot import main as plot_main

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "train", "cycle_seg": ' + "1" * 5000 + "}\n")
        f.write("[" * 200000 + "]" * 200000 + "\n")
        f.write('{"step": 3, "split": "train", "\\ud800x": 1.0}\n')     # a lone surrogate: matplotlib's TypeError
    assert plot_main([str(run), "--out", str(tmp_path / "p.png")]) == 0
    assert "run/metrics.jsonl: 3 of its" in capsys.readouterr().err
    (run / "config.json").write_text('{"a": ' + "[" * 200000 + "]" * 200000 + "}")
    assert train_main(TINY + ["--out", str(run), "--resume", "--steps", "5"]) == 0
    err = capsys.readouterr().err
    assert "config.json is not readable as JSON; the run goes on from" in err and "Traceback" not in err, err
    restart = tmp_path / "restart"                                  # stopped before its first checkpoint, with a
    restart.mkdir()                                                 # value no run has: a KeyError traceback
    (restart / "config.json").write_text((finished_run / "config.json").read_text().replace('"mode": "semi"',
                                                                                           '"mode": "bogus"'))
    assert '"bogus"' in (restart / "config.json").read_text()
    one_line_error(train_main, TINY + ["--out", restart, "--resume", "--steps", "2"], capsys,
                   "config.json records a value no run has (--mode must be one of", restart)   # not the defaults


def test_a_grid_header_skips_cell_configs_it_cannot_read(tmp_path):
    """A finished cell's config.json made a FIFO blocked the grid for good after its cells ran; a batch of
    1e999 (OverflowError) or a lone surrogate in the preset (UnicodeEncodeError) ended it in a traceback with
    no tables: each is left out of the header's resolved presets, as a missing one is."""
    from collections import namedtuple

    from cycleseg.experiments import resolved_text

    cells = {namedtuple("Cell", "name")(n): {0: {}} for n in ("fifo", "huge", "odd", "good")}
    for n in ("fifo", "huge", "odd", "good"):
        (tmp_path / f"{n}-seed0").mkdir()
    os.mkfifo(tmp_path / "fifo-seed0" / "config.json")
    (tmp_path / "huge-seed0" / "config.json").write_text('{"preset": "cpu", "batch_size": 1e999, "device": "cpu"}')
    (tmp_path / "odd-seed0" / "config.json").write_text('{"preset": "\\udc80cpu", "batch_size": 8, "device": "cpu"}')
    (tmp_path / "good-seed0" / "config.json").write_text('{"preset": "cpu", "batch_size": 8, "device": "cpu"}')
    assert resolved_text(tmp_path, cells) == " Runs resolved to preset cpu, batch 8 (+ 8 unlabeled where a method " \
                                             "reads them) on cpu."


def test_a_checkpoint_whose_bytes_do_not_match_their_checksum_is_refused(tmp_path, capsys, finished_run):
    """Bytes zeroed inside a tensor of last.pt (the zip entry's CRC-32 no longer matches; torch.load does not
    compare it) loaded as other weights: evaluate, predict and --resume went on, exit 0. Now refused."""
    import shutil
    import struct
    import zipfile

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ckpt = run / "last.pt"
    with zipfile.ZipFile(ckpt) as z:
        entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(ckpt.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_len + extra_len
    raw[start:start + 8] = bytes(x ^ 0xFF for x in raw[start:start + 8])
    ckpt.write_bytes(bytes(raw))
    why = f"last.pt: damaged: the bytes of its entry {entry.filename} do not match the checksum"
    one_line_error(evaluate_main, [ckpt, "--no-progress"], capsys, why, tmp_path)
    image = tmp_path / "x.png"
    Image.new("L", (16, 16)).save(image)
    one_line_error(predict_main, [ckpt, image, "--out", tmp_path / "pred"], capsys, why, tmp_path)
    one_line_error(train_main, TINY + ["--out", run, "--resume", "--steps", "6"], capsys, why, tmp_path)


def test_weights_edited_and_saved_again_are_refused_by_every_command(tmp_path, capsys, finished_run):
    """Weights negated and the checkpoint saved again (a valid archive, finite values) were evaluated and
    trained on without a word (the run-state digest leaves large tensors' values out and only --resume checked
    it): every command now compares them with the digest their run saved."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    assert "weights_digest" in state
    for v in state["nets"]["G_IS"].values():
        if v.is_floating_point() and v.numel() > 16:
            v.mul_(-1)
    torch.save(state, run / "last.pt")
    why = "last.pt: not a usable cycleseg checkpoint: its weights are not those its run saved"
    one_line_error(evaluate_main, [run / "last.pt", "--no-progress"], capsys, why, tmp_path)
    one_line_error(train_main, TINY + ["--out", run, "--resume", "--steps", "6"], capsys, why, tmp_path)


@pytest.mark.parametrize("edit", ["mode", "palette", "class_names"])
def test_run_state_edited_and_saved_again_is_refused_by_every_command(tmp_path, capsys, finished_run, edit):
    """A run state's value edited to another possible one and the checkpoint saved again (a valid archive,
    the weights untouched: another mode, palette or class names) was evaluated, predicted with and exported
    as if the run had written it (the run-state digest was checked on --resume only): every command that
    reads a run now compares it with the digest the run saved."""
    import shutil

    from cycleseg.export import main as export_main

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    assert "digest" in state
    if edit == "mode":
        state["config"]["mode"] = "partial" if state["config"]["mode"] != "partial" else "semi"
    else:
        k = state["data"]["num_classes"]
        state["data"][edit] = ([[7 * i, 0, 0] for i in range(k)] if edit == "palette"
                               else [f"class {i}" for i in range(k)])
    torch.save(state, run / "last.pt")
    why = "last.pt: not a usable cycleseg checkpoint: its run state is not what its run wrote"
    image = tmp_path / "x.png"
    Image.new("L", (16, 16)).save(image)
    one_line_error(evaluate_main, [run / "last.pt", "--no-progress"], capsys, why, tmp_path)
    one_line_error(predict_main, [run / "last.pt", image, "--out", tmp_path / "pred"], capsys, why, tmp_path)
    one_line_error(export_main, [run / "last.pt", "--out", tmp_path / "exp", "--formats", "pt2"], capsys, why,
                   tmp_path)
    one_line_error(train_main, TINY + ["--out", run, "--resume", "--steps", "6"], capsys,
                   "is not the run" if edit == "mode" else why, tmp_path)   # a mode: config.json says another


def test_overwrite_replaces_an_earlier_output_set_whole(tmp_path, capsys, tiny_checkpoint, make_acdc, monkeypatch):
    """--overwrite left the files of an earlier set that the new one does not write beside it (an earlier
    evaluation's volumes.csv beside a report of other data; an earlier prediction's images beside a new
    inputs.csv that does not list them): the folder now holds the new set alone."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(images / f"{name}.png")
    assert predict_main([str(tiny_checkpoint), str(images), "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    assert len(list((tmp_path / "p").iterdir())) == 3 * 3 + 1
    (tmp_path / "p" / "notes.txt").write_text("mine")
    assert predict_main([str(tiny_checkpoint), str(images / "a.png"), "--out", str(tmp_path / "p"), "--overwrite",
                         "--no-progress"]) == 0
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == ["a_gsi.png", "a_mask.png", "a_overlay.png",
                                                                  "inputs.csv", "notes.txt"]
    (tmp_path / "p" / "notes.txt").unlink()                          # the earlier outputs as this one's inputs,
    (tmp_path / "q").mkdir()                                         # hard-linked into another folder
    for f in (tmp_path / "p").glob("*.png"):
        os.link(f, tmp_path / "q" / f.name)
    (tmp_path / "q" / ".png").write_bytes((images / "a.png").read_bytes())   # hidden: noted, not read
    capsys.readouterr()
    assert predict_main([str(tiny_checkpoint), str(tmp_path / "q"), "--out", str(tmp_path / "p"), "--overwrite",
                         "--no-progress"]) == 0                       # they stay: never removed as an earlier set
    assert {"a_gsi.png", "a_mask.png", "a_overlay.png", "a_mask_mask.png"} <= {f.name for f in (tmp_path / "p").iterdir()}
    assert "1 hidden file(s) not read (.png)" in capsys.readouterr().err
    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    make_acdc(tmp_path / "ACDC")
    assert evaluate_main([str(tiny_checkpoint), "--data", str(tmp_path / "ACDC"), "--out", str(tmp_path / "e"),
                          "--no-progress"]) == 0
    assert (tmp_path / "e" / "volumes.csv").exists()                 # scored per volume
    assert evaluate_main([str(tiny_checkpoint), "--out", str(tmp_path / "e"), "--overwrite", "--no-progress"]) == 0
    assert sorted(f.name for f in (tmp_path / "e").iterdir()) == ["confusion.csv", "confusion.png", "report.json"]


def test_train_on_an_acdc_folder_of_unscaled_images_gives_advice_it_can_follow(tmp_path, capsys, make_acdc,
                                                                                 monkeypatch):
    """An SSL4MIS folder with a slice of values up to ~1000: train said "Pass --intensity minmax", an option
    train does not have. It now gives the conversion to run; run as given, the data trains."""
    import shlex

    import h5py

    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    make_acdc(tmp_path / "A")
    with h5py.File(tmp_path / "A" / "data/slices/patient001_frame01_slice_1.h5", "r+") as f:
        f["image"][...] = f["image"][...] * 1000
    msg = one_line_error(train_main, TINY + ["--data", tmp_path / "A", "--out", tmp_path / "r"], capsys,
                         "patient001_frame01_slice_1.h5: float32 image with values", tmp_path / "A")
    assert "Pass --intensity" not in msg and "then pass --data DIR" in msg, msg
    given = shlex.split(msg.split("Convert the folder yourself with that rule: ")[1].split(" (and")[0])
    assert given[:4] == ["python", "-m", "cycleseg.data", "convert"]
    d = tmp_path / "DIR"
    for split in ("train", "val"):
        argv = [a.replace("DIR/train.h5", str(d / f"{split}.h5")) for a in given[3:]]
        argv[argv.index("--split") + 1] = split
        assert data_main(argv + ["--no-progress"]) == 0
    assert train_main([str(a) for a in TINY + ["--data", d, "--out", tmp_path / "r", "--labeled-fraction", "0.5"]]) == 0


def test_a_split_that_lists_no_volumes_is_scored_per_slice(tmp_path, capsys, tiny_checkpoint, make_acdc, monkeypatch):
    """evaluate --split train on an SSL4MIS folder whose train.list is empty (as SSL4MIS ships it) wrote its
    outputs and then failed (KeyError traceback), its half-written folder refused on a rerun: it scores the
    slices, says the split lists no volumes, and writes no empty volume table."""
    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    make_acdc(tmp_path / "ACDC")
    assert evaluate_main([str(tiny_checkpoint), "--data", str(tmp_path / "ACDC"), "--split", "train", "--out",
                          str(tmp_path / "e"), "--no-progress"]) == 0
    assert "lists no volumes: scored per slice alone" in capsys.readouterr().err
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert "volumes" not in report and report["images"] > 0 and not (tmp_path / "e" / "volumes.csv").exists()
    assert report["data"] == str(tmp_path / "ACDC") and "cache" in report["file"]   # the folder named, not its cache
    (tmp_path / "ACDC" / "train.list").write_text("patient001_frame01\npatient002_frame01\n")   # as the real copy:
    assert evaluate_main([str(tiny_checkpoint), "--data", str(tmp_path / "ACDC"), "--split", "train", "--out",
                          str(tmp_path / "e3"), "--no-progress"]) == 0   # volumes listed, not there (it failed)
    assert "2 volume(s) train.list names are not in" in capsys.readouterr().err
    assert "volumes" not in json.loads((tmp_path / "e3" / "report.json").read_text())
    (tmp_path / "ACDC" / "train.list").unlink()                     # no train.list at all: the same (it failed)
    assert evaluate_main([str(tiny_checkpoint), "--data", str(tmp_path / "ACDC"), "--split", "train", "--out",
                          str(tmp_path / "e2"), "--no-progress"]) == 0
    assert "lists no volumes: scored per slice alone" in capsys.readouterr().err


def test_evaluate_refuses_the_checkpoints_classes_in_another_order(tmp_path, capsys, tiny_checkpoint):
    """Data naming the checkpoint's classes in another order was scored with each class id under another
    name, exit 0: refused; other names are scored by class id, with a note."""
    names = torch.load(tiny_checkpoint, weights_only=False)["data"]["class_names"]
    k = len(names)
    for name, order in (("swapped.h5", names[::-1]), ("other.h5", [f"c{i}" for i in range(k)])):
        rng = np.random.default_rng(0)
        write_split(tmp_path / name, rng.integers(0, 256, (4, 16, 16, 1), dtype=np.uint8),
                    rng.integers(0, k, (4, 16, 16), dtype=np.uint8),
                    Meta(num_classes=k, class_names=list(order), palette=[[0, 0, 0]] * k))
    one_line_error(evaluate_main, [tiny_checkpoint, "--data", tmp_path / "swapped.h5", "--out", tmp_path / "e"],
                   capsys, "the checkpoint's (" + ", ".join(names) + ") in another order", tmp_path)
    assert evaluate_main([str(tiny_checkpoint), "--data", str(tmp_path / "other.h5"), "--out", str(tmp_path / "e"),
                          "--no-progress"]) == 0
    assert "scored by class id" in capsys.readouterr().err


def test_export_overwrite_replaces_the_earlier_export_whole(tmp_path, tiny_checkpoint):
    """export --overwrite with fewer formats left the earlier export's other file (a .pt2 of another step
    beside the new .onnx, both named last.*): the set is replaced whole."""
    from cycleseg.export import main as export_main

    assert export_main([str(tiny_checkpoint), "--out", str(tmp_path / "x"), "--formats", "onnx", "pt2"]) == 0
    assert export_main([str(tiny_checkpoint), "--out", str(tmp_path / "x"), "--formats", "onnx", "--overwrite"]) == 0
    assert sorted(f.name for f in (tmp_path / "x").iterdir()) == ["last.onnx"]


def test_converters_on_what_the_sixth_probe_tried(tmp_path, capsys):
    """--map reaches 16-bit mask values above 255 (it was refused before the mapping, with advice to use
    it); two masks of one name in two cases (a.png, a.PNG) refused, not one picked by directory order; a
    TIFF mask is not called a JPEG; options of convert nifti given to another converter, and --split to an
    image folder, refused (were ignored; their default values too); a negative --split-seed refused (was a
    traceback)."""
    wide = np.zeros((8, 8), np.uint16)
    wide[:2] = 1000
    src = folder_tree(tmp_path / "f", [wide, np.ones((8, 8), np.uint8)])
    assert data_main(["convert", "folder", str(src), str(tmp_path / "o.h5"), "--no-progress", "--map", "1000=2"]) == 0
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["masks"][0].max() == 2 and int((f["masks"][0] == 2).sum()) == 16 and f.attrs["num_classes"] == 3
    for args, match in ((["--axis", "1"], "--axis: an option of convert nifti only"),
                        (["--holdout", "0.2", "0.2", "--split-seed", "3"], "--holdout, --split-seed: an option of"),
                        (["--holdout", "0.1", "0.2", "--split-seed", "0"], "--holdout, --split-seed: an option of"),
                        (["--split", "val"], "--split: an image folder is one split")):
        one_line_error(data_main, ["convert", "folder", src, tmp_path / "p.h5", "--no-progress", *args], capsys,
                       match, tmp_path)
    one_line_error(data_main, ["convert", "nifti", src, tmp_path / "p.h5", "--split-seed", "-1"], capsys,
                   "--split-seed must be >= 0", tmp_path)
    Image.fromarray(np.full((8, 8), 1, np.uint8)).save(src / "masks" / "1.PNG")
    one_line_error(data_main, ["convert", "folder", src, tmp_path / "p.h5", "--no-progress"], capsys,
                   "are both the mask of '1'; keep one", tmp_path)
    (src / "masks" / "1.PNG").unlink()
    (src / "masks" / "1.png").rename(src / "masks" / "1.tiff")
    err = one_line_error(data_main, ["convert", "folder", src, tmp_path / "p.h5", "--no-progress"], capsys,
                         "masks are read as lossless .png only (found 1.tiff; save them as .png)", tmp_path)
    assert "JPEG" not in err


def test_nifti_pairs_the_sixth_probe_tried(tmp_path, capsys):
    """A float64 scan beyond float32's range became an all-black volume: refused; a.nii beside a.nii.gz
    became two volumes named a: refused."""
    import nibabel as nib

    src = tmp_path / "pairs"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    data, label = np.random.default_rng(0).random((12, 12, 3)), np.zeros((12, 12, 3), np.uint8)
    label[4:8, 4:8] = 1
    nib.save(nib.Nifti1Image(data * 1e39, np.eye(4)), str(src / "images" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(src / "labels" / "a.nii.gz"))
    one_line_error(data_main, ["convert", "nifti", src, tmp_path / "o.h5", "--split", "all", "--size", "16", "16",
                               "--no-progress"], capsys, "beyond float32's range", tmp_path)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(src / "images" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(src / "images" / "a.nii"))
    one_line_error(data_main, ["convert", "nifti", src, tmp_path / "o.h5", "--split", "all", "--size", "16", "16",
                               "--no-progress"], capsys, "are both the scan 'a'; keep one", tmp_path)


def test_plot_and_grid_options_the_sixth_probe_tried(tmp_path, capsys):
    """A record of 1e308 (beyond any float32 loss) crashed matplotlib: left out as NaN is; the paper grid
    ignored --fractions and --methods: refused."""
    import os

    from cycleseg.experiments import main as grid_main
    from cycleseg.plot import main as plot_main

    run = tmp_path / "huge"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1e308}\n'
                                       '{"step": 2, "split": "train", "loss": 0.5}\n'
                                       '{"step": 2, "split": "val", "miou": -1e308}\n')
    assert plot_main([str(run), "--out", str(tmp_path / "p.png")]) == 0 and (tmp_path / "p.png").stat().st_size > 0
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1e308}\n')
    one_line_error(plot_main, [run, "--out", tmp_path / "q.png"], capsys, "no finite number to draw", tmp_path)
    one_line_error(grid_main, ["--grid", "paper", "--fractions", "0.3", "--out", tmp_path / "g"], capsys,
                   "the paper grid's are fixed", tmp_path)
    one_line_error(grid_main, ["--grid", "paper", "--seeds", "-1", "--out", tmp_path / "g"], capsys,
                   "--seeds: -1 is not a seed (0 .. 2**32 - 1)", tmp_path)    # it named --seed, a cell's option
    fifo = tmp_path / "fifo"                                            # a FIFO of records blocked plot for good
    fifo.mkdir()
    os.mkfifo(fifo / "metrics.jsonl")
    one_line_error(plot_main, [fifo, "--out", tmp_path / "r.png"], capsys, "is a special file (a FIFO, a device)", tmp_path)


def test_metrics_refuses_label_values_beyond_a_byte(tmp_path, capsys):
    """A reference label of 300 was cast to a byte and scored as class 44: refused."""
    import nibabel as nib

    from cycleseg.metrics import main as metrics_main

    lab = np.zeros((8, 8, 3), np.uint16)
    lab[2:6, 2:6] = 1
    for d in ("p", "t"):
        (tmp_path / d).mkdir()
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / d / "c.nii.gz"))
    lab[0, 0, 0] = 300
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "t" / "c.nii.gz"))
    one_line_error(metrics_main, [tmp_path / "p", tmp_path / "t"], capsys, "label value 300 (1 voxels) outside the "
                   "class ids 0..254", tmp_path)


def test_splits_without_a_labeled_pixel_are_refused(tmp_path, capsys):
    """Masks that are all the ignore index (a converter's --map gone wrong): training ran, logged val mIoU
    NaN, never wrote the best.pt its closing line named, and printed NaN in its JSON. The labeled subset and
    the val split must each hold a labeled pixel."""
    def split(path, all_ignored: bool):
        tiny_split(path, 16)
        if all_ignored:
            with h5py.File(path, "r+") as f:
                f["masks"][...] = 255
        return path

    train, val = split(tmp_path / "train.h5", True), split(tmp_path / "val.h5", False)
    one_line_error(train_main, TINY + ["--data", train, "--val-data", val, "--out", tmp_path / "r"], capsys,
                   "labeled subset hold no labeled pixel (every mask pixel is the ignore index 255)", tmp_path)
    train, val = split(tmp_path / "train.h5", False), split(tmp_path / "val.h5", True)
    one_line_error(train_main, TINY + ["--data", train, "--val-data", val, "--out", tmp_path / "r"], capsys,
                   "val.h5: the val split holds no labeled pixel", tmp_path)


def test_evaluate_refuses_a_split_without_a_labeled_pixel(tmp_path, capsys, tiny_checkpoint):
    """evaluate scored a file whose masks are all the ignore index: exit 0, a report of NaN (not valid JSON),
    where training refuses the same split: the one check (splits.check_labeled) now serves both."""
    names = torch.load(tiny_checkpoint, weights_only=False)["data"]["class_names"]
    k = len(names)
    rng = np.random.default_rng(0)
    write_split(tmp_path / "unlabeled.h5", rng.integers(0, 256, (4, 16, 16, 1), dtype=np.uint8),
                np.full((4, 16, 16), 255, np.uint8), Meta(num_classes=k, class_names=list(names),
                                                          palette=[[0, 0, 0]] * k))
    one_line_error(evaluate_main, [tiny_checkpoint, "--data", tmp_path / "unlabeled.h5", "--out", tmp_path / "e"],
                   capsys, "unlabeled.h5: the file holds no labeled pixel (every mask pixel is the ignore index 255)",
                   tmp_path)


def test_overwrite_never_removes_one_of_the_commands_inputs(tmp_path, capsys, tiny_checkpoint):
    """--overwrite takes away an earlier output set's files that the new set does not write; that list was not
    checked against the command's inputs: export of a checkpoint named m.pt2 to ONNX, evaluate of one named
    volumes.csv, predict into a folder whose inputs.csv named the checkpoint, each deleted the checkpoint it
    read, exit 0. No removal takes an input now (fileio.write_files' inputs); predict's inputs.csv names only
    the kinds of file predict writes."""
    import shutil

    from cycleseg.export import main as export_main

    e = tmp_path / "e"
    e.mkdir()
    shutil.copy(tiny_checkpoint, e / "m.pt2")
    assert export_main([str(e / "m.pt2"), "--formats", "onnx", "--overwrite"]) == 0
    assert sorted(f.name for f in e.iterdir()) == ["m.onnx", "m.pt2"]

    v = tmp_path / "v"
    v.mkdir()
    shutil.copy(tiny_checkpoint, v / "volumes.csv")
    assert evaluate_main([str(v / "volumes.csv"), "--out", str(v), "--overwrite", "--no-progress"]) == 0
    assert (v / "volumes.csv").read_bytes() == tiny_checkpoint.read_bytes()

    p = tmp_path / "p"
    p.mkdir()
    shutil.copy(tiny_checkpoint, p / "last.pt")
    (p / "notes.png").write_bytes(b"mine")
    (p / "inputs.csv").write_text("input,output\nfoo.png,last.pt\nfoo.png,notes.png\n")
    Image.new("L", (16, 16)).save(tmp_path / "a.png")
    assert predict_main([str(p / "last.pt"), str(tmp_path / "a.png"), "--out", str(p), "--overwrite",
                         "--no-progress"]) == 0
    assert (p / "last.pt").read_bytes() == tiny_checkpoint.read_bytes() and (p / "notes.png").read_bytes() == b"mine"
    assert {"a_mask.png", "a_overlay.png", "inputs.csv"} <= {f.name for f in p.iterdir()}


def test_a_converter_names_the_file_it_refuses(tmp_path, capsys):
    """The folder converter named only an image's stem ("i0: 1 NaN or infinite pixel values"), where predict
    names the file: both name the path now."""
    for d in ("images", "masks"):
        (tmp_path / "src" / d).mkdir(parents=True)
    img = np.zeros((8, 8), np.float32)
    img[0, 0] = np.nan
    Image.fromarray(img).save(tmp_path / "src" / "images" / "i0.tif")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "src" / "masks" / "i0.png")
    one_line_error(data_main, ["convert", "folder", tmp_path / "src", tmp_path / "o.h5", "--no-progress"], capsys,
                   f"{tmp_path / 'src' / 'images' / 'i0.tif'}: 1 NaN or infinite pixel values", tmp_path)


def test_resume_refuses_records_that_are_a_link(tmp_path, capsys, finished_run):
    """A run folder whose metrics.jsonl is a symbolic link to another run's took that run's records into its
    own history on --resume, without a word: refused, nothing written."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    other = tmp_path / "other.jsonl"
    other.write_bytes((run / "metrics.jsonl").read_bytes())
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(other)
    one_line_error(train_main, TINY + ["--out", run, "--resume", "--steps", "4"], capsys,
                   "metrics.jsonl is a symbolic link (to", tmp_path)


def test_a_run_and_a_grid_keep_to_their_own_folders(tmp_path, capsys, finished_run):
    """`train --out` into a finished grid's folder, and a grid's `--out` into a finished run's folder, were both
    accepted (a run's files mixed with a grid's cells and results): refused, nothing written."""
    import shutil

    grid = tmp_path / "grid"
    (grid / "partial-10pct-seed0").mkdir(parents=True)              # an interrupted grid: a cell, no results yet
    shutil.copy(finished_run / "config.json", grid / "partial-10pct-seed0" / "config.json")
    one_line_error(train_main, TINY + ["--out", grid], capsys,
                   "holds the run folder partial-10pct-seed0/ (a folder of runs: an experiments grid's", tmp_path)
    (grid / "results.json").write_text("{}")
    one_line_error(train_main, TINY + ["--out", grid, "--resume"], capsys, "holds results.json (a folder of runs", tmp_path)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    one_line_error(experiments_main, ["--grid", "comparison", "--fractions", "0.5", "--seeds", "0", "--out", run,
                                      "--", *TINY[:-4]], capsys,
                   f"--out {run} holds a training run (config.json, metrics.jsonl, last.pt, best.pt, samples/), "
                   f"not a grid", tmp_path)


def test_plot_treats_the_runs_own_curves_alike_however_named(tmp_path, capsys, finished_run):
    """`plot RUN` redraws the run's curves.png, while `plot RUN --out RUN/curves.png` was refused (the same
    file): both redraw it; another run's existing file is refused in one line that speaks of one file."""
    import shutil

    from cycleseg.plot import main as plot_main

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "curves.png").write_bytes(b"old")
    assert plot_main([str(run), "--out", str(run / "curves.png")]) == 0
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "c.png").write_bytes(b"mine")
    one_line_error(plot_main, [run, "--out", tmp_path / "c.png"], capsys,
                   "c.png exists already (an earlier plot, or another file of that name); pass --overwrite to "
                   "replace it, or", tmp_path)


def test_a_converted_folder_and_a_grey_model_say_what_they_drop(tmp_path, capsys, tiny_checkpoint):
    """The folder converter read semi-transparent images without their alpha, and predict read a colour image
    into a grey (1-channel) model as grey, both without a word (predict noted transparency only): each noted
    once, naming the first image; a grey image stored as RGB (equal channels) is not called colour."""
    src = tmp_path / "src"
    for d in ("images", "masks"):
        (src / d).mkdir(parents=True)
    Image.new("RGBA", (16, 16), (10, 20, 30, 128)).save(src / "images" / "a.png")
    Image.new("RGB", (16, 16), (40, 40, 40)).save(src / "images" / "b.png")
    for n in "ab":
        Image.fromarray(np.eye(16, dtype=np.uint8)).save(src / "masks" / f"{n}.png")
    assert data_main(["convert", "folder", str(src), str(tmp_path / "o.h5"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert (f"note: 1 image has transparent pixels (first: {src / 'images' / 'a.png'}): read without its alpha "
            f"channel, a transparent pixel as the colour it holds; flatten it onto a background first to train on "
            f"what a viewer shows") in err, err
    assert predict_main([str(tiny_checkpoint), str(src / "images"), "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert (f"note: 1 image is in colour (first: {src / 'images' / 'a.png'}), where the model takes grey images "
            f"(1 channel): read as grey") in err, err


@pytest.mark.parametrize("flags, match", [
    (["--fractions", "0.1", "0.1"], "--fractions: 0.1 is given twice; give each fraction once"),
    (["--fractions", "1.0"], "--fractions: 1.0 is not a labeled fraction in (0, 1): 1 labels every image, the Full"),
    (["--seeds", "0", "0"], "--seeds: 0 is given twice; give each once"),
    (["--methods", "semi", "semi"], "--methods: semi is given twice; give each once"),     # ran the cell twice at once
])
def test_grid_options_given_twice_or_at_every_label(tmp_path, capsys, flags, match):
    """A grid's --fractions 0.1 0.1 and --seeds 0 0 were taken as one (a mean over fewer runs than asked,
    without a word) and --fractions 1.0 ran Partial and semi on every label beside Full: refused."""
    argv = ["--grid", "comparison", "--fractions", "0.5", "--seeds", "0", *flags, "--out", tmp_path / "g"]
    one_line_error(experiments_main, argv, capsys, match, tmp_path)


def test_a_checkpoint_without_digests_is_noted_and_edited_moments_refused(tmp_path, capsys, finished_run):
    """A checkpoint with its digests deleted (and its weights, palette and best score edited) was evaluated,
    exported and resumed without a word, and Adam's moments multiplied by 1000 were resumed from silently
    (the digest skips large tensors): the first is read with a note that it cannot be checked, the second
    refused by a resume (moments_digest)."""
    import shutil

    from cycleseg.checkpoint import digest

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = torch.load(run / "last.pt", weights_only=False)
    moments = [t for o in state["optimizers"].values() for p in o["state"].values() for t in p.values()
               if isinstance(t, torch.Tensor) and t.numel() > 16]
    assert moments
    for t in moments:
        t.mul_(1000).add_(1)
    state["digest"] = digest(state)                                 # the run state's digest made to agree
    torch.save(state, run / "last.pt")
    one_line_error(train_main, TINY + ["--out", run, "--resume", "--steps", "6"], capsys,
                   "its optimizer state (Adam's moments) is not what its run saved", tmp_path)
    del state["digest"], state["weights_digest"], state["moments_digest"]
    torch.save(state, run / "last.pt")
    capsys.readouterr()
    assert evaluate_main([str(run / "last.pt"), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    assert (f"note: {run / 'last.pt'} carries no weights_digest or digest (written by an older cycleseg, or edited): "
            f"what it holds cannot be checked against what its run saved") in capsys.readouterr().err


def test_plot_refuses_a_run_given_twice_and_a_negative_exponent_is_a_number(tmp_path, capsys, finished_run):
    """`plot RUN RUN` drew one run twice without a word, and `--lr -1e-3` was read as an option ("expected one
    argument"): the first refused, the second refused by --lr's own range, as -1 is."""
    from cycleseg.plot import main as plot_main

    one_line_error(plot_main, [finished_run, finished_run / ".." / finished_run.name, "--out", tmp_path / "c.png"],
                   capsys, "is given twice; give each run once", tmp_path)
    one_line_error(train_main, TINY + ["--lr", "-1e-3", "--out", tmp_path / "r"], capsys,
                   "--lr must be in (0, 10] (a learning rate; the paper's is 2e-4), got -0.001", tmp_path)


def test_a_map_beyond_the_classes_is_an_option_error(tmp_path, capsys):
    """`--map 2=7 --num-classes 3` was refused only at the first mask, in the HDF5 writer's words ("dataset
    'masks', index 0: value 7 is not a class id"): refused as the option it is, before any file is read."""
    for d in ("images", "masks"):
        (tmp_path / "src" / d).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "src" / "images" / "a.png")
    Image.fromarray(np.eye(8, dtype=np.uint8) * 2).save(tmp_path / "src" / "masks" / "a.png")
    one_line_error(data_main, ["convert", "folder", tmp_path / "src", tmp_path / "o.h5", "--map", "2=7",
                               "--num-classes", "3", "--no-progress"], capsys,
                   "--map 2=7: class 7 is beyond --num-classes 3 (class ids 0..2, or 255: ignore)", tmp_path)


@pytest.mark.parametrize("env, match", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 asks for a distributed job, but RANK is not set: start it with torchrun"),
    ({"WORLD_SIZE": "abc"}, "the environment variable WORLD_SIZE='abc' is not a whole number of at least 1"),
    ({"WORLD_SIZE": "0"}, "the environment variable WORLD_SIZE='0' is not a whole number of at least 1"),
    ({"WORLD_SIZE": "1", "RANK": "3"}, "RANK=3 is not a rank of WORLD_SIZE=1 processes (0..0)"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 asks for a distributed job, but MASTER_ADDR is not set"),
])
def test_torchrun_variables_left_in_a_plain_runs_environment(tmp_path, capsys, monkeypatch, env, match):
    """WORLD_SIZE left in the environment of a plain run crashed it (KeyError: 'RANK', int() of 'abc',
    torch's MASTER_ADDR traceback) or was taken with a rank beyond it: one line naming the variable."""
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    one_line_error(train_main, TINY + ["--out", tmp_path / "r"], capsys, match, tmp_path)


def test_a_train_that_fails_at_its_start_leaves_an_existing_folder_as_it_was(tmp_path, capsys):
    """A start refused after config.json and samples/ were written (--tensorboard where a file is named
    tensorboard) left them in a folder that existed before, which the next command then refused as holding a
    run: removed, the folder as it was."""
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "tensorboard").write_text("a file")
    assert train_main(TINY + ["--out", str(folder), "--tensorboard"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "tensorboard"]
    (folder / "tensorboard").unlink()
    assert train_main(TINY + ["--out", str(folder)]) == 0


def test_method_options_give_each_option_once(tmp_path, capsys):
    """--method-options partial "--lr 0.1" --method-options partial "--lr 0.2" (or "--lr 0.1 --lr 0.2")
    trained at 0.2 without a word: refused."""
    for opts in (["--method-options", "partial", "--lr 0.1", "--method-options", "partial", "--lr 0.2"],
                 ["--method-options", "partial", "--lr 0.1 --lr=0.2"]):
        one_line_error(experiments_main, ["--grid", "comparison", "--fractions", "0.5", "--methods", "partial",
                                          "--seeds", "0", *opts, "--out", tmp_path / "g", "--", *TINY[:-4]], capsys,
                       "--method-options partial: --lr is given twice for partial; give it once", tmp_path)


def test_the_twenty_first_probes_messages(tmp_path, capsys, tiny_checkpoint):
    """evaluate and export called an exported .onnx / .pt2 "corrupt, truncated or not a torch checkpoint";
    --device cpu:1 was taken and ' cpu' named as "cpu: not a device"; data info printed a source attribute's
    escape sequences raw; a NaN pixdim beside an sform was read (nibabel's own warning line, the NaN copied
    into predict's output header)."""
    import nibabel as nib

    from cycleseg.export import main as export_main

    for suffix, kind in ((".onnx", "an exported ONNX model"), (".pt2", "an exported torch.export program")):
        model = tmp_path / f"m{suffix}"
        model.write_bytes(b"\x08\x09exported")
        one_line_error(evaluate_main, [model, "--out", tmp_path / "e"], capsys,
                       f"m{suffix}: {kind} (python -m cycleseg.export), not a run's checkpoint", tmp_path)
        one_line_error(export_main, [model, "--out", tmp_path / "x"], capsys, f"{kind} (python -m", tmp_path)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    one_line_error(predict_main, [tiny_checkpoint, tmp_path / "a.png", "--out", tmp_path / "p", "--device", "cpu:1"],
                   capsys, "--device cpu:1: the CPU is one device; give cpu", tmp_path)
    one_line_error(predict_main, [tiny_checkpoint, tmp_path / "a.png", "--out", tmp_path / "p", "--device", " cpu"],
                   capsys, "--device ' cpu': not a device", tmp_path)
    tiny_split(tmp_path / "s.h5", 16)
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f.attrs["source"] = "x\n\x1b[31mred"
    capsys.readouterr()
    assert data_main(["info", str(tmp_path / "s.h5")]) == 0
    out = capsys.readouterr().out
    assert "source: x\\n\\x1b[31mred" in out and "\x1b" not in out, out
    img = nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 4)).astype(np.float32), np.diag([1.5, 1.5, 8, 1]))
    img.header["pixdim"][1] = np.nan
    nib.save(img, str(tmp_path / "nan.nii.gz"))
    one_line_error(predict_main, [tiny_checkpoint, tmp_path / "nan.nii.gz", "--out", tmp_path / "p", "--no-progress"], capsys,
                   "nan.nii.gz: its header's voxel sizes (pixdim) are [nan, 1.5, 8.0]", tmp_path)


def test_class_names_are_drawn_as_written_and_evaluate_scores_its_val_data(tmp_path, capsys, tiny_checkpoint):
    """A class named "$\\frac{a$" crashed training at its first picture and evaluate at confusion.png
    (matplotlib read it as maths; "$x^2$" was drawn as maths); evaluate --data train.h5 --val-data val.h5
    scored the train file as "val" and ignored --val-data."""
    from cycleseg import figures
    from cycleseg.data.h5format import read_meta

    meta = read_meta(tiny_split(tmp_path / "train.h5", 16, k=3))
    meta.class_names = ["bg", "$\\frac{a$", "$x^2$"]
    figures.png(figures.confusion_heatmap(np.eye(3), meta.class_names))      # drew without a ParseException
    assert figures.literal("$x^2$") == "\\$x^2\\$"
    tiny_split(tmp_path / "val.h5", 16, n=4, k=3, seed=1)
    state = torch.load(tiny_checkpoint, weights_only=False)
    k, c = state["data"]["num_classes"], state["data"]["channels"]
    tiny_split(tmp_path / "tr.h5", 16, n=6, k=k, channels=c)
    tiny_split(tmp_path / "va.h5", 16, n=4, k=k, channels=c, seed=1)
    assert evaluate_main([str(tiny_checkpoint), "--data", str(tmp_path / "tr.h5"), "--val-data",
                          str(tmp_path / "va.h5"), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["data"].endswith("va.h5") and report["images"] == 4, report["data"]


def test_the_twenty_second_probes_silent_options(tmp_path, capsys, tiny_checkpoint):
    """Converter options with no use were dropped without a word (voc --num-classes 5 wrote 21 classes,
    --keep-aspect without --size, --preset paper for a folder), an id listed twice in a split list was
    converted twice, and predict skipped a folder's subfolder images while reading its subfolder scans:
    refused, or noted."""
    src = tmp_path / "src"
    for d in ("images", "masks", "images/sub"):
        (src / d).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "images" / "sub" / "b.png")
    Image.fromarray(np.eye(8, dtype=np.uint8)).save(src / "masks" / "a.png")
    for flags, match in ((["voc", tmp_path, "--num-classes", "5"], "--num-classes: voc's classes are fixed"),
                         (["folder", src, "--keep-aspect"], "--keep-aspect: resizes to --size"),
                         (["folder", src, "--preset", "paper"], "--preset paper: the paper's sizes are for voc")):
        one_line_error(data_main, ["convert", flags[0], flags[1], tmp_path / "o.h5", *flags[2:], "--no-progress"],
                       capsys, match, tmp_path)
    for d in ("ImageSets/Segmentation", "SegmentationClass", "JPEGImages"):
        (tmp_path / "voc" / d).mkdir(parents=True)
    (tmp_path / "voc" / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\na\n")
    one_line_error(data_main, ["convert", "voc", tmp_path / "voc", tmp_path / "o.h5", "--no-progress"], capsys,
                   "train.txt: a is listed twice; list each once", tmp_path)
    assert predict_main([str(tiny_checkpoint), str(src / "images"), "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    assert f"note: {src / 'images'}: 1 image(s) in its subfolders not read (first: {src / 'images' / 'sub' / 'b.png'})" \
        in capsys.readouterr().err


def test_the_twenty_second_probes_messages(tmp_path, capsys, finished_run):
    """A VOC mask drawn in colour was blamed on its image; a float image of 1.0000001 read "values 1..1"; a
    class name holding U+202E was printed raw in evaluate's table (it reverses the line on a terminal); a
    resume after metrics.jsonl was deleted went on without a word."""
    import shutil

    from cycleseg.data.convert import Item, load_pair
    from cycleseg.report import evaluation_table

    colour = Item("a", lambda: np.zeros((4, 4), np.uint8), lambda: np.zeros((4, 4, 3), np.uint8),
                  files=(tmp_path / "a.jpg", tmp_path / "a.png"))
    with pytest.raises(Exception, match=r"a.png: a mask of shape \(4, 4, 3\); masks are \(H, W\) class ids"):
        load_pair(colour)
    above = Item("b", lambda: np.full((4, 4), 1.0000001, np.float32), lambda: np.zeros((4, 4), np.uint8))
    with pytest.raises(Exception, match=r"float32 image with values 1.00000012..1.00000012"):
        load_pair(above)
    table = evaluation_table({"checkpoint": "c", "step": 1, "data": "d", "split": "val", "images": 1,
                              "absent_classes": ["x\u202ey"], "slices": {
                                  "miou": 0.5, "mdice": 0.5, "pixel_acc": 0.5, "miou_no_bg": 0.5,
                                  "iou": {"bg": 0.5, "x\u202ey": None}, "dice": {"bg": 0.5, "x\u202ey": None}}})
    assert "\u202e" not in table and "x\\u202ey" in table
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "metrics.jsonl").unlink()
    capsys.readouterr()
    assert train_main(TINY + ["--out", str(run), "--resume", "--steps", "5"]) == 0
    err = capsys.readouterr().err
    assert f"note: {run / 'metrics.jsonl'} is missing: the records of steps 1.." in err, err


def test_a_grid_cells_folder_that_is_a_file_is_one_line_before_any_cell(tmp_path, capsys):
    """A file where a cell's run folder goes was found only at that cell's turn, after the cells before it had
    trained, in two error lines (the cell's and the grid's): one line, before any cell."""
    grid = tmp_path / "g"
    grid.mkdir()
    (grid / "partial-50pct-seed0").write_text("mine")
    one_line_error(experiments_main, ["--grid", "comparison", "--fractions", "0.5", "--methods", "partial",
                                      "--seeds", "0", "--out", grid, "--", *TINY[:-4]], capsys,
                   "partial-50pct-seed0 is a file where the grid keeps that cell's run folder", tmp_path)


def test_an_empty_volume_list_is_named(tmp_path, capsys, make_acdc):
    """convert acdc --split val with an empty val.list said only "nothing to convert into ...": the list is
    named."""
    make_acdc(tmp_path / "ACDC")
    (tmp_path / "ACDC" / "val.list").write_text("\n")
    one_line_error(data_main, ["convert", "acdc", tmp_path / "ACDC", tmp_path / "v.h5", "--split", "val",
                               "--no-progress"], capsys, "val.list: lists no volumes (the val split's", tmp_path)


def test_a_size_mismatch_from_exif_orientation_says_so(tmp_path, capsys):
    """An image stored 20x30 with EXIF orientation 6 beside a 20x30 mask was refused as "image is 30x20 but
    its mask is 20x30", EXIF unsaid (the file on disk is 20x30): the message says the orientation turned it."""
    for d in ("images", "masks"):
        (tmp_path / "src" / d).mkdir(parents=True)
    im = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "src" / "images" / "p.jpg", exif=exif)
    Image.fromarray(np.eye(20, 30, dtype=np.uint8)).save(tmp_path / "src" / "masks" / "p.png")
    one_line_error(data_main, ["convert", "folder", tmp_path / "src", tmp_path / "o.h5", "--no-progress"], capsys,
                   "image is 30x20 but its mask is 20x30 (the image is stored 20x30 and its EXIF orientation 6 turns",
                   tmp_path)


def test_a_data_file_is_not_reported_as_the_split_asked(tmp_path, capsys, tiny_checkpoint):
    """evaluate --data train.h5 --split val (or test) scored train.h5 and reported it as the val (test)
    split, in its table, report.json and folder name (eval-val-last-train), exit 0: --split with a file is
    refused, and a file alone is reported as the file it is."""
    state = torch.load(tiny_checkpoint, weights_only=False)
    k, c = state["data"]["num_classes"], state["data"]["channels"]
    tiny_split(tmp_path / "d" / "train.h5", 16, n=6, k=k, channels=c)
    for split in ("val", "test", "train"):
        one_line_error(evaluate_main, [tiny_checkpoint, "--data", tmp_path / "d" / "train.h5", "--split", split,
                                       "--no-progress"], capsys,
                       f"--split {split} with --data {tmp_path / 'd' / 'train.h5'}: a file is scored as it is", tmp_path)
    import shutil

    ckpt = tmp_path / "run" / "last.pt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_checkpoint, ckpt)
    assert evaluate_main([str(ckpt), "--data", str(tmp_path / "d" / "train.h5"), "--no-progress"]) == 0
    made = sorted(p.name for p in ckpt.parent.iterdir() if p.is_dir())
    assert made == ["eval-last-train"], made
    report = json.loads((ckpt.parent / "eval-last-train" / "report.json").read_text())
    assert report["split"] is None and report["images"] == 6
    assert "split" not in capsys.readouterr().out.splitlines()[0]


def test_predict_from_onnx_honours_device_and_precision(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    """predict model.onnx --device cuda:7 --precision bf16 ran fp32 on the CPU, exit 0, on a machine
    without CUDA (the same options with the checkpoint were refused): a precision the ONNX model does not
    run in is refused, --device is checked as for a checkpoint, and a CUDA device onnxruntime cannot use
    here is refused with what to install."""
    from pathlib import Path

    from cycleseg.export import main as export_main
    from cycleseg.predict import onnx_providers
    from cycleseg.usage import UsageError

    assert export_main([str(tiny_checkpoint), "--out", str(tmp_path / "x"), "--formats", "onnx"]) == 0
    onnx_file = tmp_path / "x" / f"{Path(tiny_checkpoint).stem}.onnx"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    base = [onnx_file, tmp_path / "a.png", "--out", tmp_path / "o", "--no-progress"]
    one_line_error(predict_main, base + ["--precision", "bf16"], capsys,
                   "--precision bf16: an ONNX model runs in the fp32 it was exported in", tmp_path)
    if not torch.cuda.is_available():
        one_line_error(predict_main, base + ["--device", "cuda:7"], capsys,
                       "--device cuda:7: this machine has no CUDA GPU", tmp_path)
    one_line_error(predict_main, base + ["--device", "tpu"], capsys, "--device 'tpu': not a device", tmp_path)
    assert predict_main([str(a) for a in base + ["--device", "cpu", "--precision", "fp32"]]) == 0
    assert onnx_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # a machine with two GPUs, as torch sees it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UsageError, match="--device cuda: this onnxruntime runs an ONNX model on the CPU only"):
        onnx_providers("cuda", ["CPUExecutionProvider"])
    assert onnx_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnx_providers("cuda:1", ["CUDAExecutionProvider"])[0] == ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(UsageError, match="this machine has 2 CUDA GPU"):
        onnx_providers("cuda:2", ["CUDAExecutionProvider"])


def test_an_image_size_a_converted_file_does_not_have_is_refused(tmp_path, capsys):
    """train --data train.h5 (32x32) --image-size 64 trained on 32x32 images and recorded image_size 64 in
    config.json, exit 0: refused, naming the file's size; the file's own size is taken as given."""
    tiny_split(tmp_path / "d" / "train.h5", 16)
    tiny_split(tmp_path / "d" / "val.h5", 16, seed=1)
    argv = TINY + ["--data", tmp_path / "d", "--mode", "partial", "--labeled-fraction", "0.5"]
    big = [a if a != "16" else "32" for a in argv]
    one_line_error(train_main, big + ["--out", tmp_path / "r"], capsys,
                   f"--image-size 32: {tmp_path / 'd' / 'train.h5'} holds 16x16 images, the size it was converted at",
                   tmp_path)
    one_line_error(train_main, big + ["--dry-run"], capsys, "--image-size 32:", tmp_path)
    assert train_main([str(a) for a in argv + ["--out", tmp_path / "r"]]) == 0


def test_predict_does_not_write_among_its_input_images(tmp_path, capsys, tiny_checkpoint):
    """predict CKPT fold/images --out fold/images wrote its masks and overlays among the images, exit 0; the
    folder's conversion then failed on 'no mask for image a_gsi.png' and a later predict read them as
    images. Refused for an input folder (through a link too) and for the folder of an image given alone."""
    folder = tmp_path / "fold" / "images"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "a.png")
    (tmp_path / "link").symlink_to(folder)
    for inputs, out in (([folder], folder), ([folder], tmp_path / "link"), ([folder / "a.png"], folder),
                        ([tmp_path / "link" / "a.png"], folder / ".")):
        one_line_error(predict_main, [tiny_checkpoint, *inputs, "--out", out, "--no-progress"], capsys,
                       f"--out {out} is the", tmp_path)
    assert predict_main([str(tiny_checkpoint), str(folder), "--out", str(folder / "predictions"), "--no-progress"]) == 0


def test_plot_takes_a_runs_metrics_file_as_its_run(tmp_path, capsys, finished_run):
    """plot RUN/metrics.jsonl said "RUN/metrics.jsonl: no metrics.jsonl (not a run folder)" of a file that
    exists: the run's records are taken as its run; another file is said to be a file."""
    import shutil

    from cycleseg.plot import main as plot_main

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "curves.png").unlink(missing_ok=True)
    assert plot_main([str(run / "metrics.jsonl")]) == 0
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    one_line_error(plot_main, [run / "config.json"], capsys,
                   f"{run / 'config.json'} is a file; plot takes run folders", tmp_path)


def test_a_new_lr_on_resume_scales_lr_d_only_under_adam():
    """--resume --lr 0.05 of a --optimizer sgd run scaled --lr-d with it (0.001 -> 0.005), though under sgd
    lr_d is the preset's Adam rate, whatever --lr, as a fresh run sets it: G_SI and the discriminators trained
    five times faster than in the same run started fresh. Adam keeps the scaling."""
    from cycleseg.config import flat, given_fields, parse_args, resume_config

    for optimizer, want in (("sgd", 0.001), ("adam", 0.01)):
        start = ["--mode", "semi", "--preset", "cpu", "--optimizer", optimizer, "--lr", "0.01" if optimizer == "sgd" else "0.002"]
        saved = flat(parse_args(start)[0].resolved())
        resume = ["--resume", "--lr", "0.05" if optimizer == "sgd" else "0.01"]
        cfg, notes = resume_config(saved, parse_args(resume)[0], given_fields(resume))
        fresh = parse_args(start[:-1] + [resume[-1]])[0].resolved()
        assert cfg.lr_d == pytest.approx(want), (optimizer, cfg.lr_d, notes)
        if optimizer == "sgd":
            assert cfg.lr_d == pytest.approx(fresh.lr_d) and not any("--lr-d" in n for n in notes)


def test_a_run_stopped_before_its_first_record_has_no_records_gone(tmp_path, capsys):
    """A run stopped at step 2 of --log-every / --eval-every 10 never wrote metrics.jsonl; its --resume said
    "metrics.jsonl is missing: the records of steps 1..2 are gone", of records that never were."""
    argv = [a if a != "--eval-every" else "--log-every" for a in TINY] + ["--eval-every", "10", "--steps", "6",
                                                                       "--out", str(tmp_path / "r")]
    argv[argv.index("--log-every") + 1] = "10"
    assert train_main([str(a) for a in argv + ["--stop-after", "2"]]) == 0
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
    capsys.readouterr()
    assert train_main([str(a) for a in argv + ["--resume"]]) == 0
    assert "is missing" not in capsys.readouterr().err


def test_options_a_mode_does_not_read_are_noted_in_its_dry_run_too(tmp_path, capsys):
    """train --mode full --labeled-fraction 0.2 trained on every label without a word (config 1.0), and a dry
    run said nothing of another method's options (--lambda1 with --mode full): both noted, in the run and in
    its dry run; a Full cell's --labeled-fraction 1.0 (what a grid gives it) is no note."""
    for extra, note in ((["--labeled-fraction", "0.2"], "note: --labeled-fraction: not read by --mode full"),
                        (["--lambda1", "9"], "note: --lambda1: an option of another method, not read by --mode full")):
        capsys.readouterr()
        assert train_main([str(a) for a in TINY + ["--mode", "full", "--dry-run", *extra]]) == 0
        assert note in capsys.readouterr().err
    assert train_main([str(a) for a in TINY + ["--mode", "full", "--labeled-fraction", "1.0", "--dry-run"]]) == 0
    assert "--labeled-fraction" not in capsys.readouterr().err
    assert train_main([str(a) for a in TINY + ["--mode", "full", "--labeled-fraction", "0.5",
                                               "--out", tmp_path / "r"]]) == 0
    assert "note: --labeled-fraction: not read by --mode full" in capsys.readouterr().err


def rect_split(path, n=12, k=3, seed=0, h=16, w=32):
    rng = np.random.default_rng(seed)
    write_split(path, rng.integers(0, 256, (n, h, w, 1), dtype=np.uint8), rng.integers(0, k, (n, h, w), dtype=np.uint8),
                Meta(num_classes=k, class_names=[str(i) for i in range(k)], palette=[[0, 0, 0]] * k))
    return path


NO_SIZE = [a for i, a in enumerate(TINY) if "--image-size" not in TINY[max(0, i - 1):i + 1]]


def test_rotate_on_images_that_are_not_square_is_refused(tmp_path, capsys):
    """--rotate on 16x32 images trained exactly as without it (rotations by 90 degrees were skipped for
    non-square images) and config.json recorded rotate true, exit 0: refused."""
    rect_split(tmp_path / "d" / "train.h5")
    rect_split(tmp_path / "d" / "val.h5", n=4, seed=1)
    one_line_error(train_main, NO_SIZE + ["--data", tmp_path / "d", "--rotate", "--out", tmp_path / "r"], capsys,
                   "holds 16x32 images; rotations by 90 degrees need square images", tmp_path)


def test_an_unlabeled_stream_smaller_than_the_batch_is_refused(tmp_path, capsys):
    """--labeled-fraction 0.9 of 12 images left 1 unlabeled image, and a batch of 10 repeated it ten times, exit 0
    (on 2 processes: 'a batch order over 1 images has nothing for rank 1'): refused as the labeled stream is,
    naming both options; the labeled stream's advice no longer says to raise a fraction of 1.0."""
    rect_split(tmp_path / "d" / "train.h5", h=16, w=16)
    rect_split(tmp_path / "d" / "val.h5", n=4, seed=1, h=16, w=16)
    one_line_error(train_main, TINY + ["--data", tmp_path / "d", "--mode", "fixmatch", "--labeled-fraction", "0.9",
                                       "--batch-size", "4", "--out", tmp_path / "r"], capsys,
                   "--batch-size 4 is larger than the unlabeled images (1 at --labeled-fraction 0.9): lower "
                   "--batch-size or --labeled-fraction", tmp_path)
    err = one_line_error(train_main, TINY + ["--data", tmp_path / "d", "--mode", "partial", "--labeled-fraction", "1.0",
                                             "--batch-size", "20", "--out", tmp_path / "r"], capsys,
                         "--batch-size 20 is larger than the labeled subset (12 images at --labeled-fraction 1.0): lower "
                         "--batch-size", tmp_path)
    assert "raise --labeled-fraction" not in err


def test_a_val_split_that_copies_the_train_file_or_differs_in_size_is_noted(tmp_path, capsys):
    """A val file that is a copy of the train file was not noted (only the same path was), and a val file of
    another size than the train file was taken without a word: both noted."""
    import shutil

    tiny_split(tmp_path / "train.h5", 16)
    shutil.copy(tmp_path / "train.h5", tmp_path / "copy.h5")
    tiny_split(tmp_path / "big.h5", 32, seed=1)
    capsys.readouterr()
    assert train_main([str(a) for a in TINY + ["--data", tmp_path / "train.h5", "--val-data", tmp_path / "copy.h5",
                                               "--labeled-fraction", "0.5", "--out", tmp_path / "r1"]]) == 0
    assert "note: the val split is the training file" in capsys.readouterr().err
    assert train_main([str(a) for a in NO_SIZE + ["--data", tmp_path / "train.h5", "--val-data", tmp_path / "big.h5",
                                                  "--labeled-fraction", "0.5", "--out", tmp_path / "r2"]]) == 0
    assert "holds 32x32 images, the train split 16x16: validation scores them at their own size" in capsys.readouterr().err


def test_a_folder_runs_val_file_moved_away_resumes_at_its_new_path(tmp_path, capsys):
    """A run on a folder whose val.h5 was moved: --resume said to give --val-data, and --resume --val-data
    NEW (the same bytes) was refused as 'differs from the checkpoint's None'. The moved file is read when its
    content is the run's; another file is still refused by its content."""
    tiny_split(tmp_path / "d" / "train.h5", 16)
    tiny_split(tmp_path / "d" / "val.h5", 16, seed=1)
    argv = [str(a) for a in TINY + ["--data", tmp_path / "d", "--labeled-fraction", "0.5", "--steps", "4",
                                    "--out", tmp_path / "r"]]
    assert train_main(argv + ["--stop-after", "2"]) == 0
    (tmp_path / "d" / "val.h5").rename(tmp_path / "v.bak")
    tiny_split(tmp_path / "other.h5", 16, seed=5)
    capsys.readouterr()
    assert train_main(argv + ["--resume", "--val-data", str(tmp_path / "other.h5")]) == 2
    assert "differs from the checkpoint's None" not in capsys.readouterr().err
    assert train_main(argv + ["--resume", "--val-data", str(tmp_path / "v.bak")]) == 0
    assert "(was the val.h5 beside --data; read only if its content is the run's)" in capsys.readouterr().err


def test_a_resume_into_a_folder_that_holds_no_run_is_refused(tmp_path, capsys):
    """`train --resume --out X` where X holds no run (a typo in --out) started a new run with the default options,
    with one note: refused, nothing made."""
    one_line_error(train_main, TINY + ["--out", tmp_path / "typo", "--resume"], capsys,
                   "holds no run to resume (no config.json, no last.pt); nothing was written", tmp_path)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("extra, noted, quiet", [
    (["--mode", "partial", "--disc-norm", "batch", "--lr-d", "1e-3"], "--ndf, --disc-norm, --lr-d: not read by --mode "
     "partial with --generator resnet and --optimizer adam", ()),
    (["--mode", "meanteacher", "--generator", "unet", "--dropout", "0.2"], "--ngf, --n-blocks, --ndf, --dropout: not "
     "read by --mode meanteacher with --generator unet", ()),
    (["--mode", "adversarial", "--optimizer", "sgd", "--beta1", "0.5", "--lr-d", "1e-3", "--image-size", "32"],
     "--beta1: not read by "
     "--mode adversarial", ("--lr-d",)),                             # Hung's D reads --lr-d under sgd
    (["--mode", "semi", "--optimizer", "sgd", "--beta1", "0.5", "--disc-norm", "batch"], None, ("not read",)),
    (["--no-fast", "--precision", "bf16", "--compile", "on"], "--precision bf16, --compile on: not read with "
     "--no-fast", ()),
    (["--no-fast", "--precision", "fp32", "--compile", "off"], None, ("not read",)),
])
def test_options_a_run_does_not_read_are_noted(tmp_path, capsys, extra, noted, quiet):
    """--ndf, --disc-norm and --lr-d under a mode without discriminators, --beta1 where no Adam reads it, the
    ResNet's options where G_IS is the UNet and there is no G_SI, and --precision bf16 / --compile on under
    --no-fast were dropped without a word: each noted, by the run's dry run as by the run."""
    capsys.readouterr()
    assert train_main([str(a) for a in NO_SIZE + ["--image-size", "16"] * ("--image-size" not in extra) + extra +
                       ["--out", tmp_path / "r", "--dry-run"]]) == 0
    err = capsys.readouterr().err
    assert noted is None or noted in err, err
    assert not any(q in err for q in quiet), err


def test_an_arm_of_a_grid_cannot_have_its_own_images(tmp_path, capsys):
    """--method-options partial "--image-size 32" trained and scored one arm on other images than the others:
    refused, as --seed there is (the images go after --, for every arm)."""
    for opts, flag in (("--image-size 32", "--image-size"), ("--val-data v.h5 --lr 0.01", "--val-data")):
        one_line_error(experiments_main, ["--grid", "comparison", "--out", tmp_path / "g", "--method-options",
                                          "partial", opts, "--", *TINY], capsys,
                       f"{flag} in --method-options partial would train and score this arm on other images", tmp_path)


def test_every_commands_help_shows_its_defaults(capsys):
    """Options with a default showed none in --help (export --formats, the grid's --seeds, convert's
    --split-seed, evaluate's --device): one formatter for every command adds it."""
    from cycleseg.export import main as export_main

    for main, argv, shown in ((export_main, ["--help"], "onnx and / or pt2 (default: onnx pt2)"),
                              (experiments_main, ["--help"], "one run of each cell per seed (default: 0 1 2)"),
                              (data_main, ["convert", "--help"], "nifti: the seed of the patients' split (default: 0)"),
                              (evaluate_main, ["--help"], "(default: auto)")):
        with pytest.raises(SystemExit):
            main(argv)
        assert shown in " ".join(capsys.readouterr().out.split())


def test_a_val_file_holding_slices_of_the_training_file_is_noted(tmp_path, capsys):
    """A val file (not a copy of the train file) holding some of its images, the same patients' slices split
    twice, was taken without a word: validation scored images the run trains on. Noted, with how many; a
    val file of other images, blank slices shared included, is no note."""
    tiny_split(tmp_path / "train.h5", 16, n=6)
    with h5py.File(tmp_path / "train.h5") as f:
        images, masks = f["images"][...], f["masks"][...]
    fresh = np.random.default_rng(7).integers(0, 256, images.shape, dtype=np.uint8)
    mixed = np.concatenate([images[:2], fresh[2:]])
    meta = Meta(num_classes=3, class_names=["0", "1", "2"], palette=[[0, 0, 0]] * 3)
    write_split(tmp_path / "leak.h5", mixed, masks, meta)
    blank = fresh.copy()
    blank[0] = 0
    write_split(tmp_path / "blank.h5", blank, masks, meta)
    with h5py.File(tmp_path / "train.h5", "r+") as f:
        f["images"][1] = 0                                          # a blank slice in both files: no leak
    argv = NO_SIZE + ["--data", tmp_path / "train.h5", "--labeled-fraction", "0.5"]
    capsys.readouterr()
    assert train_main([str(a) for a in argv + ["--val-data", tmp_path / "leak.h5", "--out", tmp_path / "r1"]]) == 0
    assert f"1 of the 6 images of the val split {tmp_path / 'leak.h5'} are also in the training file" in \
        capsys.readouterr().err
    assert train_main([str(a) for a in argv + ["--val-data", tmp_path / "blank.h5", "--out", tmp_path / "r2"]]) == 0
    assert "also in the training file" not in capsys.readouterr().err


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(lr=float("inf")), "records a value no run has (--lr must be a finite number"),
    (lambda c: c.pop("data"), "lacks data"),
    (lambda c: c.pop("mode"), "lacks mode"),
    (lambda c: c.pop("ngf"), "lacks ngf"),
    (lambda c: c.pop("steps"), "lacks steps"),
    (lambda c: c.update(ngf="abc"), "records a value no run has (--ngf must be a whole number, got 'abc')"),
    (lambda c: c.update(ngf=4.5), "records a value no run has (--ngf must be a whole number, got 4.5)"),
    (lambda c: c.update(flip="no"), "records a value no run has (--flip must be true or false, got 'no')"),
    (lambda c: None, None),
])
def test_a_run_stopped_before_its_first_checkpoint_restarts_with_its_own_options_or_not_at_all(
        tmp_path, capsys, finished_run, edit, match):
    """--resume of a run stopped before its first checkpoint whose config.json held a value no run has started a
    default run there (the built-in data, semi, 1000 steps) with a note; one without "data" or "mode" did so
    without a word, and one without "ngf", "steps" or "batch_size" ended in a traceback, as did ngf "abc"
    ("flip": "no" turned flips on). Each is refused by name; an intact config.json restarts the run with its
    own options."""
    run = tmp_path / "r"
    run.mkdir()
    recorded = json.loads((finished_run / "config.json").read_text())
    edit(recorded)
    (run / "config.json").write_text(json.dumps(recorded))
    argv = ["--out", run, "--resume", "--no-progress"]
    if match is not None:
        one_line_error(train_main, argv, capsys, f"holds a run stopped before its first checkpoint, and its "
                       f"config.json {match}", run)
        return
    capsys.readouterr()
    assert train_main([str(a) for a in argv]) == 0
    assert json.loads((run / "config.json").read_text())["ngf"] == recorded["ngf"] == 4
    assert "starting it again from step 0 with the options its config.json records" in capsys.readouterr().err


def test_predict_notes_the_scan_options_it_does_not_read(tiny_checkpoint, tmp_path, capsys):
    """predict --axis 2 --resample nearest on images (no NIfTI scan among the inputs) exited 0 without a word:
    noted; --intensity, which images read too, is no note."""
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    capsys.readouterr()
    assert predict_main([str(tiny_checkpoint), str(image), "--out", str(tmp_path / "o"), "--no-progress", "--axis", "2",
                         "--resample", "nearest", "--intensity", "minmax"]) == 0
    err = capsys.readouterr().err
    assert "note: --axis 2, --resample nearest: not read: they are for NIfTI scans, and the inputs hold none" in err
    assert "--intensity" not in err


def test_a_resume_keeps_options_its_mode_does_not_read_with_a_note(tmp_path, capsys):
    """Resuming a partial run with --mt-ema 0.5 or --ndf 8 was refused as 'a resumed run keeps the method and its
    objective', though partial reads neither (a fresh run notes them); and a new --lr said '--lr-d ... scaled
    with --lr' of a run with no discriminator. Now each is noted as not read and the run goes on."""
    argv = [str(a) for a in TINY + ["--mode", "partial", "--steps", "4", "--out", tmp_path / "r"]]
    assert train_main(argv + ["--stop-after", "2"]) == 0
    capsys.readouterr()
    assert train_main(argv + ["--resume", "--mt-ema", "0.5", "--ndf", "8", "--lr", "0.002"]) == 0
    err = capsys.readouterr().err
    assert "note: --mt-ema: an option of another method, not read by --mode partial" in err, err
    assert "note: --ndf: not read by --mode partial" in err and "--lr-d" not in err, err
    assert "resuming" in err and "--lr 0.002" in err
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())
    assert recorded["ndf"] == 4 and recorded["mt_ema"] == 0.99 and recorded["lr"] == 0.002   # kept, kept, changed


def test_evaluate_notes_training_images_and_another_size(tmp_path, capsys):
    """evaluate --data of the run's own training file scored it without a word (training notes such a val
    split), and a file of another image size than the checkpoint's was scored at its size without one: both
    noted; the val file is no note."""
    tiny_split(tmp_path / "d" / "train.h5", 16)
    tiny_split(tmp_path / "d" / "val.h5", 16, seed=1)
    tiny_split(tmp_path / "big.h5", 32, seed=2)
    assert train_main([str(a) for a in NO_SIZE + ["--data", tmp_path / "d", "--labeled-fraction", "0.5",
                                                  "--out", tmp_path / "r"]]) == 0
    ckpt = str(tmp_path / "r" / "last.pt")
    capsys.readouterr()
    for data, note in (("d/train.h5", "holds the images the run trained on (its training file's content)"),
                       ("big.h5", "holds 32x32 images, the checkpoint"), ("d/val.h5", None)):
        assert evaluate_main([ckpt, "--data", str(tmp_path / data), "--no-progress",
                              "--out", str(tmp_path / ("e-" + data.replace("/", "-")))]) == 0
        err = capsys.readouterr().err
        assert (note in err) if note else ("note" not in err), (data, err)


def test_records_with_values_no_run_logs_are_not_records(tmp_path, capsys, finished_run):
    """metrics.jsonl lines with a negative step, a NaN score or 1e400 (read as Infinity) were drawn by plot and
    kept by a resume without a word, where a step of 1e300 was noted as not a record: each is one now (a run
    stops before it logs a NaN), noted by plot and by the resume that rewrites the log without it."""
    import shutil

    from cycleseg.plot import main as plot_main

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    val = json.loads(next(ln for ln in lines if '"val"' in ln))
    odd = [json.dumps({**val, "step": -4}), json.dumps({**val, "miou": float("nan")}),
           json.dumps(val).replace(f'"step": {val["step"]}', f'"step": {val["step"]}, "z": 1e400')]
    (run / "metrics.jsonl").write_text("\n".join(lines + odd) + "\n")
    capsys.readouterr()
    assert plot_main([str(run), "--out", str(tmp_path / "p.png")]) == 0
    assert f"3 of its {len(lines) + 3} lines are not records (JSON objects with a step >= 0, a split and finite " \
           f"numbers) and are not drawn" in capsys.readouterr().err
    steps = json.loads(lines[-1])["step"]
    assert train_main(TINY + ["--out", str(run), "--resume", "--steps", str(steps + 2)]) == 0
    assert f"3 of its {len(lines) + 3} lines are not records" in capsys.readouterr().err
    assert all("NaN" not in ln and "Infinity" not in ln and '"step": -4' not in ln
               for ln in (run / "metrics.jsonl").read_text().splitlines())


def test_a_changed_data_cache_file_is_named_with_advice_that_works(tmp_path, capsys, monkeypatch):
    """A cached split of the built-in data replaced together with its checksum (the cache's own check passes)
    was refused by the run's fingerprint with "resume or evaluate it on the data it was trained on", which a
    user of the built-in data cannot follow: the error says to delete the cache folder, and doing so works."""
    import shutil

    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    assert train_main([str(a) for a in TINY + ["--out", tmp_path / "r"]]) == 0
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if (p / "val.h5").exists()]
    for name in ("val.h5", "val.h5.sha256"):
        shutil.copy(folder / name.replace("val", "train"), folder / name)
    err = one_line_error(evaluate_main, [tmp_path / "r" / "last.pt", "--no-progress", "--out", tmp_path / "e"],
                         capsys, "a file of cycleseg's data cache was changed: delete", tmp_path)
    assert str(folder) in err
    shutil.rmtree(folder)
    assert evaluate_main([str(tmp_path / "r" / "last.pt"), "--no-progress", "--out", str(tmp_path / "e")]) == 0
