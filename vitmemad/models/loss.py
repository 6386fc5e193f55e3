"""Training loss (paper eqs. 11-15): L2 + lambda_ssim * L_SSIM + lambda_ent * L_ent.

- L_SSIM is the mean of (1 - SSIM map) (eq. 12). kornia's ``ssim_loss`` returns (1 - SSIM) / 2, so
  the SSIM map is taken from ``kornia.metrics.ssim`` directly. Images live in [-1, 1], so the
  dynamic range passed to SSIM is 2.
- L_ent = -sum_i w_i log(w_i + eps), averaged over positions. The paper's eq. 14 drops the minus
  sign, but its text says minimising the loss sharpens the weights, which needs the minus.
- ``lambda_gms`` (not in the paper, 0 = off) adds the mean of 1 - multi-scale gradient magnitude similarity
  (MSGMS, RIAD's third loss term; ``msgms_error``, the anomaly map's ``gms`` term): it asks the decoder for the
  edges of the input, which L2 and SSIM on smooth reconstructions reward little.
- ``lambda_mem`` (not in the paper, 0 = off) adds the codebook and commitment terms of vector quantisation
  (van den Oord et al. 2017) to the memory: ``|sg(z) - z_hat|^2 + commitment * |z - sg(z_hat)|^2``, over
  ``|sg(z)|^2``, with z the encoder's queries and z_hat the memory's read-out. Without it the items learn only
  through the decoder, so nothing ties the read-out to the features it replaces: the decoder learns to work
  from a few blended items, the rest die, and the memory is a smoother rather than a bank of normal patterns.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import filter2d
from kornia.metrics import ssim
from torch import nn

from .precision import float32_region

DYNAMIC_RANGE = 2.0  # images are normalised to [-1, 1]


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """Per-pixel SSIM, (B, C, H, W), computed in float32 (its convolutions too) under autocast.

    On a CPU, with a gradient to record, both images go channels-last first: the decoder's output already is, and
    oneDNN's depthwise Gaussian convolutions then run without blocked NCHW copies, 1.4-1.6x faster forward and
    backward with the same values (experiments/bench_ssim.py; kornia's own CPU fast path is forward-only)."""
    with float32_region(x, y) as (x, y):
        if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
            x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
        return ssim(x, y, window_size, max_val=DYNAMIC_RANGE, padding="same")


# Prewitt kernels (RIAD's gradient): a unit step between -1 and 1, the images' range, has magnitude 2.
PREWITT = torch.tensor([[1.0, 0.0, -1.0]] * 3) / 3.0
GMS_SCALES = 4  # full, 1/2, 1/4, 1/8 resolution, as RIAD
GMS_C = 0.0026  # stabilising constant (RIAD's), in squared gradient units of the [-1, 1] images
GRAD_EPS = 1e-12  # keeps the magnitude's gradient finite on flat patches (where it is 0)


def gradient_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, H, W) Prewitt gradient magnitude, replicated borders."""
    kernel = PREWITT.to(gray)[None]
    gx = filter2d(gray, kernel, border_type="replicate")
    gy = filter2d(gray, kernel.transpose(1, 2), border_type="replicate")
    return (gx ** 2 + gy ** 2 + GRAD_EPS).sqrt()


def msgms_error(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """(B, H, W) 1 - multi-scale gradient magnitude similarity of the grey images, each scale's map upsampled
    bilinearly and the scales averaged (RIAD). 0 where both images have the same edges, up to 1 where one has an
    edge the other lacks."""
    a, b = x.mean(dim=1, keepdim=True), reconstruction.mean(dim=1, keepdim=True)
    total = torch.zeros_like(a)
    for scale in range(GMS_SCALES):
        if scale:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        ga, gb = gradient_magnitude(a), gradient_magnitude(b)
        gms = (2 * ga * gb + GMS_C) / (ga ** 2 + gb ** 2 + GMS_C)
        total = total + F.interpolate(1.0 - gms, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return total[:, 0] / GMS_SCALES


def memory_feature_loss(queries: torch.Tensor, readout: torch.Tensor, commitment: float) -> torch.Tensor:
    """VQ codebook + commitment loss relative to the queries' energy (scale-free: features have no fixed norm)."""
    with float32_region(queries, readout) as (queries, readout):
        energy = queries.detach().pow(2).sum().clamp_min(1e-12)
        codebook = (readout - queries.detach()).pow(2).sum()
        commit = (queries - readout.detach()).pow(2).sum()
        return (codebook + commitment * commit) / energy


def entropy_loss(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean over positions of -sum_i w_i log(w_i + eps) for weights (..., N)."""
    return -(weights * torch.log(weights + eps)).sum(dim=-1).mean()


class ReconstructionLoss(nn.Module):
    def __init__(
        self,
        lambda_recon: float = 1.0,
        lambda_ssim: float = 1.0,
        lambda_ent: float = 0.001,
        ssim_window: int = 11,
        lambda_mem: float = 0.0,
        mem_commitment: float = 0.25,
        lambda_gms: float = 0.0,
    ) -> None:
        super().__init__()
        self.lambda_gms = lambda_gms
        self.lambda_mem = lambda_mem
        self.mem_commitment = mem_commitment
        self.lambda_recon = lambda_recon
        self.lambda_ssim = lambda_ssim
        self.lambda_ent = lambda_ent
        self.ssim_window = ssim_window

    def forward(
        self, x: torch.Tensor, reconstruction: torch.Tensor, memory_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        with float32_region(x, reconstruction) as (x, reconstruction):  # the loss is never rounded to bf16
            l2 = F.mse_loss(reconstruction, x)
            l_ssim = (1.0 - ssim_map(x, reconstruction, self.ssim_window)).mean()
            recon = l2 + self.lambda_ssim * l_ssim
            terms = {"l2": l2, "ssim": l_ssim}
            if self.lambda_gms > 0:  # computed only when it counts
                terms["gms"] = msgms_error(x, reconstruction).mean()
                recon = recon + self.lambda_gms * terms["gms"]
            ent = entropy_loss(memory_weights.float()) if memory_weights is not None else torch.zeros_like(l2)
            total = self.lambda_recon * recon + self.lambda_ent * ent
        return {"loss": total, **terms, "entropy": ent}

    def terms(self, x: torch.Tensor, out: dict) -> dict[str, torch.Tensor]:
        """The loss terms of a model's output: pixel reconstruction, or a feature-space model's own error."""
        if out.get("feature_error") is not None:
            terms = self.feature_terms(out["feature_error"], out.get("memory_weights"))
        else:
            terms = self(x, out["reconstruction"], out.get("memory_weights"))
        if out.get("memory_queries") is not None and out.get("memory_readout") is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.lambda_mem > 0):  # logged only at 0
                mem = memory_feature_loss(out["memory_queries"], out["memory_readout"], self.mem_commitment)
            terms["memory"] = mem
            if self.lambda_mem > 0:
                terms["loss"] = terms["loss"] + self.lambda_mem * mem
        return terms

    def feature_terms(self, feature_error: torch.Tensor,
                      memory_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Feature-space models: ``l2`` = mean of their per-position squared feature error (no SSIM term)."""
        with float32_region(feature_error) as (feature_error,):
            l2 = feature_error.mean()
            ent = entropy_loss(memory_weights.float()) if memory_weights is not None else torch.zeros_like(l2)
        return {"loss": self.lambda_recon * l2 + self.lambda_ent * ent, "l2": l2, "entropy": ent}
