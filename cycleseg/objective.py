r"""The objective of Mondal et al. (2019), eq. 1-9, as pure functions.

Labeled pairs (x, y), unlabeled images x', y one-hot where a network reads it (ignored pixels: zeros),
H the pixelwise cross-entropy, s = softmax over classes:

    L_gen^S   = H(G_IS(x), y)                          supervised segmentation
    L_gen^I   = MSE(G_SI(y), x)                        supervised image synthesis       * lambda1
    L_cycle^S = H(G_IS(G_SI(y)), y)                    mask -> image -> mask            * lambda2
    L_cycle^I = L1(G_SI(s(G_IS(x'))), x')              unlabeled image -> mask -> image * lambda3
    L_disc^S  = mean((D_S(s(G_IS(x'))) - 1)^2)         G_IS fools D_S                   * lambda4
    L_disc^I  = mean((D_I(G_SI(y)) - 1)^2)             G_SI fools D_I                   * lambda5

    generator:      min  L_gen^S + lambda1 L_gen^I + lambda2 L_cycle^S + lambda3 L_cycle^I
                         + lambda4 L_disc^S + lambda5 L_disc^I
    discriminators: min  0.5 [mean((D_S(y) - 1)^2) + mean(D_S(fake_S)^2)]
                       + 0.5 [mean((D_I(x') - 1)^2) + mean(D_I(fake_I)^2)]

D_S reads K-channel softmax probabilities (fake) and one-hot masks (real), so L_disc^S trains G_IS
(the 2019 code fed it a detached argmax). A term whose lambda is 0 is not computed at all.

These functions never call .backward() or step an optimizer: the training loop owns the update order.
`ops` is the module providing softmax_cross_entropy and lsgan_loss / lsgan_disc_loss: the reference
ops (`cycleseg.reference`) or the fused ones (`cycleseg.ops`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import reference
from .views import partner


@dataclass(frozen=True)
class Lambdas:
    """Weights of the generator terms (their defaults live in config.RECIPES)."""
    gen_img: float            # lambda1, L_gen^I
    cycle_seg: float          # lambda2, L_cycle^S
    cycle_img: float          # lambda3, L_cycle^I
    disc_seg: float           # lambda4, L_disc^S
    disc_img: float           # lambda5, L_disc^I


@dataclass(frozen=True)
class HungWeights:
    """Hung et al.'s segmenter objective (their defaults live in config.Config, adv_*)."""
    adv: float                # the adversarial term on labeled predictions
    semi_adv: float           # the adversarial term on unlabeled predictions
    self_training: float      # CE against the confident unlabeled predictions' argmax
    threshold: float          # D's confidence sigmoid(D) above which a pixel is a pseudo-label


class Passes:
    """A network on several inputs, `outputs[i]` = net(inputs[i]): one call on their concatenation when
    `merged` (the same function for networks whose norms work per image, and faster on every device),
    else one call per input on first use, so that the objective's networks run in the order it reads
    their outputs."""

    def __init__(self, net, inputs: list, merged: bool):
        self.net, self.inputs = net, inputs
        self.outputs = (list(net(torch.cat(inputs)).split([x.shape[0] for x in inputs])) if merged
                        else [None] * len(inputs))

    def __getitem__(self, i: int):
        if self.outputs[i] is None:
            self.outputs[i] = self.net(self.inputs[i])
        return self.outputs[i]


def run_net(net, inputs: list, merged: bool) -> list:
    """net applied to each of `inputs` (Passes), all computed now."""
    passes = Passes(net, inputs, merged)
    return [passes[i] for i in range(len(inputs))]


def one_hot(y: torch.Tensor, num_classes: int, ignore_index: int, dtype=torch.float32) -> torch.Tensor:
    """(N, H, W) class ids -> (N, K, H, W) one-hot; ignored pixels become all-zero vectors."""
    valid = y != ignore_index
    y_safe = torch.where(valid, y.long(), torch.zeros_like(y, dtype=torch.long))
    oh = F.one_hot(y_safe, num_classes).permute(0, 3, 1, 2)           # (N, K, H, W)
    return (oh * valid.unsqueeze(1)).to(dtype)


