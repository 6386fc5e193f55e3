"""Checkpoints written before models were configured by ``_target_``: their config and state-dict keys are
converted on load, so eval, predict and export keep working on them.

Such a checkpoint's ``model`` node names a ``kind`` (vitmemad, cae, patchcore, vitmemad_feat) with flat settings,
its ``ablation`` node says which parts exist, and its state-dict keys start with ``model.`` instead of ``net.``.
"""
from __future__ import annotations

import copy
from typing import Any

RECONSTRUCTION = "vitmemad.models.ReconstructionModule"


def is_legacy(cfg: dict[str, Any]) -> bool:
    return "kind" in (cfg.get("model") or {})


def _vitmemad_net(m: dict[str, Any], image_size: int, ablation: dict[str, Any]) -> dict[str, Any]:
    enc, mem, ca = m["encoder"], m["memory"], m["coord_attention"]
    dim = enc["embed_dim"]
    return {
        "_target_": "vitmemad.models.ViTMemAE",
        "encoder": {"_target_": "vitmemad.models.ViTEncoder", "image_size": image_size, "patch_size": enc["patch_size"],
                    "embed_dim": dim, "depth": enc["depth"], "num_heads": enc["num_heads"],
                    "mlp_ratio": enc["mlp_ratio"]},
        "memory": _memory(mem, dim) if ablation.get("memory", True) else None,
        "coord_attention": _coord_attention(ca, dim) if ablation.get("coord_attention", True) else None,
        "decoder": {"_target_": "vitmemad.models.TransposedConvDecoder", "in_channels": dim,
                    "channels": list(m["decoder"]["channels"]), "patch_size": enc["patch_size"]},
    }


def _memory(mem: dict[str, Any], dim: int) -> dict[str, Any]:
    if float(mem.get("position_weight") or 0.0) > 0:
        raise ValueError("position-aware memory addressing (model.memory.position_weight > 0) is no longer supported")
    return {"_target_": "vitmemad.models.MemoryModule", "size": mem["size"], "dim": dim,
            "temperature": mem["temperature"], "addressing": mem["addressing"],
            "shrink_threshold": mem.get("shrink_threshold"), "init": mem.get("init", "random")}


def _coord_attention(ca: dict[str, Any], dim: int) -> dict[str, Any]:
    return {"_target_": "vitmemad.models.CoordinateAttention", "channels": dim, "reduction": ca["reduction"],
            "residual": bool(ca.get("residual", False))}


def _backbone(m: dict[str, Any]) -> dict[str, Any]:
    b = m["backbone"]
    return {"out_indices": list(b["out_indices"]), "local_size": b["local_size"],
            "equalize_layers": bool(b.get("equalize_layers", True))}


def _net(m: dict[str, Any], image_size: int, ablation: dict[str, Any]) -> dict[str, Any]:
    kind = m["kind"]
    if kind == "vitmemad":
        return _vitmemad_net(m, image_size, ablation)
    if kind == "cae":
        return {"_target_": "vitmemad.models.ConvAutoencoder", "image_size": image_size,
                "latent_dim": m["latent_dim"], "width": m["width"]}
    if kind == "patchcore":
        c = m["coreset"]
        return {"_target_": "vitmemad.models.PatchCore", **_backbone(m), "coreset_ratio": c["ratio"],
                "projection_dim": c.get("projection_dim"), "max_bank": c.get("max_bank"), "seed": c.get("seed", 0)}
    if kind == "vitmemad_feat":
        dim = m["encoder"]["embed_dim"]
        return {"_target_": "vitmemad.models.FeatureMemAE", **_backbone(m), "embed_dim": dim,
                "downsample": m["encoder"]["downsample"],
                "memory": _memory(m["memory"], dim) if ablation.get("memory", True) else None,
                "coord_attention": _coord_attention(m["coord_attention"], dim)
                if ablation.get("coord_attention", True) else None,
                "decoder_channels": list(m["decoder"]["channels"]), "image_size": image_size}
    raise ValueError(f"unknown model kind {kind!r} in an old checkpoint's config")


def convert_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """An old run config in the current layout (a new dict; ``cfg`` is not changed)."""
    cfg = copy.deepcopy(cfg)
    old = cfg["model"]
    fpr_limit = float((cfg.get("metrics") or {}).get("pro_fpr_limit", 0.3))
    anomaly_map = {"_target_": "vitmemad.models.AnomalyMapGenerator", **(cfg.get("anomaly_map") or {})}
    net = _net(old, int(cfg["data"]["image_size"]), cfg.get("ablation") or {})
    if old["kind"] == "patchcore":
        model = {"_target_": "vitmemad.models.PatchCoreModule", "net": net}
    else:
        opt = old["optimizer"]
        loss = {"_target_": "vitmemad.models.ReconstructionLoss", **(cfg.get("loss") or {})}
        corruption = cfg.get("corruption") or {}
        model = {
            "_target_": RECONSTRUCTION, "net": net, "loss": loss,
            "corruption": None if corruption.get("mode", "none") == "none" else
            {"_target_": "vitmemad.models.PatchSwap", **{k: v for k, v in corruption.items() if k != "mode"}},
            "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": opt["lr"],
                          "weight_decay": opt.get("weight_decay", 0.0)},
            "scheduler": {"_target_": "vitmemad.models.schedule.warmup_cosine", "_partial_": True,
                          "cosine": opt.get("scheduler") == "cosine", "warmup_epochs": opt.get("warmup_epochs", 0)},
        }
    model.update(anomaly_map=anomaly_map, pro_fpr_limit=fpr_limit)
    cfg["model"] = model
    cfg["anomaly_map"] = anomaly_map
    cfg.setdefault("trainer", {}).setdefault("max_epochs", old.get("epochs"))
    return cfg


def convert_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``model.*`` keys (the old name of the module's net) become ``net.*``."""
    return {("net." + k[len("model."):] if k.startswith("model.") else k): v for k, v in state_dict.items()}
