"""Anomaly maps from reconstruction error, smoothed and brought to the mask's resolution.

The map is a sum of per-pixel error terms (``anomaly_map.source``): the L2 error (mean over channels), 1 - SSIM,
and (not in the paper) 1 - multi-scale gradient magnitude similarity (MSGMS, from RIAD, Zavrtanik et al., Pattern
Recognition 2021): it compares the strength of local edges at 4 scales, so a missing or added edge counts however
bright the pixels around it are. The sum is smoothed with a Gaussian (paper sec. 4.2, post-processing) and resized
to the ground-truth size.
The image score is the map's maximum, as MVTec's official evaluation takes it.

``reference="normal_mean"`` (not in the paper) subtracts the mean map of the held-out normal validation images,
computed by ``vitmemad.callbacks.ThresholdCalibration`` at every validation and saved with the weights. A model
reconstructs some places of an aligned object worse than others on every image (edges, specular highlights);
that baseline error then no longer competes with real defects. On a texture or an unaligned object the mean map
is nearly flat, so subtracting it changes little.

``image_score="normal_z"`` (not in the paper) scores an image by the maximum of its map standardised per pixel,
(raw map - mean) / std over the same normal validation images, while the pixel metrics and predict's maps keep the
map itself. Where a model's error is high on every normal image (tread edges, specular rims), a defect elsewhere
no longer has to outshine it to raise the image's score; the standardised map is no localisation (it divides by
the tiny spread of flat background), so it only feeds the image score. The std is smoothed with the image score's
Gaussian and floored at 1e-3 of its mean (STD_FLOOR).

``image_score="max_and_z"`` (not in the paper) adds the two: the map's maximum and the standardised map's
maximum, each in units of its spread over the same normal validation images ((score - mean) / std), summed. The
plain maximum finds what is large anywhere (a saturated category's defects), the standardised one what is unusual
where normal images are quiet; neither has to give up the other's evidence.

``image_sigma`` (not in the paper; default: ``sigma``) smooths the maps the image score reads further, to a
Gaussian of that sigma, while the pixel metrics keep the map at ``sigma``. A standardised map is noisy where normal
images barely vary, so its maximum is often one stray pixel; a wider Gaussian makes the score a region's evidence.
Gaussians compose, so the map at ``sigma`` is smoothed once more with sqrt(image_sigma^2 - sigma^2).

Feature-space models (PatchCore, ``vitmemad_feat``) return their own ``anomaly_map`` at feature
resolution (a per-position feature distance); it is upsampled bilinearly to the input size and
smoothed with the same Gaussian (``anomaly_map.source`` does not apply to them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import nn

from .loss import msgms_error, ssim_map
from .precision import float32_region

# The per-pixel error terms each source adds up; "both" is L2 + SSIM (the paper's two), "all" adds MSGMS.
SOURCE_TERMS = {"l2": ("l2",), "ssim": ("ssim",), "both": ("l2", "ssim"), "gms": ("gms",),
                "all": ("l2", "ssim", "gms")}
TERMS = SOURCE_TERMS["all"]  # every term
SOURCES = tuple(SOURCE_TERMS)
REFERENCES = ("none", "normal_mean")
IMAGE_SCORES = ("max", "normal_z", "max_and_z")
STD_FLOOR = 1e-3  # of the mean std: a pixel that never varies on normal images cannot divide by zero ...
STD_EPS = 1e-12  # ... nor can a map that never varies anywhere


def kernel_radius(sigma: float) -> int:
    """Half the width of the Gaussian kernel ``smooth`` uses for ``sigma``: 4 sigma, rounded."""
    return int(4.0 * sigma + 0.5)


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of (B, H, W) maps (reflected borders); the maps themselves for sigma = 0."""
    if sigma <= 0:
        return maps
    ksize = 2 * kernel_radius(sigma) + 1
    return gaussian_blur2d(maps[:, None], (ksize, ksize), (sigma, sigma), border_type="reflect")[:, 0]


