"""Test-time registration: each image is shifted onto the normal images' mean before it is reconstructed.

A reconstruction model learns its category at the position the training images show it. When the images it scores
sit a few pixels away (a test set taken with the camera moved, a part placed slightly off), it rebuilds them
worse everywhere, and that error drowns small defects. MVTec 3D-AD's tire is such a case: its test images sit
about 3 px (at 128 px) to the left of its training images. ``ShiftRegistration`` finds, for each image, the integer
shift within ``max_shift`` pixels that brings it closest (squared difference) to the mean of the held-out normal
validation images, reconstructs the shifted image, and shifts the reconstruction back, so the anomaly map stays
in the image's own frame. Exposed borders are filled by reflection. Ties go to the smallest shift, so an image
that is already in place stays unshifted. Training never shifts its inputs.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitmemad.errors import ConfigError


class ShiftRegistration(nn.Module):
    def __init__(self, max_shift: int = 4, image_size: int = 128, channels: int = 3) -> None:
        super().__init__()
        max_shift, image_size = int(max_shift), int(image_size)
        if not 0 < max_shift < image_size // 4:
            raise ValueError(f"registration.max_shift must be a whole number of pixels in [1, {image_size // 4 - 1}] "
                             f"for a {image_size} px input, got {max_shift}")
        self.max_shift = max_shift
        candidates = sorted(itertools.product(range(-max_shift, max_shift + 1), repeat=2),
                            key=lambda d: (d[0] ** 2 + d[1] ** 2, d))  # the smallest shift first: it wins ties
        self.register_buffer("candidates", torch.tensor(candidates, dtype=torch.long), persistent=False)
        # The normal validation images' mean (set by the module at fit start); until then nothing is shifted.
        self.register_buffer("reference", torch.zeros(channels, image_size, image_size))
        self.register_buffer("ready", torch.tensor(False))

    def set_reference(self, mean_image: torch.Tensor) -> None:
        self.reference.copy_(mean_image.to(self.reference))
        self.ready.fill_(True)

    def reference_from(self, datamodule: Any, device: torch.device,
                       gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """Set the reference to the mean of the datamodule's normal validation images (``normal_mean_image``). The
        pass over their loader draws from the global RNG (its base seed): forked, so a registered run trains the
        weights it would train without registration."""
        with torch.random.fork_rng(devices=[]):
            self.set_reference(normal_mean_image(datamodule, device, gather))

    @torch.no_grad()
    def offsets(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, 2) shifts (dy, dx) that move each image's content onto the reference,
        judged on the interior that every candidate shift keeps."""
        r = self.max_shift
        padded = F.pad(images.float(), (r, r, r, r), mode="reflect")
        reference = self.reference[..., r:-r, r:-r]
        errors = torch.stack([(window(padded, int(dy), int(dx), r)[..., r:-r, r:-r] - reference).pow(2).mean((1, 2, 3))
                              for dy, dx in self.candidates])
        return self.candidates[errors.argmin(0)]

    def shift(self, images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Each image's content moved by its (dy, dx) (down and right for positive values; each within
        ``max_shift``), borders reflected. Written as a sum over the candidate shifts, each kept where it is the
        image's own, so that the ONNX graph of a registered model is the same computation."""
        r = self.max_shift
        padded = F.pad(images, (r, r, r, r), mode="reflect")
        shifted = torch.zeros_like(images)
        for dy, dx in self.candidates.tolist():
            own = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).to(images.dtype)[:, None, None, None]
            shifted = shifted + own * window(padded, dy, dx, r)
        return shifted


def window(padded: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """The (..., H, W) view of a tensor padded by ``pad`` on each side whose content is moved by (dy, dx)."""
    h, w = padded.shape[-2] - 2 * pad, padded.shape[-1] - 2 * pad
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def registered_forward(net: nn.Module, registration: ShiftRegistration | None, images: torch.Tensor) -> dict:
    """``net(images)``, with each image first shifted onto the registration's reference and its reconstruction
    shifted back (the other outputs stay in the shifted frame); ``net(images)`` itself without a ready one."""
    if registration is None or not bool(registration.ready):
        return net(images)
    offsets = registration.offsets(images)
    out = dict(net(registration.shift(images, offsets)))
    if out.get("reconstruction") is not None:
        out["reconstruction"] = registration.shift(out["reconstruction"], -offsets)
    return out


@torch.no_grad()
def normal_mean_image(datamodule: Any, device: torch.device,
                      gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """The mean (3, S, S) of the datamodule's held-out normal validation images over every DDP rank (``gather``:
    ``LightningModule.all_gather``): the registration's reference, from the images the thresholds come from."""
    total, count = None, 0
    for batch in datamodule.val_dataloader() if datamodule is not None else ():
        images = batch["image"].to(device).float()
        total = images.sum(0) if total is None else total + images.sum(0)
        count += len(images)
    if not count:
        raise ConfigError("registration needs a datamodule with normal validation images (data.val_fraction > 0): "
                          "its reference is their mean image")
    total = gather(total).reshape(-1, *total.shape).sum(0)
    return total / gather(torch.tensor(float(count), device=device)).sum()
