"""DDIM (Song et al., 2021) sampling and inversion over image or video latents.

Latents may be ``(B, C, H, W)`` or video ``(B, C, F, H, W)``: every function here is
elementwise in the latent, so the frame axis needs no special handling.

The noise schedule is SD 1.x's "scaled_linear" schedule (betas linear in sqrt-space between
``beta_start`` and ``beta_end`` over ``num_train_timesteps``), inferred from nothing but these
three numbers; the inference timesteps use SD's "leading" spacing with ``steps_offset = 1`` and
``set_alpha_to_one = False`` (the final step lands on alpha_bar[0]), as diffusers'
``DDIMScheduler`` does for SD 1.x checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .control import CancelCheck, ProgressCallback, report

#: ``eps_fn(latents, t) -> predicted noise``; ``t`` is an int timestep on the training scale
EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class DDIMSchedule:
    """Discrete DDPM noise schedule plus DDIM timestep selection."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    steps_offset: int = 1
    set_alpha_to_one: bool = False

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64 for accuracy."""
        T = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, T, dtype=torch.float64) ** 2
        elif self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        else:
            raise ValueError(f"beta_schedule: unknown schedule {self.beta_schedule!r}; expected "
                             "'scaled_linear' or 'linear'")
        return torch.cumprod(1.0 - betas, dim=0)

    def alpha_bar(self, t: int) -> float:
        """alpha_bar at timestep t; t < 0 means 'before the first step' (the final DDIM target)."""
        if t < 0:
            return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])
        return float(self.alphas_cumprod[t])

    def timesteps(self, num_steps: int) -> list[int]:
        """Descending DDIM timesteps with "leading" spacing: ``k * (T // n) + offset``."""
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"steps: expected 1..{self.num_train_timesteps}, got {num_steps}")
        ratio = self.num_train_timesteps // num_steps
        ts = [k * ratio + self.steps_offset for k in range(num_steps)]
        ts = [min(t, self.num_train_timesteps - 1) for t in ts]
        return ts[::-1]

    def previous(self, t: int, num_steps: int) -> int:
        return t - self.num_train_timesteps // num_steps


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
    """DDIM Eq. 9 (Song et al. 2021): x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    return (x_t - (1.0 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t ** 0.5


def add_noise(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
    """Forward process q(x_t | x_0) (DDPM Eq. 4): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    return alpha_bar_t ** 0.5 * x0 + (1.0 - alpha_bar_t) ** 0.5 * eps


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float) -> torch.Tensor:
    """Deterministic DDIM update (eta = 0), Song et al. 2021 Eq. 12 with sigma = 0:

    x_prev = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev) * eps, with x0_hat from :func:`predict_x0`.
    """
    x0 = predict_x0(x_t, eps, alpha_bar_t)
    return alpha_bar_prev ** 0.5 * x0 + (1.0 - alpha_bar_prev) ** 0.5 * eps


def ddim_inversion_step(x_prev: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: float,
                        alpha_bar_t: float) -> torch.Tensor:
    """DDIM inversion (Song et al. 2021 §4.3, Eq. 13 read backwards): the same ODE step run from
    the less noisy timestep to the noisier one, using eps predicted at the less noisy point
    (the usual first-order approximation eps(x_t, t) ~ eps(x_prev, t_prev))."""
    x0 = predict_x0(x_prev, eps, alpha_bar_prev)
    return alpha_bar_t ** 0.5 * x0 + (1.0 - alpha_bar_t) ** 0.5 * eps


def ddim_sample(eps_fn: EpsFn, latents: torch.Tensor, schedule: DDIMSchedule, num_steps: int, *,
                start_step: int = 0, callback: ProgressCallback | None = None,
                should_cancel: CancelCheck | None = None) -> torch.Tensor:
    """Run DDIM from ``latents`` (noise at the first timestep) down to x_0.

    ``start_step`` skips the first steps (SDEdit-style partial denoising: ``latents`` must then
    be noised to ``schedule.timesteps(num_steps)[start_step]``). The callback gets
    ``(step_index + 1, total, latents)`` after each step.
    """
    ts = schedule.timesteps(num_steps)[start_step:]
    x = latents
    total = len(ts)
    for i, t in enumerate(ts):
        eps = eps_fn(x, t)
        x = ddim_step(x, eps, schedule.alpha_bar(t), schedule.alpha_bar(schedule.previous(t, num_steps)))
        report(i + 1, total, x, callback, should_cancel)
    return x


def ddim_invert(eps_fn: EpsFn, latents: torch.Tensor, schedule: DDIMSchedule, num_steps: int, *,
                end_step: int | None = None, callback: ProgressCallback | None = None,
                should_cancel: CancelCheck | None = None,
                return_trajectory: bool = False):
    """DDIM inversion: map clean ``latents`` x_0 to the noise x_T that :func:`ddim_sample` with
    the same ``eps_fn`` and ``num_steps`` maps back to (approximately) x_0.

    Walks the ascending timesteps; each step uses eps predicted at the current (less noisy)
    latent and timestep. ``end_step`` stops early (for partial inversion). With
    ``return_trajectory`` the list of intermediate latents (x_0 first) is returned too.
    """
    ts = schedule.timesteps(num_steps)[::-1]
    if end_step is not None:
        ts = ts[:end_step]
    x = latents
    traj = [x]
    total = len(ts)
    for i, t in enumerate(ts):
        # eps(x_t, t) is unknown before x_t exists; as Tune-A-Video and null-text inversion do,
        # evaluate the model at the current (less noisy) latent with the target timestep t.
        eps = eps_fn(x, t)
        t_prev = schedule.previous(t, num_steps)
        x = ddim_inversion_step(x, eps, schedule.alpha_bar(t_prev), schedule.alpha_bar(t))
        traj.append(x)
        report(i + 1, total, x, callback, should_cancel)
    return (x, traj) if return_trajectory else x
