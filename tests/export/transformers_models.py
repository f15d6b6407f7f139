"""``--model`` callables for tests/export/test_transformers_models.py: real ``transformers`` audio
model classes at tiny sizes, built from their config classes (random weights, nothing downloaded).

Each ``build_*`` returns the model as a user's ``--model`` would: without weight norm where the
library's class has none by default (wnconvert applies it to the reference from the checkpoint's
g/v pairs), with it where the class always has it (HuBERT's and Wav2Vec2's positional
convolution, EnCodec with ``norm_type="weight_norm"``, VITS's WaveNet flows).
``weight_normed_state_dict`` gives the checkpoint as training leaves it: weight norm applied.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _eval(model: nn.Module) -> nn.Module:
    return model.eval()


def build_speecht5_hifigan() -> nn.Module:
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    config = SpeechT5HifiGanConfig(model_in_dim=16, upsample_initial_channel=16,
                                   upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
                                   resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
                                   normalize_before=False)
    return _eval(SpeechT5HifiGan(config))


def _hubert_config() -> Any:
    from transformers import HubertConfig

    return HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
                        conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                        num_conv_pos_embedding_groups=2, vocab_size=12,
                        do_stable_layer_norm=False)


def build_hubert() -> nn.Module:
    from transformers import HubertModel

    torch.manual_seed(0)
    return _eval(HubertModel(_hubert_config()))


def build_hubert_for_ctc() -> nn.Module:
    from transformers import HubertForCTC

    torch.manual_seed(0)
    return _eval(HubertForCTC(_hubert_config()))


def build_wav2vec2() -> nn.Module:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
                            conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=2)
    return _eval(Wav2Vec2Model(config))


def build_wav2vec2_conformer() -> nn.Module:
    """Conformer blocks: a depthwise convolution followed by a BatchNorm, which both exporters
    fold into the convolution (issue 16). Rotary positions: the relative ones do not export with
    torch.export here (a view of a transposed tensor)."""
    from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerModel

    torch.manual_seed(0)
    config = Wav2Vec2ConformerConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
                                     conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                                     num_conv_pos_embedding_groups=2,
                                     conv_depthwise_kernel_size=3,
                                     position_embeddings_type="rotary")
    return _eval(Wav2Vec2ConformerModel(config))


def build_encodec() -> nn.Module:
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    # 8 kbps at 1000 frames/s and 16 codes (4 bits): 2 quantizers (1.5 kbps would be none).
    config = EncodecConfig(target_bandwidths=[8.0], sampling_rate=8000, hidden_size=16,
                           num_filters=4, num_residual_layers=1, upsampling_ratios=[4, 2],
                           num_lstm_layers=1, codebook_size=16, codebook_dim=16,
                           norm_type="weight_norm")
    return _eval(EncodecModel(config))


def build_dac() -> nn.Module:
    from transformers import DacConfig, DacModel

    torch.manual_seed(0)
    config = DacConfig(encoder_hidden_size=4, downsampling_ratios=[2, 2], decoder_hidden_size=16,
                       n_codebooks=2, codebook_size=16, codebook_dim=4, hidden_size=16,
                       sampling_rate=8000)
    return _eval(DacModel(config))


def build_vits() -> nn.Module:
    from transformers import VitsConfig, VitsModel

    torch.manual_seed(0)
    # noise_scale 0: the model samples noise in forward, which no comparison could match.
    # Two duration flows: with one, the flow that reads the text is dropped at inference
    # and every token lasts equally long.
    config = VitsConfig(vocab_size=10, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, ffn_dim=32, flow_size=8, spectrogram_bins=9,
                        upsample_initial_channel=16, upsample_rates=[2, 2],
                        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3],
                        resblock_dilation_sizes=[[1, 3]], prior_encoder_num_flows=1,
                        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
                        duration_predictor_num_flows=2,
                        duration_predictor_filter_channels=16, depth_separable_num_layers=1,
                        wavenet_kernel_size=3, noise_scale=0.0, noise_scale_duration=0.0)
    return _eval(VitsModel(config))


def build_mimi(attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import MimiConfig, MimiModel

    torch.manual_seed(0)
    config = MimiConfig(hidden_size=16, num_filters=4, upsampling_ratios=[4, 2],
                        codebook_size=16, codebook_dim=8, num_quantizers=2,
                        vector_quantization_hidden_dimension=8, upsample_groups=16,
                        num_hidden_layers=1, intermediate_size=32, num_attention_heads=2,
                        num_key_value_heads=2, head_dim=8, sliding_window=16,
                        max_position_embeddings=64,
                        attn_implementation=attn_implementation)
    return _eval(MimiModel(config))


def apply_weight_norm(model: nn.Module) -> nn.Module:
    """Weight norm where the library puts it: the model's own ``apply_weight_norm`` (SpeechT5
    HiFi-GAN, DAC), else every submodule's (Mimi's convolutions)."""
    if hasattr(model, "apply_weight_norm"):
        model.apply_weight_norm()
        return model
    for module in list(model.modules()):
        if module is not model and hasattr(module, "apply_weight_norm"):
            module.apply_weight_norm()
    return model


@torch.no_grad()
def randomize(model: nn.Module, *, seed: int = 0, gain: float = 1.0) -> nn.Module:
    """Give every parameter trained-looking values. The library's init leaves biases at zero,
    layer norms at identity and HiFi-GAN weights at std 0.01 (outputs near 1e-6, which no
    tolerance can check); an exporter may also drop an all-zero bias, which hides whether the
    parameter names are kept. ``gain`` < 1 keeps deep residual stacks (DAC) from growing
    activations whose float32 rounding alone would exceed the default tolerances."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        # Running statistics away from (0, 1), so a BatchNorm folded into a convolution
        # changes its weight and bias as a trained model's does.
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
                module.running_mean is not None and module.running_var is not None:
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape,
                                                        generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape,
                                                generator=generator) + 0.5)
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        if bool((param == 1).all()):  # a scale: a norm's weight, a Snake activation's alpha
            param.copy_(1 + 0.1 * noise)
        elif param.dim() >= 2:  # variance-preserving for a fan-in of param[0].numel()
            param.copy_(gain * noise / max(1, param[0].numel()) ** 0.5)
        else:
            param.copy_(0.1 * noise)
    return model


def weight_normed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` (weight norm applied: g/v pairs as training leaves them)."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
