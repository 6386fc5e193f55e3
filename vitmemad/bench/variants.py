"""What the bench times: a preset's module with its own Adam and a fixed batch, in fp32 or under bf16 autocast,
and the variants it is compared with (Base, an NCHW-fed decoder, torch.compile)."""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Iterator, Sequence

import torch
from torch.profiler import record_function

from .measure import interleaved_best

#: preset -> (config overrides, batch, timing rounds). vitmemad_real is the model of experiment=cpu_real, at its
#: batch; a few steps suffice for the paper preset on a CPU.
PRESETS: dict[str, tuple[tuple[str, ...], int, int]] = {
    "vitmemad_cpu": (("model=vitmemad_cpu",), 16, 5),
    "vitmemad_paper": (("model=vitmemad_paper",), 2, 3),
    "vitmemad_real": (("experiment=cpu_real",), 8, 5),
}


def preset_config(model: str, ablation: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    from vitmemad.config import compose, to_plain

    cfg = compose("train", [*PRESETS[model][0], f"ablation={ablation}", *overrides])
    cfg.paths.output_dir = "/tmp/unused"
    return to_plain(cfg)


def preset_module(model: str, ablation: str, overrides: Sequence[str] = ()) -> torch.nn.Module:
    from vitmemad.build import build_module

    return build_module(preset_config(model, ablation, overrides)["model"])


def loss_terms(module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The training loss terms of a batch rebuilt from itself (no corruption); the loss inside a ``bench::loss``
    scope, so that the step profile can tell its ops from the model's."""
    out = module.net(x)
    with record_function("bench::loss"):
        return module.loss.terms(x, out)


def autocast(bf16: bool) -> torch.autocast:
    """What Lightning's ``bf16-mixed`` does on a CPU: bf16 autocast, fp32 weights (off for fp32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


class Variant:
    """A module with its own optimiser, a fixed batch and the callables that are timed. ``bf16``: the forward pass
    and the loss run under bf16 autocast, the backward pass and Adam's update outside it (as Lightning does)."""

    def __init__(self, module: torch.nn.Module, x: torch.Tensor, bf16: bool = False,
                 opt: torch.optim.Optimizer | None = None) -> None:
        self.module, self.x, self.bf16 = module, x, bf16
        self.opt = opt or torch.optim.Adam(module.parameters(), lr=1e-4)
        self.last_loss = float("nan")

    def in_precision(self, bf16: bool) -> "Variant":
        """The same module and optimiser, stepped in the other precision (no copy: the memory stays one model's)."""
        return Variant(self.module, self.x, bf16, self.opt)

    def twin(self, bf16: bool | None = None) -> "Variant":
        """A deep copy with the same weights and optimiser state (in the other precision, if asked)."""
        other = Variant(copy.deepcopy(self.module), self.x, self.bf16 if bf16 is None else bf16)
        other.opt.load_state_dict(self.opt.state_dict())
        return other

    def train_step(self) -> None:
        self.module.train()
        with autocast(self.bf16):
            terms = loss_terms(self.module, self.x)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        self.last_loss = float(terms["loss"].detach())

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[torch.nn.Module]:
        """The module in eval mode, under inference mode and this variant's autocast."""
        self.module.eval()
        with torch.inference_mode(), autocast(self.bf16):
            yield self.module

    def forward(self) -> None:
        with self.evaluating() as module:
            module.net(self.x)

    def reconstruction(self) -> torch.Tensor:
        with self.evaluating() as module:
            return module.net(self.x)["reconstruction"].float()

    def infer(self) -> None:
        with self.evaluating() as module:
            module.score(self.x)


def fused_attention_report(model: torch.nn.Module) -> dict[str, Any]:
    from timm.layers import use_fused_attn

    flags = [bool(m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    return {"timm_use_fused_attn": bool(use_fused_attn()), "attention_modules": len(flags),
            "fused": sum(flags), "all_fused": bool(flags) and all(flags)}


def nchw_decoder(variant: Variant) -> Variant:
    """The decoder fed an NCHW-contiguous feature map: the ViT's own map is channels_last (a reshape of the
    (B, N, D) tokens), so the decoder's convolutions already run in that layout; this is the alternative."""
    variant.module.net.decoder.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(),))
    return variant


def compile_figures(eager: Variant, rounds: int) -> dict[str, Any]:
    """torch.compile of the model (as the ``compile`` key does) on the training step, against eager, in the
    eager variant's precision. A failure is recorded, not raised."""
    compiled = eager.twin()
    res: dict[str, Any] = {"precision": "bf16" if eager.bf16 else "fp32"}
    try:
        compiled.module.net.compile()  # in place, as vitmemad.train applies `compile: true`
        start = time.perf_counter()
        compiled.train_step()  # compiles forward and backward
        res["first_step_s"] = time.perf_counter() - start
        eager.train_step()  # same weights and state before this step: the losses should agree
        res["first_step_loss_abs_diff"] = abs(compiled.last_loss - eager.last_loss)
        compiled.train_step()  # a BatchNorm/eval switch may still recompile: keep it out of the timing
        eager.train_step()
        t = interleaved_best({"eager": eager.train_step, "compiled": compiled.train_step}, rounds)
        res.update(ok=True, eager_step_s=t["eager"], compiled_step_s=t["compiled"],
                   compiled_over_eager_train_step=t["compiled"] / t["eager"],
                   compile_s=res["first_step_s"] - t["compiled"])
    except Exception as exc:  # noqa: BLE001 - the reason is the figure
        res.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:800]}")
    return res
