"""Networks of the method: the CycleGAN ResNet generators and pixel discriminators of Mondal et al.
(2019), Hung et al.'s (2018) fully convolutional discriminator, and the field's 2D UNet (SSL4MIS).

    G_IS  image -> segmentation logits   ResnetGenerator(in_ch=C, out_ch=K), or UNet(C, K) (--generator unet)
    G_SI  segmentation -> image (tanh)   ResnetGenerator(in_ch=K, out_ch=C, out_act="tanh")
    D_S   pixel discriminator on K-channel masks (softmax probabilities or one-hot)
    D_I   pixel discriminator on C-channel images

Every InstanceNorm (+ ReLU) is one `NormReLU` module that calls the ops module it is given (`use_ops`):
the reference ops (the default), or the fused ones, without touching the architecture.
`networks_from_config` builds the networks of a run from its config and its data's metadata.
"""
from __future__ import annotations

import torch
from torch import nn

from . import reference


GENERATORS = ("resnet", "unet")     # G_IS: the paper's ResNet, or SSL4MIS's UNet


class NormReLU(nn.Module):
    """InstanceNorm2d(affine=False) followed by ReLU (relu=True), by LeakyReLU(negative_slope) when
    negative_slope is given, or alone (relu=False)."""

    def __init__(self, relu: bool = True, eps: float = 1e-5, negative_slope: float = 0.0):
        super().__init__()
        self.relu, self.eps, self.negative_slope, self.ops = relu, eps, negative_slope, reference

    def forward(self, x):
        if self.relu:
            return self.ops.instance_norm_relu(x, self.eps, self.negative_slope)
        return self.ops.instance_norm(x, self.eps)

    def extra_repr(self):
        return f"relu={self.relu}, eps={self.eps}, negative_slope={self.negative_slope}, ops={self.ops.__name__}"


class ReflectionPad(nn.ReflectionPad2d):
    """nn.ReflectionPad2d that pads in its input's dtype under autocast too. Padding only moves values, but
    autocast runs reflection_pad2d in fp32: a bf16 activation would be cast to fp32 for the pad and back to
    bf16 for the convolution after it, forward and backward (four copies per padded convolution)."""

    def forward(self, x):
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x)
        return super().forward(x)


class ResidualBlock(nn.Module):
    """x + [ReflPad1, conv3x3, IN, ReLU, (Dropout), ReflPad1, conv3x3, IN](x)."""

    def __init__(self, ch: int, dropout: float = 0.0):
        super().__init__()
        layers = [ReflectionPad(1), nn.Conv2d(ch, ch, 3), NormReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [ReflectionPad(1), nn.Conv2d(ch, ch, 3), NormReLU(relu=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """The CycleGAN ResNet generator: c7s1-ngf, d(2ngf), d(4ngf), n_blocks x R(4ngf), u(2ngf), u(ngf), c7s1-out.

    Output size equals input size when H and W are divisible by 4. Returns logits (out_act=None)
    or tanh images (out_act="tanh").
    """

    def __init__(self, in_ch: int, out_ch: int, ngf: int = 64, n_blocks: int = 9, dropout: float = 0.0,
                 out_act: str | None = None):
        super().__init__()
        if out_act not in (None, "tanh"):
            raise ValueError(f"out_act must be None or 'tanh', got {out_act!r}")
        layers = [ReflectionPad(3), nn.Conv2d(in_ch, ngf, 7), NormReLU()]
        for mult in (1, 2):                                         # two stride-2 downsamplings
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), NormReLU()]
        layers += [ResidualBlock(ngf * 4, dropout) for _ in range(n_blocks)]
        for mult in (4, 2):                                         # two stride-2 upsamplings
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                          output_padding=1), NormReLU()]
        layers += [ReflectionPad(3), nn.Conv2d(ngf, out_ch, 7)]
        if out_act == "tanh":
            layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)

    def forward(self, x):                                           # (N, in_ch, H, W) -> (N, out_ch, H, W)
        return self.model(x)