def soft_dice_loss(logits, y, num_classes: int, ignore_index: int = 255, eps: float = 1e-5):
    """1 - mean over classes of the soft Dice (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps) of the
    softmax against the one-hot masks, over the whole batch; ignored pixels count nowhere. The squared
    sums are the reference recipes' (SSL4MIS's utils/losses.py DiceLoss, UniMatch's util/utils.py, the
    V-Net form): a pixel's push away from a wrong class grows with its probability there."""
    p = torch.softmax(logits.float(), dim=1)                           # (N, K, H, W)
    t = one_hot(y, num_classes, ignore_index, p.dtype)
    valid = (y != ignore_index).unsqueeze(1).to(p.dtype)
    inter = (p * t * valid).sum(dim=(0, 2, 3))
    total = (p * p * valid).sum(dim=(0, 2, 3)) + t.sum(dim=(0, 2, 3))       # t one-hot: t^2 = t
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


def cross_entropy(logits, y, ignore_index: int, ops):
    """Mean cross-entropy over the batch's labeled pixels; 0 for a batch without any (unannotated images:
    the op's mean, like F.cross_entropy's, is NaN there). The same value and gradient as the op's 'mean'
    otherwise (sum / count: the division the op's mean makes), and no host sync."""
    labeled = (y != ignore_index).sum()
    return ops.softmax_cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum") / labeled.clamp(min=1)


def segmentation_loss(logits, y, num_classes: int, ignore_index: int, ops, dice: float = 0.0):
    """The supervised loss of G_IS: cross-entropy, plus `dice` x soft Dice when dice > 0."""
    loss = cross_entropy(logits, y, ignore_index, ops)
    if dice:
        loss = loss + dice * soft_dice_loss(logits, y, num_classes, ignore_index)
    return loss