def error_term(term: str, x: torch.Tensor, reconstruction: torch.Tensor, ssim_window: int = 11) -> torch.Tensor:
    """One unsmoothed (B, H, W) error term of float32 images: squared error or 1 - SSIM, averaged over channels,
    or 1 - MSGMS of the grey images."""
    if term == "l2":
        return ((x - reconstruction) ** 2).mean(dim=1)
    if term == "gms":
        return msgms_error(x, reconstruction)
    return (1.0 - ssim_map(x, reconstruction, ssim_window)).mean(dim=1)


class AnomalyMapGenerator(nn.Module):
    def __init__(self, source: str = "l2", sigma: float = 4.0, ssim_window: int = 11, reference: str = "none",
                 image_size: int | None = None, image_score: str = "max", image_sigma: float | None = None) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"anomaly_map.source must be one of {SOURCES}, got {source!r}")
        if sigma < 0:
            raise ValueError(f"anomaly_map.sigma must be >= 0, got {sigma}")
        if reference not in REFERENCES:
            raise ValueError(f"anomaly_map.reference must be one of {REFERENCES}, got {reference!r}")
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"anomaly_map.image_score must be one of {IMAGE_SCORES}, got {image_score!r}")
        for key, value in (("reference", reference), ("image_score", image_score)):
            if value not in ("none", "max") and not image_size:
                raise ValueError(f"anomaly_map.{key}={value} needs anomaly_map.image_size (the model's input size)")
        if image_sigma is not None and float(image_sigma) < sigma:
            raise ValueError(f"anomaly_map.image_sigma must be >= anomaly_map.sigma ({sigma}): the image score smooths "
                             f"the map further, got {image_sigma}")
        self.image_sigma = float(sigma if image_sigma is None else image_sigma)
        for key, value in (("sigma", float(sigma)), ("image_sigma", self.image_sigma)):
            if image_size and kernel_radius(value) >= int(image_size):
                raise ValueError(f"anomaly_map.{key}={value:g} is too wide for a {image_size} px map: its Gaussian "
                                 f"reaches {kernel_radius(value)} px; use at most {(int(image_size) - 1) / 4:g}")
        self.source = source
        self.sigma = float(sigma)
        self.ssim_window = ssim_window
        self.reference = reference
        self.image_score = image_score
        self.extra_sigma = (self.image_sigma ** 2 - self.sigma ** 2) ** 0.5  # maps at sigma -> at image_sigma
        if self.needs_normal_maps:  # until the first validation: the raw map, and z = the raw map
            self.register_buffer("normal_mean", torch.zeros(int(image_size), int(image_size)))
        if self.standardises:
            self.register_buffer("normal_std", torch.ones(int(image_size), int(image_size)))
        if image_score == "max_and_z":  # mean and std of each part's score over normal images: (max, z)
            self.register_buffer("score_mean", torch.zeros(2))
            self.register_buffer("score_std", torch.ones(2))

    @property
    def has_reference(self) -> bool:
        return self.reference != "none"

    @property
    def needs_normal_maps(self) -> bool:
        """Whether the normal validation images' maps set a statistic here (``ThresholdCalibration``)."""
        return self.has_reference or self.image_score != "max"

    @property
    def standardises(self) -> bool:
        """Whether the image score reads the map standardised per pixel (``normal_z``, ``max_and_z``)."""
        return self.image_score in ("normal_z", "max_and_z")

    @property
    def score_is_map_maximum(self) -> bool:
        """Whether each image's score is its map's own maximum (MVTec's), so the image threshold is on the map's
        scale (colour bars) and an ONNX file of the map alone reproduces the score."""
        return self.image_score == "max" and self.extra_sigma == 0

    def set_reference(self, mean_map: torch.Tensor) -> None:
        """The mean raw map (S, S) of normal validation images, subtracted from every later map."""
        self.normal_mean.copy_(mean_map.to(self.normal_mean))

    def set_normal_statistics(self, mean_map: torch.Tensor, std_map: torch.Tensor) -> None:
        """Per-pixel mean (S, S) of the raw maps of normal validation images, the reference (when on), and std of
        the same maps as the image score reads them (``image_maps``), its standardisation (``normal_z``,
        ``max_and_z``)."""
        self.set_reference(mean_map)
        if self.standardises:
            std = gaussian_smooth(std_map.float()[None], self.image_sigma)[0]
            self.normal_std.copy_((std + STD_FLOOR * std.mean() + STD_EPS).to(self.normal_std))

    def image_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) maps at ``sigma`` -> at ``image_sigma``: the same tensor when the two are equal."""
        return gaussian_smooth(maps, self.extra_sigma)

    def standardised_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) maps as this generator returns them -> at ``image_sigma``, standardised per pixel."""
        mean = self.image_maps(self.normal_mean[None])[0]  # the mean of the smoothed maps: smoothing is linear
        return (self.image_maps(self.add_reference(maps)) - mean) / self.normal_std

    def score_parts(self, maps: torch.Tensor) -> list[torch.Tensor]:
        """(B, H, W) maps as this generator returns them -> the maps whose maxima make each image's score: the maps
        at ``image_sigma`` (the same maps by default), standardised per pixel, or both (``max_and_z``)."""
        if self.image_score == "max":
            return [self.image_maps(maps)]
        if self.image_score == "normal_z":
            return [self.standardised_maps(maps)]
        return [maps, self.standardised_maps(maps)]

    def combine(self, maxima: torch.Tensor) -> torch.Tensor:
        """(P, B) maxima of the ``score_parts`` -> (B,) image scores."""
        if self.image_score != "max_and_z":
            return maxima[0]
        return ((maxima - self.score_mean[:, None]) / self.score_std[:, None]).sum(0)

    def image_scores(self, maps: torch.Tensor, sizes: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """(B, H, W) maps -> (B,) image scores: maxima at the map's resolution, or at each image's native ``sizes``
        (where MVTec's evaluation takes them)."""
        return self.combine(torch.stack([native_maxima(part, sizes) for part in self.score_parts(maps)]))

    def set_score_statistics(self, maxima: torch.Tensor) -> None:
        """(P, N) maxima of the score parts over normal validation images -> each part's mean and std
        (``max_and_z``; a no-op for the other scores)."""
        if self.image_score == "max_and_z":
            self.score_mean.copy_(maxima.mean(1).to(self.score_mean))
            self.score_std.copy_((maxima.std(1) + STD_EPS).to(self.score_std))

    def subtract_reference(self, maps: torch.Tensor) -> torch.Tensor:
        return maps - self.normal_mean if self.has_reference else maps

    def add_reference(self, maps: torch.Tensor) -> torch.Tensor:
        """The raw maps back from referenced ones (the calibration needs them)."""
        return maps + self.normal_mean if self.has_reference else maps

    def forward(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, H, W) float32 anomaly map at the model's resolution (also under autocast)."""
        with float32_region(x, reconstruction) as (x, reconstruction):
            maps = torch.zeros_like(x[:, 0])
            for term in SOURCE_TERMS[self.source]:
                maps = maps + error_term(term, x, reconstruction, self.ssim_window)
            return self.subtract_reference(self.smooth(maps))

    def smooth(self, maps: torch.Tensor) -> torch.Tensor:
        """Gaussian smoothing of (B, H, W) maps with ``sigma`` (a no-op for sigma = 0)."""
        return gaussian_smooth(maps, self.sigma)

    def from_distances(self, distances: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, h, w) feature-space distances -> (B, H, W) float32 map: bilinear upsampling, then smoothing."""
        with float32_region(distances) as (distances,):
            return self.subtract_reference(self.smooth(resize_maps(distances, tuple(size))))


def anomaly_maps(generator: AnomalyMapGenerator, images: torch.Tensor, out: dict) -> torch.Tensor:
    """(B, H, W) maps at the input size from a model's output: its own ``anomaly_map`` when it returns one
    (feature-space models), else the reconstruction error."""
    if out.get("anomaly_map") is not None:
        return generator.from_distances(out["anomaly_map"], tuple(images.shape[-2:]))
    return generator(images, out["reconstruction"])


def native_maxima(maps: torch.Tensor, sizes: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """(B, H, W) maps -> (B,) maxima, each taken after resizing to its ``sizes`` entry when given."""
    if sizes is None:
        return maps.flatten(1).amax(1)
    return torch.stack([resize_maps(maps[i : i + 1], tuple(size)).amax() for i, size in enumerate(sizes)])


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, H, W) maps to ``size`` = (H0, W0); a no-op when sizes agree."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
