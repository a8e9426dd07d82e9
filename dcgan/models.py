"""DCGAN generator and discriminator (Radford et al. 2016), sized for 28, 32 or 64 pixel images.

Depth follows the image size: the generator starts from a `base` x `base` map (4, or 7 for 28 px) and
doubles it until the image size is reached; the discriminator mirrors it. Width doubles per level from
ngf / ndf, as in PyTorch's examples/dcgan. The discriminator returns logits: the loss applies the sigmoid
(BCE-with-logits), which stays finite under fp16 autocast where Sigmoid + BCELoss does not.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def layout(image_size: int) -> tuple[int, int]:
    """(base, levels): image_size == base * 2**levels, base 4 (or 7 for MNIST's native 28)."""
    base = 7 if image_size % 7 == 0 else 4
    levels = (image_size // base).bit_length() - 1
    if base * 2 ** levels != image_size or levels < 2:
        raise ValueError(f"image size {image_size} is not 4*2^k or 7*2^k (k >= 2)")
    return base, levels


def same_size_layers(width: int, count: int, activation: Callable[[], nn.Module],
                     normalization: Callable[[int], nn.Module] = nn.BatchNorm2d) -> list[nn.Module]:
    """`count` stride-1 3x3 conv + BatchNorm + activation layers that keep the width and resolution: "deeper"
    without another resolution level (n_extra_layers of the original DCGAN code)."""
    layers = []
    for _ in range(count):
        layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), normalization(width), activation()]
    return layers


NUM_CLASSES = 10  # MNIST's digits: what a conditional model is told to draw