class ConvBlock(nn.Sequential):
    """[conv3x3, BatchNorm, LeakyReLU(0.01)] x 2 with dropout between them (SSL4MIS's ConvBlock)."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.LeakyReLU(),
                         nn.Dropout(dropout),
                         nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.LeakyReLU())


class UNet(nn.Module):
    """The 2D UNet every semi-supervised ACDC table starts from (SSL4MIS's networks/unet.py, `UNet`,
    from PyMIC): widths 16, 32, 64, 128, 256, dropout 0.05 .. 0.5 in the encoder, 2x2 max-pool down, 2x2
    down, up by a 1x1 convolution then bilinear x2 (align_corners; their Decoder leaves UpBlock's
    `bilinear=True` default in force), BatchNorm + LeakyReLU, a 3x3 output convolution; PyTorch's default
    initialisation (as theirs). 1,813,764 parameters at C = 1, K = 4, as theirs (tests/test_models.py).
    Input sides must be multiples of 16 (four halvings)."""
    WIDTHS = (16, 32, 64, 128, 256)
    DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        w, p = self.WIDTHS, self.DROPOUT
        self.enc = nn.ModuleList([ConvBlock(in_ch, w[0], p[0])] +
                                 [ConvBlock(w[i - 1], w[i], p[i]) for i in range(1, 5)])
        self.up = nn.ModuleList([nn.Conv2d(w[i], w[i - 1], 1) for i in range(4, 0, -1)])
        self.dec = nn.ModuleList([ConvBlock(2 * w[i - 1], w[i - 1], 0.0) for i in range(4, 0, -1)])
        self.out = nn.Conv2d(w[0], out_ch, 3, padding=1)

    def forward(self, x):                                           # (N, C, H, W) -> (N, K, H, W)
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))  # (N, w_i, H / 2^i, W / 2^i)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up, self.dec):
            x = nn.functional.interpolate(up(x), scale_factor=2, mode="bilinear", align_corners=True)
            x = block(torch.cat([skips.pop(), x], dim=1))           # skip first, as SSL4MIS's UpBlock
        return self.out(x)


class Conv1x1(nn.Conv2d):
    """A 1x1 convolution. With one input channel (grayscale images into D_I) it is a broadcast product
    and is computed as one: a one-channel tensor's channel stride is arbitrary, cuDNN picks a
    convolution's output layout from it, and a compiled graph, which does not track that stride, would
    expect the other layout (the GPU check found this; tests/test_fastpath.py keeps it out)."""

    def __init__(self, in_ch: int, out_ch: int, bias: bool = True):
        super().__init__(in_ch, out_ch, 1, bias=bias)

    def forward(self, x):
        if self.in_channels != 1:
            return super().forward(x)
        y = x * self.weight.view(1, -1, 1, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


class PixelDiscriminator(nn.Module):
    """1x1-conv discriminator: one real/fake score per pixel, (N, in_ch, H, W) -> (N, 1, H, W), no sigmoid.

    norm: "instance" (the paper's code), "batch" (the paper's text) or "none". The instance norm and
    its LeakyReLU are one NormReLU (the fused op on the fast path); the Identity after it keeps the
    layer indices (and so checkpoints) of the plain IN, LeakyReLU pair.
    """

    def __init__(self, in_ch: int, ndf: int = 64, norm: str = "instance"):
        super().__init__()
        norms = {"instance": lambda c: [NormReLU(negative_slope=0.2), nn.Identity()],
                 "batch": lambda c: [nn.BatchNorm2d(c), nn.LeakyReLU(0.2)],
                 "none": lambda c: [nn.Identity(), nn.LeakyReLU(0.2)]}
        if norm not in norms:
            raise ValueError(f"discriminator norm must be one of {sorted(norms)}, got {norm!r}")
        self.net = nn.Sequential(
            Conv1x1(in_ch, ndf), nn.LeakyReLU(0.2),
            Conv1x1(ndf, ndf * 2, bias=norm != "batch"), *norms[norm](ndf * 2),
            Conv1x1(ndf * 2, 1),
        )

    def forward(self, x):
        return self.net(x)


class FCDiscriminator(nn.Module):
    """Hung et al. (2018)'s fully convolutional discriminator on K-channel class maps: five 4x4 stride-2
    convolutions (ndf, 2 ndf, 4 ndf, 8 ndf, 1) with LeakyReLU(0.2), scores upsampled (bilinear) to the
    input's size: (N, K, H, W) -> (N, 1, H, W) confidence logits."""

    def __init__(self, in_ch: int, ndf: int = 64):
        super().__init__()
        layers, ch = [], in_ch
        for out in (ndf, ndf * 2, ndf * 4, ndf * 8):
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return nn.functional.interpolate(self.net(x), size=x.shape[2:], mode="bilinear", align_corners=False)


