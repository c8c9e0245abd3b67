"""The one config of a run: every default lives here. Only the entry point (train.py) reads all of it.

Fields left as None are filled by the preset: "paper" (the paper's networks; the default on a GPU)
or "cpu" (a small model that trains in minutes on a laptop CPU; the default without a GPU).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import re
from dataclasses import dataclass, fields

import torch

from .data.augment import POLICIES
from .objective import Lambdas
from .report import percent
from .usage import Parser, UsageError

PRESETS = {
    "paper": dict(ngf=64, n_blocks=9, ndf=64, image_size=128, batch_size=5, steps=20000, lr=2e-4,
                  eval_every=1000, ckpt_every=1000),
    # Small and short: a higher learning rate and batch 8 make the most of ~1000 steps on two cores.
    "cpu": dict(ngf=16, n_blocks=3, ndf=32, image_size=64, batch_size=8, steps=1000, lr=1e-3,
                eval_every=250, ckpt_every=250),
}
# The objective's weights and schedule. "2019": the original code's (the paper's equations with its
# weights, beta1 0.9 for the supervised baselines). "tuned": found by experiment on ACDC (README, "Making
# the method win on ACDC"): the same optimizer for every arm of a comparison, no L_cycle^I (its gradient
# through G_SI fought the cross-entropy), and L_disc^S at 0.01 instead of 0.5.
RECIPES = {
    "2019": dict(lambda1=1.0, lambda2=0.05, lambda3=1.0, lambda4=0.5, lambda5=0.5, rampup=0.0, lr_d_scale=1.0,
                 beta1_semi=0.5, beta1_supervised=0.9, dice=0.0, hard_cycle=False),
    "tuned": dict(lambda1=1.0, lambda2=0.05, lambda3=0.0, lambda4=0.01, lambda5=0.5, rampup=0.0, lr_d_scale=1.0,
                  beta1_semi=0.9, beta1_supervised=0.9, dice=0.0, hard_cycle=False),
}
GENERATORS = ("resnet", "unet")     # G_IS: the paper's ResNet, or SSL4MIS's UNet (models.UNet)
SIDE_MULTIPLE = {"resnet": 4, "unet": 16}   # image sides a G_IS reads: multiples of this (its halvings)
OPTIMIZERS = ("adam", "sgd")
AUGMENTS = POLICIES                 # data/augment.py
# SSL4MIS's learning rate for its SGD (the presets' lr is Adam's)
SGD_LR = 0.01
MODES = ("semi", "partial", "full", "adversarial", "meanteacher", "fixmatch")
# On --resume: fields that describe this process, not the run (always taken from the command line).
RUNTIME_FIELDS = ("resume", "device", "progress", "out", "stop_after", "prefetch", "tensorboard")
# Fields a resumed run may change when given on the command line (the schedule is re-derived from them).
RESUME_CHANGEABLE = ("lr", "lr_d", "steps", "log_every", "eval_every", "ckpt_every")
# Why every other field is kept by a resumed run.
RESUME_KEPT = {
    "the networks' shapes (the checkpoint's weights)": ("generator", "ngf", "n_blocks", "ndf", "disc_norm", "dropout",
                                                         "preset"),
    "the data and its streams (positions in them are checkpointed)": (
        "data", "val_data", "labeled_fraction", "image_size", "batch_size", "flip", "rotate", "scale_crop", "augment"),
    "the method and its objective": ("mode", "recipe", "optimizer", "beta1", "lambda1", "lambda2", "lambda3", "lambda4",
                                     "lambda5", "rampup", "dice", "hard_cycle", "pool_size", "adv_lambda", "adv_semi_lambda",
                                     "adv_self_training", "adv_threshold", "adv_start", "adv_lr_d_scale",
                                     "adv_beta1_d", "adv_beta2_d", "mt_consistency", "mt_ema", "mt_noise",
                                     "mt_rampup", "mt_start", "fm_threshold", "fm_weight", "fm_cutmix", "fm_loss",
                                     "fm_rampup"),
    "the seed (the run's identity)": ("seed",),
    "the plan it started with (numerics)": ("fast", "compile", "precision"),
}
MIN_SIDE = {"adversarial": 32}      # Hung's discriminator halves 5 times; the generators need >= 8 (reflect pads)
MAX_SIDE = 4096                     # larger images: 16+ GB a batch, and a checkpoint typo could ask for petabytes




@dataclass
class Config:
    # what to train
    mode: str = "semi"                  # semi: the CycleGAN objective; partial: G_IS on the labeled subset; full: 100 % labels; adversarial: Hung et al. (2018); meanteacher; fixmatch
    data: str | None = None             # train .h5, a folder with train.h5 + val.h5, an SSL4MIS ACDC folder, "shapes"; None = the phantoms
    val_data: str | None = None         # val split .h5 (default: val.h5 beside the train split)
    labeled_fraction: float = 0.1       # nested subsets fixed by the seed
    seed: int = 0                       # seeds the networks' init, the labeled subset, the streams and the pools
    preset: str = "auto"                # sizes and schedule: paper (the paper's networks) or cpu (small); auto = paper on a GPU, cpu otherwise
    # networks (None: from the preset)
    generator: str = "resnet"           # G_IS: resnet (the paper's CycleGAN generator) or unet (SSL4MIS's 2D UNet, the field's baseline network); G_SI and the discriminators are the paper's either way
    ngf: int | None = None              # generator width (channels of the first conv; paper 64)
    n_blocks: int | None = None         # residual blocks per generator (paper 9)
    ndf: int | None = None              # discriminator width (paper 64)
    disc_norm: str = "instance"         # the discriminators' norm: instance (the 2019 code), batch (the paper's text) or none
    dropout: float = 0.0                # the paper used none; the 2019 code used 0.5
    # optimisation
    steps: int | None = None            # training steps (one G update and, in semi, one D update each)
    batch_size: int | None = None       # labeled images per step, and as many unlabeled
    image_size: int | None = None       # size of the built-in dataset and of ACDC read from its folder
    lr: float | None = None             # G_IS's learning rate (Adam: the preset's, paper 2e-4; --optimizer sgd: 0.01, SSL4MIS's)
    optimizer: str = "adam"             # G_IS's optimizer: adam (constant for a quarter of the run, then linear to 0) or sgd (SSL4MIS's: momentum 0.9, weight decay 1e-4, poly decay (1 - t/T)^0.9); the other networks keep Adam at --lr-d
    recipe: str = "tuned"               # the objective's weights and schedule: tuned (found on ACDC) or 2019 (the original code's); the options below override it
    beta1: float | None = None          # Adam beta1 (recipe tuned: 0.9 for every mode; 2019: 0.5 semi, 0.9 the supervised baselines)
    lr_d: float | None = None           # the discriminators' learning rate, and G_SI's under --optimizer sgd (default: the recipe's share of --lr; of the preset's Adam rate under sgd)
    lambda1: float | None = None        # weight of L_gen^I = MSE(G_SI(y), x)
    lambda2: float | None = None        # weight of L_cycle^S = CE(G_IS(G_SI(y)), y)
    lambda3: float | None = None        # weight of L_cycle^I = L1(G_SI(softmax G_IS(x')), x')
    lambda4: float | None = None        # weight of L_disc^S: G_IS fools D_S on unlabeled images
    lambda5: float | None = None        # weight of L_disc^I: G_SI fools D_I
    rampup: float | None = None         # fraction of the steps over which the terms that see unlabeled images (lambda3, lambda4) ramp up from 0 (sigmoid); 0 = none
    dice: float | None = None           # weight of a soft Dice loss added to the supervised cross-entropy (every mode alike); 0 = none
    hard_cycle: bool | None = None      # G_SI reads one-hot argmax masks of unlabeled images in L_cycle^I (straight-through gradient) instead of softmax probabilities
    pool_size: int = 50                 # fakes kept in each discriminator's history pool (0: none)
    # Hung et al. (--mode adversarial): their published weights and schedule
    adv_lambda: float = 0.01            # adversarial: weight of the adversarial term on labeled predictions
    adv_semi_lambda: float = 0.001      # adversarial: weight of the adversarial term on unlabeled predictions
    adv_self_training: float = 0.1      # adversarial: weight of self-training on confident unlabeled pixels
    adv_threshold: float = 0.2          # adversarial: D's confidence above which an unlabeled pixel is a pseudo-label
    adv_start: float = 0.25             # adversarial: fraction of the run after which self-training starts (their 5000 of 20000)
    adv_lr_d_scale: float = 0.4         # adversarial: D's learning rate as a share of --lr (their 1e-4 against 2.5e-4)
    adv_beta1_d: float = 0.9            # adversarial: D's Adam beta1
    adv_beta2_d: float = 0.99           # adversarial: D's Adam beta2
    # Mean Teacher (--mode meanteacher), SSL4MIS's train_mean_teacher_2D.py
    mt_consistency: float = 0.1         # meanteacher: weight of the consistency term at the end of the ramp-up (SSL4MIS's 0.1 against its (CE + Dice) / 2: --dice 1 --mt-consistency 0.2)
    mt_ema: float = 0.99                # meanteacher: EMA decay of the teacher
    mt_noise: float = 0.2               # meanteacher: std of the teacher's input noise on images in [-1, 1] (SSL4MIS's 0.1 on [0, 1]), clipped at twice it
    mt_rampup: float = 1.0              # meanteacher: fraction of the run over which the weight ramps up (sigmoid; SSL4MIS: the whole run)
    mt_start: float = 0.033             # meanteacher: fraction of the run without the consistency term (SSL4MIS: 1000 of 30000 iterations)
    # weak-to-strong consistency (--mode fixmatch), UniMatch's FixMatch baseline
    fm_threshold: float = 0.95          # fixmatch: confidence above which a weak-view prediction is a pseudo-label
    fm_weight: float = 1.0              # fixmatch: weight of the strong-view term (UniMatch's ACDC ratio to its (CE + Dice) / 2 supervised term: --dice 1 --fm-weight 2)
    fm_cutmix: float = 0.5              # fixmatch: probability of a CutMix box in each strong view
    fm_loss: str = "dice"               # fixmatch: the strong-view term: dice (UniMatch's medical recipe, ACDC) or ce (its natural-image one)
    fm_rampup: float = 0.0              # fixmatch: fraction of the run over which the strong-view weight ramps up (sigmoid, as Mean Teacher's); UniMatch: 0
    # data
    flip: bool = False                  # random horizontal flips (off in the paper preset)
    rotate: bool = False                # random rotations by multiples of 90 degrees (with --flip: the usual ACDC augmentation)
    scale_crop: float = 1.0             # > 1: random crops of 1/s of each side, s in [1, scale_crop], resized back
    augment: str = "none"               # ssl4mis: SSL4MIS's RandomGenerator on every stream (a random rot90 + flip, or a rotation in [-20, 20] degrees, nearest), instead of --flip / --rotate / --scale-crop
    prefetch: int = 3                   # batches prepared ahead of the step by the loader thread
    # execution
    device: str = "auto"                # cpu, cuda, cuda:N; auto = cuda when there is a GPU
    fast: bool = True                   # the fast path (fused kernels, merged calls, and per device bf16, channels_last, compile); --no-fast: PyTorch's own ops, eager fp32
    compile: str = "auto"               # torch.compile the updates: auto = on a GPU when the run is long enough to win back the compile time (never on the CPU, where it measured slower)
    precision: str = "auto"             # fast path arithmetic: bf16 autocast (fp32 weights) or fp32; auto = bf16 where the device runs it natively
    # bookkeeping
    out: str | None = None              # run folder (default runs/<mode>-<pct>pct-seed<seed>)
    resume: bool = False                # continue the run in --out from its last.pt, exactly where it stopped
    stop_after: int | None = None       # stop after this step as if interrupted (last.pt saved; --resume continues): runs in pieces
    log_every: int = 10                 # steps between training records in metrics.jsonl (each is a host sync)
    eval_every: int | None = None       # steps between validations (metrics, a picture, best.pt)
    ckpt_every: int | None = None       # steps between last.pt checkpoints
    progress: bool = True               # a progress bar with losses, steps/s and ETA
    tensorboard: bool = False           # also write the records and sample pictures as TensorBoard events in <out>/tensorboard/ (pip install tensorboard)

    def resolved(self) -> "Config":
        """A copy with the preset, device, betas and run folder filled in, checked."""
        c = dataclasses.replace(self)
        for name in ("data", "val_data"):                          # a path as typed would follow the working folder
            value = getattr(c, name)
            if value and os.path.exists(value):
                setattr(c, name, os.path.abspath(value))
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        if c.preset == "auto":
            c.preset = "paper" if c.device.startswith("cuda") else "cpu"
        if c.preset not in PRESETS:
            raise UsageError(f"preset must be one of {sorted(PRESETS)} or 'auto', got {c.preset!r}")
        if c.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}")
        adam_lr = PRESETS[c.preset]["lr"]
        if c.lr is None and c.optimizer == "sgd":
            c.lr = SGD_LR
        for k, v in PRESETS[c.preset].items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        if c.mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {c.mode!r}")
        if c.mode == "full":
            c.labeled_fraction = 1.0
        if not 0.0 < c.labeled_fraction <= 1.0:
            raise UsageError(f"--labeled-fraction must be in (0, 1], got {c.labeled_fraction}")
        if c.recipe not in RECIPES:
            raise UsageError(f"recipe must be one of {sorted(RECIPES)}, got {c.recipe!r}")
        r = RECIPES[c.recipe]
        for k in ("lambda1", "lambda2", "lambda3", "lambda4", "lambda5", "rampup", "dice", "hard_cycle"):
            if getattr(c, k) is None:
                setattr(c, k, r[k])
        if c.beta1 is None:
            c.beta1 = r["beta1_semi"] if c.mode == "semi" else r["beta1_supervised"]
        if c.lr_d is None:
            c.lr_d = (adam_lr if c.optimizer == "sgd" else c.lr) * r["lr_d_scale"]
        check_values(c)
        c.device = check_device(c.device)
        if c.out is None:
            c.out = f"runs/{c.mode}-{percent(c.labeled_fraction)}pct-seed{c.seed}"
        return c

    @property
    def lambdas(self) -> Lambdas:
        return Lambdas(self.lambda1, self.lambda2, self.lambda3, self.lambda4, self.lambda5)


FRACTIONS = ("rampup", "mt_ema", "fm_threshold", "fm_cutmix", "fm_rampup", "mt_rampup", "mt_start", "adv_start")
NON_NEGATIVE = ("pool_size", "lambda1", "lambda2", "lambda3", "lambda4", "lambda5", "dice", "mt_consistency", "mt_noise",
                "fm_weight", "adv_lambda", "adv_semi_lambda", "adv_self_training")
AT_LEAST_ONE = ("steps", "batch_size", "ngf", "n_blocks", "ndf", "log_every", "eval_every", "ckpt_every", "prefetch")


def check_values(c: Config) -> None:
    """UsageError naming the first field of a resolved config whose value cannot be used."""
    def flag(name):
        return "--" + name.replace("_", "-")

    for name, allowed in (("generator", GENERATORS), ("augment", AUGMENTS)):
        if getattr(c, name) not in allowed:
            raise UsageError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(c, name)!r}")
    if c.augment != "none" and (c.flip or c.rotate or c.scale_crop != 1.0):
        raise UsageError(f"--augment {c.augment} is a whole augmentation of its own: drop --flip, --rotate and "
                         f"--scale-crop")
    if c.compile not in ("auto", "on", "off"):
        raise UsageError(f"compile must be auto, on or off, got {c.compile!r}")
    if c.precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"precision must be auto, fp32 or bf16, got {c.precision!r}")
    for f in fields(c):                                             # NaN passes every comparison below
        v = getattr(c, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{flag(f.name)} must be a finite number, got {v}")
    if not 0 <= c.seed < 2 ** 32:
        raise UsageError(f"--seed must be in 0 .. 2**32 - 1, got {c.seed}")
    for name in AT_LEAST_ONE:
        if getattr(c, name) < 1:
            raise UsageError(f"{flag(name)} must be >= 1, got {getattr(c, name)}")
    check_image_side(c.image_size, c.mode, f"--image-size {c.image_size}", c.generator)
    for name in ("lr", "lr_d"):
        if not getattr(c, name) > 0:
            raise UsageError(f"{flag(name)} must be > 0, got {getattr(c, name)}")
    for name in NON_NEGATIVE:
        if getattr(c, name) < 0:
            raise UsageError(f"{flag(name)} must be >= 0, got {getattr(c, name)}")
    for name in FRACTIONS:
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise UsageError(f"{flag(name)} must be in [0, 1], got {getattr(c, name)}")
    for name, value in (("beta1", c.beta1), ("dropout", c.dropout)):
        if not 0.0 <= value < 1.0:
            raise UsageError(f"{flag(name)} must be in [0, 1), got {value}")
    if c.scale_crop < 1.0:
        raise UsageError(f"--scale-crop must be >= 1, got {c.scale_crop}")
    if c.stop_after is not None and c.stop_after < 1:
        raise UsageError(f"--stop-after must be >= 1, got {c.stop_after}")


def from_saved(saved: dict) -> Config:
    """The Config of a checkpoint (fields this version no longer has are dropped; new ones take defaults)."""
    names = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in saved.items() if k in names})


class ResumeError(UsageError):
    """A resumed run asked to change what it cannot."""


def resume_config(saved: dict, given: Config, explicit) -> tuple[Config, list[str]]:
    """The config a resumed run continues with, and notes of what changed: the checkpoint's config, the
    runtime fields of this command line, and the RESUME_CHANGEABLE fields given explicitly (a new --lr
    without --lr-d scales the discriminators' rate alike). An explicit value of any other field that
    differs from the checkpoint's raises ResumeError saying why it is kept."""
    old = from_saved(saved)
    kept = {name: why for why, names in RESUME_KEPT.items() for name in names}
    updates = {k: getattr(given, k) for k in RUNTIME_FIELDS}
    notes = []
    for name in sorted(explicit):
        new, was = getattr(given, name), getattr(old, name)
        if name in RUNTIME_FIELDS or new == was or new is None:
            continue
        if name in RESUME_CHANGEABLE:
            updates[name] = new
            notes.append(f"--{name.replace('_', '-')} {new} (was {was})")
            continue
        why = kept.get(name, "what the run started with")
        raise ResumeError(f"--{name.replace('_', '-')} {new} differs from the checkpoint's {was}: a resumed run keeps "
                          f"{why}; drop the option to continue the run, or start a new run with another --out")
    if "lr" in updates and "lr_d" not in updates and old.lr and old.lr_d:
        updates["lr_d"] = old.lr_d * updates["lr"] / old.lr
        notes.append(f"--lr-d {updates['lr_d']:g} (was {old.lr_d:g}: scaled with --lr)")
    return dataclasses.replace(old, **updates), notes


def field_help() -> dict:
    """{field name: its comment in the Config class body}: the one-line help of every --flag."""
    try:
        source = inspect.getsource(Config)
    except (OSError, TypeError):                                    # no source shipped: no help text
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^=]+=[^#\n]*#\s*(.*)$", source, re.M)}


CHOICES = {"mode": MODES, "generator": GENERATORS, "optimizer": OPTIMIZERS, "augment": AUGMENTS,
           "preset": ("auto",) + tuple(PRESETS), "disc_norm": ("instance", "batch", "none"),
           "recipe": tuple(RECIPES), "fm_loss": ("dice", "ce"),
           "compile": ("auto", "on", "off"), "precision": ("auto", "fp32", "bf16")}


def _parser(explicit_only: bool = False) -> argparse.ArgumentParser:
    """The command line; explicit_only: no defaults, so that the result holds what was given."""
    p = Parser(prog="python -m cycleseg.train",
                                description="Semi-supervised segmentation with a CycleGAN (Mondal et al. 2019).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                argument_default=argparse.SUPPRESS if explicit_only else None)
    helps = field_help()
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, "").replace("%", "%%")              # argparse formats help with %
        default = argparse.SUPPRESS if explicit_only else f.default
        if str(f.type).split(" ")[0] == "bool":                 # bool, or bool | None (None: from the recipe)
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        typ = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]
        p.add_argument(flag, type=typ, default=default, choices=CHOICES.get(f.name), help=text)
    p.add_argument("--dry-run", action="store_true", default=False,
                   help="print the resolved config and each network's parameter count, then exit")
    return p


