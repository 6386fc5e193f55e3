"""Build the torch model named by the resolved config (model group + ablation group)."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from .cae import ConvAutoencoder
from .vitmemad import ViTMemAE

MODEL_KINDS = ("vitmemad", "cae", "patchcore", "vitmemad_feat")


def has_ablation(model_cfg: Mapping[str, Any]) -> bool:
    """Only the paper's models (pixel and feature space) have memory / coordinate-attention switches."""
    return model_cfg["kind"] in ("vitmemad", "vitmemad_feat")


def build_model(model_cfg: Mapping[str, Any], image_size: int, ablation: Mapping[str, Any]) -> nn.Module:
    """``ablation`` is the ablation group's node: ``{name, memory: bool, coord_attention: bool}``."""
    kind = model_cfg["kind"]
    if kind == "cae":
        return ConvAutoencoder(image_size, model_cfg["latent_dim"], model_cfg["width"])
    if kind == "patchcore":
        return _build_patchcore(model_cfg)
    if kind == "vitmemad_feat":
        return _build_feature_ae(model_cfg, image_size, ablation)
    if kind != "vitmemad":
        raise ValueError(f"model.kind must be one of {MODEL_KINDS}, got {kind!r}")
    enc = model_cfg["encoder"]
    return ViTMemAE(
        image_size=image_size,
        patch_size=enc["patch_size"],
        embed_dim=enc["embed_dim"],
        depth=enc["depth"],
        num_heads=enc["num_heads"],
        mlp_ratio=enc["mlp_ratio"],
        **_memory_and_ca_kwargs(model_cfg, ablation),
        memory_position_weight=_position_weight(model_cfg),
        memory_position_sigma=float(model_cfg["memory"].get("position_sigma", 1.0)),
        decoder_channels=tuple(model_cfg["decoder"]["channels"]),
    )


def _position_weight(model_cfg: Mapping[str, Any]) -> float:
    """``model.memory.position_weight`` (absent in configs older than the option: 0, the paper's addressing)."""
    return float(model_cfg["memory"].get("position_weight", 0.0) or 0.0)


def _memory_and_ca_kwargs(model_cfg: Mapping[str, Any], ablation: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's switchable parts, shared by the pixel (ViTMemAE) and feature-space (FeatureMemAE) models."""
    mem, ca = model_cfg["memory"], model_cfg["coord_attention"]
    return dict(
        use_memory=bool(ablation["memory"]),
        memory_size=mem["size"],
        memory_temperature=mem["temperature"],
        memory_addressing=mem["addressing"],
        memory_shrink_threshold=mem.get("shrink_threshold"),
        memory_init=mem.get("init", "random"),
        use_coord_attention=bool(ablation["coord_attention"]),
        ca_reduction=ca["reduction"],
        ca_residual=bool(ca.get("residual", False)),
    )


def _backbone_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The pretrained feature extractor's settings, shared by PatchCore and FeatureMemAE."""
    backbone = model_cfg["backbone"]
    return dict(
        out_indices=tuple(backbone["out_indices"]),
        local_size=int(backbone["local_size"]),
        equalize_layers=bool(backbone.get("equalize_layers", True)),
    )


def _build_patchcore(model_cfg: Mapping[str, Any]) -> nn.Module:
    from .patchcore import PatchCore  # needs the `pretrained` extra

    coreset = model_cfg["coreset"]
    return PatchCore(
        **_backbone_kwargs(model_cfg),
        coreset_ratio=float(coreset["ratio"]),
        projection_dim=coreset.get("projection_dim"),
        max_bank=coreset.get("max_bank"),
        seed=int(coreset.get("seed", 0)),
    )


def _build_feature_ae(model_cfg: Mapping[str, Any], image_size: int, ablation: Mapping[str, Any]) -> nn.Module:
    from .feature_ae import FeatureMemAE  # needs the `pretrained` extra

    if _position_weight(model_cfg) > 0:
        raise ValueError("model.memory.position_weight > 0 is only available for model kind 'vitmemad'")
    enc = model_cfg["encoder"]
    return FeatureMemAE(
        **_backbone_kwargs(model_cfg),
        embed_dim=int(enc["embed_dim"]),
        downsample=int(enc["downsample"]),
        **_memory_and_ca_kwargs(model_cfg, ablation),
        decoder_channels=tuple(model_cfg["decoder"]["channels"]),
        image_size=image_size,
    )
