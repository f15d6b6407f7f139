"""Real models with spectral norm (and weight norm), built from PyTorch modules for the tests.

* :func:`hifigan_discriminator`: HiFi-GAN's multi-scale discriminator, small: spectral norm on
  the first scale, weight norm on the others (as in the paper's code).
* :func:`gan_generator`: a small DCGAN-style generator with spectral norm on every layer
  (Linear, ConvTranspose2d: dim 1, a square ConvTranspose2d whose u/v fit two axes).

``api`` picks the key style: ``"legacy"`` (``torch.nn.utils.weight_norm``/``spectral_norm``
hooks) or ``"parametrize"`` (``torch.nn.utils.parametrizations``). :func:`train` runs a few
optimizer steps in training mode, so the power-iteration vectors ``u``/``v`` move away from
their initial values.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

APIS = ("legacy", "parametrize")


def spectral(module: nn.Module, api: str, **kwargs) -> nn.Module:
    if api == "legacy":
        return nn.utils.spectral_norm(module, **kwargs)
    return nn.utils.parametrizations.spectral_norm(module, **kwargs)


def weight_normed(module: nn.Module, api: str) -> nn.Module:
    if api == "legacy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the legacy API is deprecated
            return nn.utils.weight_norm(module)
    return nn.utils.parametrizations.weight_norm(module)


class ScaleDiscriminator(nn.Module):
    """HiFi-GAN's DiscriminatorS, with fewer channels (grouped convs and a square one kept)."""

    def __init__(self, norm) -> None:
        super().__init__()
        self.convs = nn.ModuleList([
            norm(nn.Conv1d(1, 8, 15, 1, padding=7)),
            norm(nn.Conv1d(8, 16, 41, 2, groups=4, padding=20)),
            norm(nn.Conv1d(16, 16, 41, 2, groups=16, padding=20)),
            norm(nn.Conv1d(16, 16, 5, 1, padding=2)),  # square: u and v fit axes 0 and 1
        ])
        self.conv_post = norm(nn.Conv1d(16, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.nn.functional.leaky_relu(conv(x), 0.1)
        return torch.flatten(self.conv_post(x), 1, -1)


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, api: str) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList([
            ScaleDiscriminator(lambda m: spectral(m, api)),
            ScaleDiscriminator(lambda m: weight_normed(m, api)),
            ScaleDiscriminator(lambda m: weight_normed(m, api)),
        ])
        self.meanpools = nn.ModuleList([nn.AvgPool1d(4, 2, padding=2),
                                        nn.AvgPool1d(4, 2, padding=2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.meanpools[i - 1](x)
            outs.append(d(x))
        return torch.cat(outs, dim=1)


class Generator(nn.Module):
    def __init__(self, api: str, z: int = 8) -> None:
        super().__init__()
        self.fc = spectral(nn.Linear(z, 16 * 4 * 4), api)
        self.up1 = spectral(nn.ConvTranspose2d(16, 8, 4, 2, 1), api)  # dim 1 (PyTorch's default)
        self.bn = nn.BatchNorm2d(8)
        self.up2 = spectral(nn.ConvTranspose2d(8, 8, 3, 1, 1), api)  # square ConvTranspose
        self.out = spectral(nn.Conv2d(8, 3, 3, 1, 1), api)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, 16, 4, 4)
        x = torch.relu(self.bn(self.up1(x)))
        x = torch.relu(self.up2(x))
        return torch.tanh(self.out(x))


def hifigan_discriminator(api: str, *, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return train(MultiScaleDiscriminator(api), lambda: torch.randn(2, 1, 64))


def gan_generator(api: str, *, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return train(Generator(api), lambda: torch.randn(4, 8))


def train(model: nn.Module, batch, steps: int = 3) -> nn.Module:
    """A few steps of SGD in training mode (power iterations run), then eval mode."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(batch()).square().mean().backward()
        optimizer.step()
    return model.eval()


def ulps(ours: np.ndarray, exact: np.ndarray) -> float:
    """The largest distance of ``ours`` from ``exact`` (float64) in units of ``ours``' last
    place."""
    spacing = np.spacing(np.abs(exact).astype(ours.dtype)).astype(np.float64)
    return float(np.max(np.abs(ours.astype(np.float64) - exact) / spacing))
