"""``vitmemad_feat``: the paper's memory module + coordinate attention + decoder, in feature space.

Instead of pixels, the model reconstructs the frozen ImageNet EfficientNet-Lite0 feature map
(``pretrained.FeatureExtractor``: stride-8 and stride-16 stages, 3x3 local average, C = 152 channels
at S/8). Pipeline, mirroring ``ViTMemAE``::

    features f (B, C, S/8, S/8), standardised per channel
      -> encoder: 1x1 conv to D, then ``downsample`` stride-2 3x3 convs (BatchNorm + ReLU)  (B, D, S/8/2^k, ...);
         with ``project=False`` none: the memory reads the standardised backbone features themselves (D = C), as a
         PatchCore bank does
      -> memory module (paper eqs. 7-10; optional)  -> coordinate attention (optional)
      -> decoder: ``downsample`` x2 transposed convs back to S/8, then a 1x1 conv to C channels
    anomaly map = per-position Euclidean distance ||f - f_hat|| (B, S/8, S/8); the module
    upsamples it to the input size and smooths it with the anomaly map's Gaussian.

The memory and coordinate attention are parts handed in (or None), switched by the ``ablation`` group
(Base / +M / +CA / +M+CA) exactly as in the pixel model. The per-channel standardisation (mean / std of the
feature map) is
estimated from the first training batch and saved with the weights.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .coord_attention import CoordinateAttention
from .memory import MemoryModule, encoder_queries
from .parts import check_widths
from .pretrained import FeatureExtractor


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FeatureMemAE(nn.Module):
    def __init__(
        self,
        out_indices: Sequence[int] = (2, 3),
        local_size: int = 3,
        equalize_layers: bool = True,
        embed_dim: int = 256,
        downsample: int = 1,
        memory: MemoryModule | None = None,
        coord_attention: CoordinateAttention | None = None,
        decoder_channels: Sequence[int] = (256,),
        image_size: int | None = None,
        project: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"model.encoder.embed_dim must be >= 1, got {embed_dim}")
        if downsample < 0:
            raise ValueError(f"model.encoder.downsample must be >= 0, got {downsample}")
        decoder_channels = list(decoder_channels)
        if len(decoder_channels) != downsample and not (downsample == 0 and len(decoder_channels) <= 1):
            raise ValueError(
                f"model.decoder.channels must list one width per x2 upsampling layer ({downsample}), "
                f"got {decoder_channels}"
            )
        self.backbone = FeatureExtractor(out_indices, local_size, equalize_layers)
        channels = self.backbone.channels
        if image_size is not None:
            scale = self.backbone.stride * 2**downsample
            if image_size % scale:
                raise ValueError(f"image_size must be a multiple of {scale} for vitmemad_feat "
                                 f"(feature stride {self.backbone.stride} x 2^downsample), got {image_size}")
        if not project and (embed_dim != channels or downsample):
            raise ValueError(f"model.net.project=false reads the memory from the {channels} backbone channels at S/8: "
                             f"it needs model.net.embed_dim={channels} and model.net.downsample=0, "
                             f"got {embed_dim} and {downsample}")
        layers = _conv_bn_relu(channels, embed_dim, 1, 1) if project else []
        for _ in range(downsample):
            layers += _conv_bn_relu(embed_dim, embed_dim, 3, 2)
        self.encoder = nn.Sequential(*layers)  # empty (the identity) without a projection
        check_widths(embed_dim, memory=memory, coord_attention=coord_attention)
        self.memory = memory
        self.coord_attention = coord_attention
        dec: list[nn.Module] = []
        width = embed_dim
        for out in decoder_channels[:downsample]:
            dec += [nn.ConvTranspose2d(width, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        dec.append(nn.Conv2d(width, channels, 1))
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.register_buffer("stats_initialized", torch.tensor(False))
        self.bypass_memory = False  # memory warm-up (vitmemad.callbacks.memory), as in ViTMemAE

    def target_features(self, images: torch.Tensor, init_stats: bool = False) -> torch.Tensor:
        """Standardised backbone features (B, C, h, w); the first training batch sets the statistics."""
        feats = self.backbone(images)
        if (self.training or init_stats) and not bool(self.stats_initialized):
            self.feature_mean.copy_(feats.mean(dim=(0, 2, 3)))
            self.feature_std.copy_(feats.std(dim=(0, 2, 3)).clamp_min(1e-6))
            self.stats_initialized.fill_(True)
        return (feats - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]

    @torch.no_grad()
    def initialize_memory(self, images: torch.Tensor | Iterable[torch.Tensor],
                          generator: torch.Generator | None = None) -> bool:
        """``memory.init=features|coreset``: items start from encoder queries (see ViTMemAE)."""
        if self.memory is None or self.bypass_memory or bool(self.memory.initialized):
            return False
        def encode(x: torch.Tensor) -> torch.Tensor:
            return self.encoder(self.target_features(x, init_stats=True))
        self.memory.initialize_from(encoder_queries(encode, images), generator)
        return True

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        target = self.target_features(images)
        z = self.encoder(target)
        weights = None
        if self.memory is not None and not self.bypass_memory:
            z, weights = self.memory(z)
        if self.coord_attention is not None:
            z = self.coord_attention(z)
        recon = self.decoder(z)
        sq = (recon.float() - target.float()).square()
        return {
            "reconstruction": None,  # no pixel reconstruction: the model rebuilds features
            "memory_weights": weights,
            "anomaly_map": sq.sum(1).sqrt(),  # per-position feature distance
            "feature_error": sq.mean(1),  # the training objective (mean squared error per channel)
        }