def init_weights(net: nn.Module, std: float = 0.02) -> nn.Module:
    """Conv/convT weights N(0, std), biases 0; BatchNorm weights N(1, std), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return net


def use_ops(net: nn.Module, ops) -> nn.Module:
    """Route every IN (+ ReLU) of `net` through the ops module `ops`: cycleseg.reference (the default),
    cycleseg.native (PyTorch's own ops) or cycleseg.ops (the fused kernels)."""
    for m in net.modules():
        if isinstance(m, NormReLU):
            m.ops = ops
    return net


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def build_networks(in_ch: int, num_classes: int, ngf: int = 64, n_blocks: int = 9, ndf: int = 64,
                   disc_norm: str = "instance", dropout: float = 0.0, with_cycle: bool = True,
                   generator: str = "resnet") -> dict:
    """The four networks of the method, initialised; with_cycle=False gives G_IS alone (supervised).
    generator: G_IS's architecture, "resnet" (the paper's, N(0, 0.02) init) or "unet" (SSL4MIS's, with
    its PyTorch default init); G_SI and the discriminators are the paper's either way."""
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")
    unet = generator == "unet"
    nets = {"G_IS": UNet(in_ch, num_classes) if unet else ResnetGenerator(in_ch, num_classes, ngf, n_blocks, dropout)}
    if with_cycle:
        nets["G_SI"] = ResnetGenerator(num_classes, in_ch, ngf, n_blocks, dropout, out_act="tanh")
        nets["D_S"] = PixelDiscriminator(num_classes, ndf, disc_norm)
        nets["D_I"] = PixelDiscriminator(in_ch, ndf, disc_norm)
    # every network built before any is initialised: the order in which they draw from the RNG is fixed
    return {name: net if unet and name == "G_IS" else init_weights(net) for name, net in nets.items()}


def mixes_batch(net: nn.Module) -> bool:
    """Whether net's output for one image depends on the others in its batch (BatchNorm in training):
    then the inputs an objective reads are passed in one call, as the field's code does, on every path."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def networks_from_config(cfg, meta, names=("G_IS", "G_SI", "D_S", "D_I")) -> dict:
    """The networks `names` of a run with config `cfg` (resolved) on data described by `meta`
    (channels, num_classes), initialised from the current torch seed. "D_H" is Hung et al.'s
    discriminator (--mode adversarial)."""
    nets = build_networks(meta.channels, meta.num_classes, cfg.ngf, cfg.n_blocks, cfg.ndf, cfg.disc_norm,
                          cfg.dropout, with_cycle=bool(set(names) & {"G_SI", "D_S", "D_I"}),
                          generator=getattr(cfg, "generator", "resnet"))
    if "D_H" in names:
        nets["D_H"] = init_weights(FCDiscriminator(meta.num_classes, cfg.ndf))
    unknown = set(names) - set(nets)
    if unknown:
        raise ValueError(f"unknown networks {sorted(unknown)}; the method has {sorted(nets)}")
    return {k: v for k, v in nets.items() if k in names}


def data_info(meta) -> dict:
    """What a checkpoint records of the data its networks were built for."""
    return {"num_classes": meta.num_classes, "channels": meta.channels, "class_names": list(meta.class_names),
            "palette": [list(p) for p in meta.palette], "ignore_index": meta.ignore_index,
            "height": meta.height, "width": meta.width, "preprocessing": dict(meta.preprocessing)}
