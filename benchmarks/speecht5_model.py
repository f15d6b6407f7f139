"""``--model`` callables for the export benchmark: transformers' SpeechT5 HiFi-GAN vocoder at its
default size (12.7 M parameters), randomly initialized from its config (nothing is downloaded)."""

from __future__ import annotations

import torch


def build_speecht5_hifigan(seed: int = 0) -> torch.nn.Module:
    """The vocoder without weight norm (wnconvert applies it to the reference from the
    checkpoint's g/v pairs and exports the folded weights)."""
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(seed)
    return SpeechT5HifiGan(SpeechT5HifiGanConfig()).eval()


def weight_normed_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint as training leaves it: weight norm applied (g/v pairs)."""
    model = build_speecht5_hifigan(seed)
    model.apply_weight_norm()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