def straight_through(p: torch.Tensor) -> torch.Tensor:
    """one_hot(argmax p) in the forward pass, the gradient of p in the backward pass."""
    hard = F.one_hot(p.argmax(1), p.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    return hard + p - p.detach()


def supervised_objective(g_is, x, y, ignore_index: int = 255, ops=reference, num_classes: int = 0,
                         dice: float = 0.0):
    """The Partial / Full baselines: the supervised loss of G_IS alone. Returns (loss, terms)."""
    loss = segmentation_loss(g_is(x), y, num_classes, ignore_index, ops, dice)
    return loss, {"gen_seg": loss.detach()}


def generator_objective(g_is, g_si, d_s, d_i, x, y, x_unl, num_classes: int, lambdas: Lambdas, ignore_index: int = 255,
                        ops=reference, merge_passes: bool = False, unlabeled_weight=1.0, dice: float = 0.0,
                        hard_cycle: bool = False):
    """Generator side of the CycleGAN objective.

    x (N, C, H, W) in [-1, 1] with masks y (N, H, W); x_unl (M, C, H, W) unlabeled images.
    Returns (loss, terms, fakes): terms maps each computed term's name to its detached value;
    fakes = {"seg": softmax(G_IS(x')), "img": G_SI(y)}, detached, for the discriminators' pools.
    merge_passes: G_IS reads x, G_SI(y) and x' in one call (run_net). unlabeled_weight: a factor (float
    or 0-d tensor) on the terms that see unlabeled images (lambda3, lambda4): the ramp-up. dice: weight
    of a soft Dice term added to L_gen^S. hard_cycle: G_SI reads the one-hot argmax of G_IS(x') in
    L_cycle^I, with the softmax's gradient (straight through), so that G_IS cannot pass the image to G_SI
    in the small print of its probabilities.
    """
    lam = lambdas
    y1h = one_hot(y, num_classes, ignore_index, x.dtype)              # (N, K, H, W)
    fake_img = g_si(y1h)                                              # (N, C, H, W) G_SI(y)
    logits = Passes(g_is, [x, fake_img, x_unl] if lam.cycle_seg else [x, x_unl], merge_passes)
    loss = segmentation_loss(logits[0], y, num_classes, ignore_index, ops, dice)   # logits (N, K, H, W)
    terms = {"gen_seg": loss}

    if lam.gen_img:
        terms["gen_img"] = F.mse_loss(fake_img, x)
        loss = loss + lam.gen_img * terms["gen_img"]
    if lam.cycle_seg:
        terms["cycle_seg"] = cross_entropy(logits[1], y, ignore_index, ops)
        loss = loss + lam.cycle_seg * terms["cycle_seg"]
    if lam.disc_img:
        terms["disc_img"] = ops.lsgan_loss(d_i(fake_img), 1.0)
        loss = loss + lam.disc_img * terms["disc_img"]

    fake_seg = torch.softmax(logits[-1], dim=1)                       # (M, K, H, W) s(G_IS(x'))
    if lam.cycle_img:
        seg_in = straight_through(fake_seg) if hard_cycle else fake_seg
        terms["cycle_img"] = F.l1_loss(g_si(seg_in), x_unl)
        loss = loss + (lam.cycle_img * unlabeled_weight) * terms["cycle_img"]
    if lam.disc_seg:
        terms["disc_seg"] = ops.lsgan_loss(d_s(fake_seg), 1.0)
        loss = loss + (lam.disc_seg * unlabeled_weight) * terms["disc_seg"]

    terms = {k: v.detach() for k, v in terms.items()}
    return loss, terms, {"seg": fake_seg.detach(), "img": fake_img.detach()}


def discriminator_objective(d_s, d_i, real_seg, fake_seg, real_img, fake_img, ops=reference,
                            merge_passes: bool = False):
    """Least-squares discriminator losses (eq. 4-5), each halved. real_seg: one-hot masks;
    fake_seg / fake_img: detached generator outputs (from the history pools); real_img: unlabeled images.
    merge_passes: each discriminator scores real and fake in one call (the same function when its norm
    works per image, as instance norm does; not with batch norm).
    Returns (loss, {"d_seg": ..., "d_img": ...})."""
    d_seg = ops.lsgan_disc_loss(*run_net(d_s, [real_seg, fake_seg], merge_passes))
    d_img = ops.lsgan_disc_loss(*run_net(d_i, [real_img, fake_img], merge_passes))
    return d_seg + d_img, {"d_seg": d_seg.detach(), "d_img": d_img.detach()}


# -- Hung et al. (2018), "Adversarial learning for semi-supervised semantic segmentation" ------------------
# G_IS's softmax is judged per pixel by a fully convolutional discriminator D (trained to tell it from
# one-hot ground truth); on unlabeled images G_IS is also trained on its own confident predictions.

def masked_bce(logits, target: float, mask=None):
    """Mean binary cross-entropy with logits against a constant target, over the pixels of `mask`."""
    t = torch.full_like(logits, target)
    loss = F.binary_cross_entropy_with_logits(logits.float(), t.float(), reduction="none")
    if mask is None:
        return loss.mean()
    m = mask.to(loss.dtype).unsqueeze(1)
    return (loss * m).sum() / m.sum().clamp(min=1)


def adversarial_objective(g_is, d, x, y, x_unl, num_classes: int, ignore_index: int, weights: HungWeights,
                          ops=reference, self_training=0.0, dice: float = 0.0):
    """Segmentation side of Hung et al.: CE on labeled images + weights.adv * adversarial term on labeled
    predictions + weights.semi_adv * adversarial term on unlabeled ones + weights.self_training * CE
    against the unlabeled predictions' argmax where D's confidence sigmoid(D) exceeds weights.threshold
    (switched on by self_training, 0 or 1). Returns (loss, terms, fakes) like generator_objective."""
    valid = y != ignore_index
    logits = g_is(x)
    loss = segmentation_loss(logits, y, num_classes, ignore_index, ops, dice)
    terms = {"gen_seg": loss}
    p_l = torch.softmax(logits, dim=1)
    terms["adv"] = masked_bce(d(p_l), 1.0, valid)
    logits_u = g_is(x_unl)
    p_u = torch.softmax(logits_u, dim=1)
    d_u = d(p_u)
    terms["semi_adv"] = masked_bce(d_u, 1.0)
    confident = torch.sigmoid(d_u.float()).squeeze(1) > weights.threshold
    pseudo = torch.where(confident, p_u.argmax(1), torch.full_like(confident, ignore_index, dtype=torch.long))
    # a mean over no pixel is NaN: a batch without a confident pixel contributes 0
    semi = (F.cross_entropy(logits_u.float(), pseudo, ignore_index=ignore_index, reduction="sum")
            / confident.sum().clamp(min=1))
    terms["semi"] = semi
    loss = (loss + weights.adv * terms["adv"] + weights.semi_adv * terms["semi_adv"]
            + (weights.self_training * self_training) * semi)
    terms = {k: v.detach() for k, v in terms.items()}
    return loss, terms, {"labeled": p_l.detach(), "unlabeled": p_u.detach()}


def adversarial_discriminator_objective(d, real_seg, fake_labeled, fake_unlabeled, valid):
    """D of Hung et al.: one-hot ground truth (real, 1) against G_IS's softmax on labeled and unlabeled
    images (fake, 0), each half weighted 1/2; ignored pixels count nowhere."""
    fake = torch.cat([fake_labeled, fake_unlabeled])
    fake_mask = torch.cat([valid, torch.ones((fake_unlabeled.shape[0], *valid.shape[1:]), dtype=torch.bool,
                                             device=valid.device)])
    d_fake = masked_bce(d(fake), 0.0, fake_mask)
    d_real = masked_bce(d(real_seg), 1.0, valid)
    loss = 0.5 * (d_fake + d_real)
    return loss, {"d_adv": loss.detach()}


# -- Mean Teacher (Tarvainen & Valpola 2017, as SSL4MIS trains it on ACDC) and weak-to-strong consistency
# (FixMatch, Sohn et al. 2020, as UniMatch's segmentation baseline): the field's baselines on G_IS alone ----

def mean_teacher_objective(student, teacher, x, y, x_unl, noise, num_classes: int, ignore_index: int,
                           weight, ops=reference, merge_passes: bool = False, dice: float = 0.0):
    """The supervised loss of the student plus `weight` x the mean squared difference between the
    student's softmax on the unlabeled images and the teacher's on the same images with `noise` added
    (SSL4MIS: train_mean_teacher_2D.py). The teacher (an EMA of the student) takes no gradient.
    Returns (loss, terms)."""
    logits = Passes(student, [x, x_unl], merge_passes)
    sup = segmentation_loss(logits[0], y, num_classes, ignore_index, ops, dice)
    with torch.no_grad():
        target = torch.softmax(teacher(x_unl + noise).float(), dim=1)
    consistency = ((torch.softmax(logits[1].float(), dim=1) - target) ** 2).mean()
    return sup + weight * consistency, {"gen_seg": sup.detach(), "consistency": consistency.detach()}


def fixmatch_objective(g_is, x, y, x_weak, x_strong, box, num_classes: int, ignore_index: int, threshold: float,
                       weight, ops=reference, merge_passes: bool = False, dice: float = 0.0,
                       unlabeled_loss: str = "dice", strong_apart: bool = False):
    """The supervised loss plus `weight` x a loss of G_IS on the strong views against the argmax of its own
    (detached) prediction on the weak views, counted where that prediction's confidence is at least
    `threshold`; inside each CutMix `box` the pseudo-labels are the partner image's (views.py). The loss:
    "dice", the soft Dice over the confident pixels (UniMatch's medical/unimatch.py, its ACDC recipe), or
    "ce", the cross-entropy averaged over every unlabeled pixel, confident or not (its fixmatch.py for
    natural images). strong_apart: G_IS reads the strong views in a call of their own after [x, x_weak] (for
    a BatchNorm G_IS, whose statistics would otherwise mix the strong views into the labeled images': the
    calls UniMatch makes). Returns (loss, terms)."""
    if strong_apart:
        first = Passes(g_is, [x, x_weak], merge_passes)
        logits = [first[0], first[1], g_is(x_strong)]
    else:
        logits = Passes(g_is, [x, x_weak, x_strong], merge_passes)
    sup = segmentation_loss(logits[0], y, num_classes, ignore_index, ops, dice)
    with torch.no_grad():
        conf, pseudo = torch.softmax(logits[1].detach().float(), dim=1).max(dim=1)          # (M, H, W)
        conf = torch.where(box, partner(conf), conf)
        pseudo = torch.where(box, partner(pseudo), pseudo)
        confident = conf >= threshold
        pseudo = torch.where(confident, pseudo, torch.full_like(pseudo, ignore_index))
    if unlabeled_loss == "dice":
        unl = soft_dice_loss(logits[2], pseudo, num_classes, ignore_index)
    else:
        unl = ops.softmax_cross_entropy(logits[2], pseudo, ignore_index=ignore_index, reduction="sum") / pseudo.numel()
    return sup + weight * unl, {"gen_seg": sup.detach(), "consistency": unl.detach(),
                                "confident": confident.float().mean()}
