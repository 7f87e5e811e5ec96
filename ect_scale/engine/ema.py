"""EMAs of the fp32 master weights, sharded exactly like the optimizer's partitions (no gather per step).

* Power-function EMA (EDM2 Sec. 3.1, App. C): theta_hat_gamma(t) = (gamma+1)/t^(gamma+1) int_0^t tau^gamma theta(tau)
dtau,
  tracked incrementally with beta(t) = (1 - Delta t / t)^(gamma+1) (EDM2 Eq. 127), t = images seen after the step.
  gamma comes from sigma_rel by the largest real root of gamma^3 + 7 gamma^2 + (16 - sigma^-2) gamma + (12 - sigma^-2)
  = 0
  (EDM2 Eq. 123 inverted, Algorithm 2).
* Traditional EMA with a constant per-step beta (ECT keeps one at 0.9999); internal profiles (CD's target network
  theta-, Song et al. 2023 Eq. 8) are constant-beta EMAs too.
The EMAs restart when tuning starts (ECT's ImageNet code creates them after loading the pretrained net), so the
first update (beta = 0) copies the weights. Updates are `torch._foreach_lerp_` over whole flat partitions.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ect_scale.config import EMAConfig
from ect_scale.engine.master import MasterWeights


def std_to_exp(std: float) -> float:
    """gamma for a relative standard deviation sigma_rel (EDM2 Algorithm 2)."""
    tmp = std**-2.0
    roots = np.roots([1.0, 7.0, 16.0 - tmp, 12.0 - tmp])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def exp_to_std(exp: float) -> float:
    """sigma_rel = sqrt((gamma+1) / ((gamma+2)^2 (gamma+3))) (EDM2 Eq. 123)."""
    return float(np.sqrt((exp + 1) / ((exp + 2) ** 2 * (exp + 3))))


def power_beta(std: float, nimg_after: int, batch_size: int) -> float:
    """beta = (1 - batch / nimg)^(gamma + 1) (EDM2 Eq. 127), with time measured in images."""
    return (1.0 - batch_size / nimg_after) ** (std_to_exp(std) + 1.0)


class EMATracker:
    """All EMA profiles of a run, each a list of fp32 tensors with the layout of this rank's master partitions."""

    def __init__(self, cfg: EMAConfig, master: MasterWeights, internal: Sequence[str] = ()):
        """`internal`: extra constant-beta profiles named "<role>-<beta>" (e.g. consistency distillation's target
        network "target-0.95"), updated, checkpointed and re-sliced like the others but not exported."""
        self.cfg = cfg
        self.master = master
        self.profiles: list[str] = [f"power-{s:.3f}" for s in cfg.stds]
        if cfg.beta is not None:
            self.profiles.append(f"beta-{cfg.beta:g}")
        self.exported: list[str] = list(self.profiles)  # What EMA exports, evaluations and summaries show.
        self.profiles += list(internal)
        self.shadows: dict[str, list[torch.Tensor]] = {}
        self.nimg = 0
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Start every EMA at the current master weights."""
        flats = self.master.flats()
        self.shadows = {name: [f.detach().clone().view(-1) for f in flats] for name in self.profiles}

    def _beta(self, name: str, nimg_after: int, batch_size: int) -> float:
        kind, value = name.split("-", 1)
        if kind == "power":
            return power_beta(float(value), nimg_after, batch_size)
        return float(value)

    @torch.no_grad()
    def update(self, nimg_after: int, batch_size: int) -> None:
        """Fold in the weights after an applied optimizer step (`nimg_after` = images seen after it)."""
        flats = [f.view(-1) for f in self.master.flats()]
        for name, shadow in self.shadows.items():
            beta = self._beta(name, nimg_after, batch_size)
            torch._foreach_lerp_(shadow, flats, 1.0 - beta)
        self.nimg = nimg_after

    # ------------------------------------------------------------------ export
    def full_state(
        self, name: str, module: torch.nn.Module, param_shapes: Optional[dict] = None, dst_device="cpu"
    ) -> dict[str, torch.Tensor]:
        """A world-size-independent fp32 state dict of one EMA (collective: every rank must call it)."""
        state = self.master.gather(sources=self.shadows[name], dst_device=dst_device)
        if param_shapes:
            state = {n: t.reshape(param_shapes[n]) for n, t in state.items()}
        for n, b in module.named_buffers():
            state[n] = b.detach().to(dst_device).clone()
        return state

    @torch.no_grad()
    def load_full_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Slice a consolidated EMA into this rank's partitions (elastic restart at another world size)."""
        self.master.scatter_(state, targets=self.shadows[name])

    # ------------------------------------------------------------------ checkpointing (this rank's shards)
    def state_dict(self) -> dict:
        return {
            "profiles": list(self.profiles),
            "nimg": self.nimg,
            "shadows": {k: [t.detach().cpu().clone() for t in v] for k, v in self.shadows.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if list(state["profiles"]) != self.profiles:
            raise ValueError(
                f"EMA profiles in the checkpoint {state['profiles']} differ from ema.* {self.profiles}. "
                "Fix: resume with the same ema.stds and ema.beta"
            )
        for name, tensors in state["shadows"].items():
            mine = self.shadows[name]
            if [t.numel() for t in tensors] != [t.numel() for t in mine]:
                raise ValueError(
                    "EMA shard layout differs from this rank's partitions (another world size?). "
                    "Fix: restore from the consolidated EMA files instead (elastic restart)"
                )
            for dst, src in zip(mine, tensors):
                dst.copy_(src.to(dst.device))
        self.nimg = int(state["nimg"])
