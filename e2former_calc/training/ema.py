"""An exponential moving average of the weights, used for validation and the final potential."""

from __future__ import annotations

import torch


class ExponentialMovingAverage:
    """``w_ema <- d_t w_ema + (1 - d_t) w`` after each step, with ``d_t = min(decay, (1 + t) / (10 + t))``
    so that the average forgets the random initial weights within the first steps."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.steps = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.steps = float(state["decay"]), int(state["steps"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
