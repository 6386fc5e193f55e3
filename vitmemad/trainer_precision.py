"""``trainer.precision`` on CPUs: bf16 where the CPU has bf16 instructions, fp32 with one log line where not.

Lightning's ``bf16-mixed`` runs on any CPU, but without ``avx512_bf16`` or AMX the bf16 kernels are emulated
and slower than fp32: a preset that asks for bf16 would then only lose speed and precision. Whether a CPU has
them is read from ``torch.cpu.get_capabilities()``, never from a list of CPU names. GPUs are Lightning's to
check (``trainer=gpu`` keeps bf16-mixed).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("vitmemad")

#: CPU features with native bf16 matmuls (AVX-512 BF16 dot products, AMX tiles).
BF16_FEATURES = ("avx512_bf16", "amx_bf16")
FP32 = "32-true"
#: the precisions a run on CPU offers (``trainer.precision``, predict's ``precision``)
PRECISIONS = (FP32, "bf16-mixed")


def is_bf16(precision: Any) -> bool:
    """``bf16-mixed``, ``bf16-true``, ``bf16``: a forward pass under bfloat16."""
    return str(precision).startswith("bf16")


def cpu_bf16_features() -> list[str]:
    """Those of BF16_FEATURES this CPU has, by ``torch.cpu.get_capabilities()`` ([] where torch cannot say)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    capabilities = get() if get is not None else {}
    return [feature for feature in BF16_FEATURES if capabilities.get(feature)]


def cpu_bf16_supported() -> bool:
    """True when this CPU computes bf16 matmuls natively."""
    return bool(cpu_bf16_features())


def runs_on_cpu(accelerator: Any) -> bool:
    accelerator = str(accelerator or "auto").lower()
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def resolve(precision: Any, accelerator: Any = "cpu") -> Any:
    """The precision to hand Lightning: ``precision`` itself, or fp32 for bf16 on a CPU without bf16."""
    if not is_bf16(precision) or not runs_on_cpu(accelerator) or cpu_bf16_supported():
        return precision
    log.warning("trainer.precision=%s: this CPU has none of %s (torch.cpu.get_capabilities()), "
                "so the run uses trainer.precision=%s", precision, "/".join(BF16_FEATURES), FP32)
    return FP32


def resolve_trainer(trainer_cfg: Any) -> None:
    """Set ``trainer_cfg.precision`` (a config node, in place) to what this machine can run."""
    if trainer_cfg is not None and trainer_cfg.get("precision") is not None:
        trainer_cfg.precision = resolve(trainer_cfg.precision, trainer_cfg.get("accelerator", "auto"))