def balanced_labels(count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """0, 1, ..., 9, 0, 1, ...: the digits a conditional generator draws when it is not told which."""
    return torch.arange(count, device=device) % NUM_CLASSES


class Generator(nn.Module):
    """`conditional`: G(z, labels) draws the digits asked for; the label's embedding (nz values) is joined to z.
    Without labels a conditional G draws balanced_labels, so code that only passes z gets every digit alike."""

    def __init__(self, image_size: int = 64, nz: int = 100, ngf: int = 64, nc: int = 1, extra_layers: int = 0,
                 conditional: bool = False, output_bias: float = 0.0):
        super().__init__()
        base, levels = layout(image_size)
        self.image_size, self.nz, self.conditional = image_size, nz, conditional
        self.embed = nn.Embedding(NUM_CLASSES, nz) if conditional else None
        width = ngf * 2 ** (levels - 1)
        inputs = 2 * nz if conditional else nz
        layers = [nn.ConvTranspose2d(inputs, width, base, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(levels - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += same_size_layers(width, extra_layers, partial(nn.ReLU, True))
        output = nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=bool(output_bias))
        if output_bias:  # a learned bias that starts every pixel at tanh(output_bias): near -1 starts G on black
            nn.init.constant_(output.bias, output_bias)
        self.main = nn.Sequential(*layers, output, nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] for latents z (N, nz); `labels` (N,) only matter to a conditional G."""
        x = z.view(z.shape[0], self.nz, 1, 1)
        if self.conditional:
            labels = balanced_labels(len(z), z.device) if labels is None else labels
            x = torch.cat([x, self.embed(labels).to(x.dtype).view_as(x)], dim=1)
        return self.main(x)


D_CONDITIONINGS = ("projection", "input")  # model.d_conditioning: how a conditional D is told the digit
D_NORMS = ("batch", "none")                 # model.d_norm: BatchNorm in D's hidden layers, or no normalization


class Discriminator(nn.Module):
    """`conditional`: D judges "a real image of this digit". `conditioning` says how it is told the digit:
    - projection (Miyato & Koyama 2018): the logit gains the inner product of the label's embedding with D's last
      features (summed over positions);
    - input: ten one-hot class maps joined to the image's channels (the cGAN of Mirza & Osindero 2014, as DCGAN
      code usually does it).
    `norm`: batch (DCGAN) or none: gradient penalties (dcgan/train/losses.py) are per image, which BatchNorm's
    mixing of the batch would make meaningless."""

    def __init__(self, image_size: int = 64, ndf: int = 64, nc: int = 1, extra_layers: int = 0,
                 conditional: bool = False, conditioning: str = "projection", norm: str = "batch"):
        super().__init__()
        base, levels = layout(image_size)
        self.image_size, self.conditional = image_size, conditional
        self.class_maps = conditional and conditioning == "input"
        inputs = nc + NUM_CLASSES if self.class_maps else nc
        normalization = nn.BatchNorm2d if norm == "batch" else nn.Identity
        # No BatchNorm on the input layer (DCGAN paper, section 3).
        layers = [nn.Conv2d(inputs, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        layers += same_size_layers(ndf, extra_layers, partial(nn.LeakyReLU, 0.2, inplace=True), normalization)
        width = ndf
        for _ in range(levels - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                       normalization(width * 2), nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, base, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)
        projection = conditional and not self.class_maps
        self.embed = nn.Embedding(NUM_CLASSES, width) if projection else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One logit per image; a conditional D needs the images' `labels` (N,)."""
        if not self.conditional:
            return self.main(x).flatten()
        if self.class_maps:
            maps = F.one_hot(labels, NUM_CLASSES).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
            return self.main(torch.cat([x, maps], dim=1)).flatten()
        features = self.main[:-1](x)
        projection = (self.embed(labels).to(features.dtype) * features.sum(dim=(2, 3))).sum(dim=1)
        return self.main[-1](features).flatten() + projection


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv weights (and label embeddings) ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02) and shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def with_spectral_norm(discriminator: nn.Module) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) on every convolution of D: each layer's largest singular
    value is held at 1 (one power iteration per training forward), which bounds how sharply D can change.
    Applied after init_weights, which writes the weights it then normalizes."""
    for module in discriminator.modules():
        if isinstance(module, nn.Conv2d):
            spectral_norm(module)
    return discriminator


def build_models(image_size: int, nz: int, ngf: int, ndf: int, g_extra: int = 0, d_extra: int = 0,
                 conditional: bool = False, conditioning: str = "projection", norm: str = "batch",
                 spectral_norm: bool = False, g_output_bias: float = 0.0) -> tuple[Generator, Discriminator]:
    """G and D, initialized; conditioning and norm are the Discriminator's, spectral_norm wraps D's convolutions."""
    generator = Generator(image_size, nz, ngf, extra_layers=g_extra, conditional=conditional,
                          output_bias=g_output_bias)
    discriminator = Discriminator(image_size, ndf, extra_layers=d_extra, conditional=conditional,
                                  conditioning=conditioning, norm=norm)
    generator.apply(init_weights)
    discriminator.apply(init_weights)
    return generator, with_spectral_norm(discriminator) if spectral_norm else discriminator


def models_for(cfg) -> tuple[Generator, Discriminator]:
    """G and D as a dcgan.config.Config describes them."""
    m = cfg.model
    return build_models(cfg.data.image_size, m.nz, m.ngf, m.ndf, m.g_extra_layers, m.d_extra_layers, m.conditional,
                        conditioning=m.d_conditioning, norm=m.d_norm, spectral_norm=m.spectral_norm,
                        g_output_bias=m.g_output_bias)


class ConvFlopCounter:
    """A forward hook that adds up the FLOPs (2 x multiply-accumulates) of the convolutions it is attached to."""

    def __init__(self):
        self.total = 0.0

    def __call__(self, layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        kernel = layer.kernel_size[0] * layer.kernel_size[1]
        if isinstance(layer, nn.ConvTranspose2d):
            self.total += 2.0 * inputs[0].numel() * layer.out_channels * kernel / layer.groups
        else:
            self.total += 2.0 * output.numel() * layer.in_channels * kernel / layer.groups


def conv_flops(module: nn.Module, example: torch.Tensor) -> float:
    """Forward FLOPs of every convolution in `module` for input `example`."""
    counter = ConvFlopCounter()
    handles = [m.register_forward_hook(counter) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        module(example)
    for handle in handles:
        handle.remove()
    return counter.total


def step_flops(cfg, batch: int) -> float:
    """Convolution FLOPs of one training step (dcgan/train/step.py): 3 G forwards (G: forward + backward) and 8 D
    forwards (D: 2 forwards + backward in the D phase, forward + input-gradient backward in the G phase)."""
    G, D = models_for(cfg)
    size = cfg.data.image_size
    return 3 * conv_flops(G, torch.randn(batch, cfg.model.nz)) + 8 * conv_flops(D, torch.randn(batch, 1, size, size))