def parse_args(argv=None) -> tuple[Config, bool]:
    """Command line -> (Config, dry_run). Every Config field is a --flag (underscores as dashes)."""
    ns = vars(_parser().parse_args(argv))
    dry = ns.pop("dry_run")
    return Config(**ns), dry


def given_fields(argv=None) -> set[str]:
    """The Config fields given explicitly on a command line (what a resumed run is asked to change)."""
    ns = vars(_parser(explicit_only=True).parse_args(argv))
    return set(ns) - {"dry_run"}


def check_image_side(side: int, mode: str, what: str, generator: str = "resnet") -> None:
    """UsageError (starting with `what`) unless the networks of `mode` can read images `side` pixels wide: a
    multiple of 4 (the ResNet generators halve twice and double back; 16 with the UNet G_IS, which halves four
    times) of at least 8 (32 for Hung et al.'s discriminator)."""
    multiple = SIDE_MULTIPLE.get(generator, 4)
    least = max(MIN_SIDE.get(mode, 8), multiple)
    if not isinstance(side, int) or side > MAX_SIDE:
        raise UsageError(f"{what}: at most {MAX_SIDE} pixels")
    if side < least or side % multiple:
        why = ("the generators halve the image twice and double it back" if multiple == 4 else
               "the UNet halves the image four times and doubles it back")
        raise UsageError(f"{what}: the networks need a multiple of {multiple} of at least {least} ({why}"
                         + ("; Hung et al.'s discriminator halves it five times)" if least >= 32 else ")"))


def check_device(name: str) -> str:
    """`name` if this machine has that device; ValueError saying what it has otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {name}: not a device (cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: this machine has no CUDA GPU that torch can use "
                             f"(torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: cycleseg trains on cpu or cuda")
    return name
