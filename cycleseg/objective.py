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


@dataclass(frozen=True)
class Lambdas:
    """Weights of the generator terms (defaults: the 2019 code's)."""
    gen_img: float = 1.0      # lambda1, L_gen^I
    cycle_seg: float = 0.05   # lambda2, L_cycle^S
    cycle_img: float = 1.0    # lambda3, L_cycle^I
    disc_seg: float = 0.5     # lambda4, L_disc^S
    disc_img: float = 0.5     # lambda5, L_disc^I


def one_hot(y: torch.Tensor, num_classes: int, ignore_index: int, dtype=torch.float32) -> torch.Tensor:
    """(N, H, W) class ids -> (N, K, H, W) one-hot; ignored pixels become all-zero vectors."""
    valid = y != ignore_index
    y_safe = torch.where(valid, y.long(), torch.zeros_like(y, dtype=torch.long))
    oh = F.one_hot(y_safe, num_classes).permute(0, 3, 1, 2)           # (N, K, H, W)
    return (oh * valid.unsqueeze(1)).to(dtype)


def supervised_objective(g_is, x, y, ignore_index: int = 255, ops=reference):
    """The Partial / Full baselines: cross-entropy of G_IS alone. Returns (loss, terms)."""
    loss = ops.softmax_cross_entropy(g_is(x), y, ignore_index=ignore_index)
    return loss, {"gen_seg": loss.detach()}


def generator_objective(g_is, g_si, d_s, d_i, x, y, x_unl, num_classes: int, lambdas: Lambdas = Lambdas(),
                        ignore_index: int = 255, ops=reference, merge_passes: bool = False):
    """Generator side of the CycleGAN objective.

    x (N, C, H, W) in [-1, 1] with masks y (N, H, W); x_unl (M, C, H, W) unlabeled images.
    Returns (loss, terms, fakes): terms maps each computed term's name to its detached value;
    fakes = {"seg": softmax(G_IS(x')), "img": G_SI(y)}, detached, for the discriminators' pools.
    merge_passes: G_IS reads x, G_SI(y) and x' in one call (the networks' instance norms work per image,
    so this is the same function as three calls; one larger batch runs faster).
    """
    lam = lambdas
    y1h = one_hot(y, num_classes, ignore_index, x.dtype)              # (N, K, H, W)
    terms = {}

    if merge_passes:
        fake_img = g_si(y1h)                                         # (N, C, H, W) G_SI(y)
        parts = [x, fake_img, x_unl] if lam.cycle_seg else [x, x_unl]
        logits = g_is(torch.cat(parts)).split([p.shape[0] for p in parts])
        logits_x, logits_unl = logits[0], logits[-1]                 # (N, K, H, W), (M, K, H, W)
        logits_cyc = logits[1] if lam.cycle_seg else None
    else:
        logits_x = g_is(x)
        fake_img = g_si(y1h)
    loss = ops.softmax_cross_entropy(logits_x, y, ignore_index=ignore_index)
    terms["gen_seg"] = loss

    if lam.gen_img:
        terms["gen_img"] = F.mse_loss(fake_img, x)
        loss = loss + lam.gen_img * terms["gen_img"]
    if lam.cycle_seg:
        logits_cyc = logits_cyc if merge_passes else g_is(fake_img)
        terms["cycle_seg"] = ops.softmax_cross_entropy(logits_cyc, y, ignore_index=ignore_index)
        loss = loss + lam.cycle_seg * terms["cycle_seg"]
    if lam.disc_img:
        terms["disc_img"] = ops.lsgan_loss(d_i(fake_img), 1.0)
        loss = loss + lam.disc_img * terms["disc_img"]

    fake_seg = torch.softmax(logits_unl if merge_passes else g_is(x_unl), dim=1)  # (M, K, H, W) s(G_IS(x'))
    if lam.cycle_img:
        terms["cycle_img"] = F.l1_loss(g_si(fake_seg), x_unl)
        loss = loss + lam.cycle_img * terms["cycle_img"]
    if lam.disc_seg:
        terms["disc_seg"] = ops.lsgan_loss(d_s(fake_seg), 1.0)
        loss = loss + lam.disc_seg * terms["disc_seg"]

    terms = {k: v.detach() for k, v in terms.items()}
    return loss, terms, {"seg": fake_seg.detach(), "img": fake_img.detach()}


def discriminator_objective(d_s, d_i, real_seg, fake_seg, real_img, fake_img, ops=reference,
                            merge_passes: bool = False):
    """Least-squares discriminator losses (eq. 4-5), each halved. real_seg: one-hot masks;
    fake_seg / fake_img: detached generator outputs (from the history pools); real_img: unlabeled images.
    merge_passes: each discriminator scores real and fake in one call (the same function when its norm
    works per image, as instance norm does; not with batch norm).
    Returns (loss, {"d_seg": ..., "d_img": ...})."""
    def scores(d, real, fake):
        if not merge_passes:
            return d(real), d(fake)
        return d(torch.cat([real, fake])).split([real.shape[0], fake.shape[0]])

    d_seg = ops.lsgan_disc_loss(*scores(d_s, real_seg, fake_seg))
    d_img = ops.lsgan_disc_loss(*scores(d_i, real_img, fake_img))
    return d_seg + d_img, {"d_seg": d_seg.detach(), "d_img": d_img.detach()}
