"""FDD's timestep sampling and losses (EVE §3.2, §3.3.1), one paper equation per function."""

from __future__ import annotations

import torch

from ..sampling import DDIMSchedule

# ------------------------------------------------------------------------------- timesteps


def kbin_timesteps(num_train_timesteps: int, k: int, generator: torch.Generator | None = None) -> list[int]:
    """K-bin diffusion sampling (EVE §3.3.1): the T training steps are split into k evenly sized
    bins of T/k steps and one step is drawn uniformly inside each bin, every iteration.

    Returns k descending timesteps; step i lies in bin i, counted from the noisy end:
    ``[T - (i+1) T/k, T - i T/k)`` (integer bin edges ``floor(T (k-i-1) / k)`` ..
    ``floor(T (k-i) / k) - 1``).
    """
    T = int(num_train_timesteps)
    if not 1 <= k <= T:
        raise ValueError(f"k_steps: expected 1..{T}, got {k}")
    out = []
    for i in range(k):
        lo, hi = (T * (k - i - 1)) // k, (T * (k - i)) // k  # bin i: [lo, hi)
        out.append(int(torch.randint(lo, hi, (1,), generator=generator)))
    return out


def uniform_timesteps(schedule: DDIMSchedule, k: int) -> list[int]:
    """The K-bin ablation of EVE Table 2 ("uniform timesteps"): the same k evenly spaced DDIM
    timesteps every iteration (what a k-step DDIM sampler uses)."""
    return schedule.timesteps(k)


def random_timesteps(num_train_timesteps: int, k: int, generator: torch.Generator | None = None) -> list[int]:
    """k distinct timesteps drawn uniformly from all T steps, sorted descending (an extra variant)."""
    perm = torch.randperm(int(num_train_timesteps), generator=generator)[:k]
    return sorted((int(t) for t in perm), reverse=True)


def student_timesteps(mode: str, schedule: DDIMSchedule, k: int, generator: torch.Generator | None) -> list[int]:
    if mode == "kbin":
        return kbin_timesteps(schedule.num_train_timesteps, k, generator)
    if mode == "uniform":
        return uniform_timesteps(schedule, k)
    if mode == "random":
        return random_timesteps(schedule.num_train_timesteps, k, generator)
    raise ValueError(f"timestep_sampling: unknown mode {mode!r}")


# --------------------------------------------------------------------------------------- SDS


def sds_weight(alpha_bar: torch.Tensor, weighting: str = "alpha") -> torch.Tensor:
    """The weighting c(t) of the SDS loss (EVE §3.2, Eq. 1), from ``alpha_bar_t``.

    - ``"alpha"`` (default): c(t) = sqrt(alpha_bar_t), the signal coefficient α_t of
      x_t = α_t x_0 + σ_t ε: ADD's exponential weighting (Sauer et al. 2023, §3.2), which FDD
      follows for λ and the hinge loss; it weights low-noise steps most;
    - ``"sigma2"``: c(t) = 1 - alpha_bar_t = σ_t², DreamFusion's w(t);
    - ``"constant"``: c(t) = 1.
    """
    if weighting == "alpha":
        return alpha_bar.sqrt()
    if weighting == "sigma2":
        return 1.0 - alpha_bar
    if weighting == "constant":
        return torch.ones_like(alpha_bar)
    raise ValueError(f"sds_weighting: unknown weighting {weighting!r}")


def sds_loss(x0: torch.Tensor, eps_hat: torch.Tensor, eps: torch.Tensor, c_t: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
    """Score Distillation Sampling loss, EVE §3.2 Eq. 1 (the first equation of the paper):

        L_SDS = E_{x'_0, t, ε} [ c(t) · sg(ε̂(x'_t, t) − ε) · x'_0 ]

    ``x0`` is the student's sample x'_0 (with gradient), ``eps_hat`` the frozen teacher's noise
    prediction on x'_t = sqrt(ᾱ_t) x'_0 + sqrt(1 − ᾱ_t) ε, ``eps`` the noise ε, ``c_t`` the
    weight per sample (broadcast from the batch dimension). The stop-gradient makes
    ∂L/∂x'_0 = c(t) · (ε̂ − ε) exactly with ``reduction="sum"``, divided by the number of
    elements with ``"mean"`` (the default, which keeps the loss on the scale of the hinge terms
    it is added to with λ).
    """
    grad = (eps_hat - eps).detach()
    c = c_t.reshape((-1,) + (1,) * (x0.dim() - 1)).to(x0.dtype)
    prod = c * grad.to(x0.dtype) * x0
    if reduction == "sum":
        return prod.sum()
    if reduction == "mean":
        return prod.mean()
    raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")


def sds_disagreement(eps_hat: torch.Tensor, eps: torch.Tensor, c_t: torch.Tensor) -> torch.Tensor:
    """mean c(t)·(ε̂ − ε)²: how far the teacher's denoising disagrees with the noise that made
    x'_t. The SDS loss value itself (Eq. 1) is a dot product with x'_0 whose level carries no
    meaning; this is the non-negative quantity SDS drives down (for a teacher whose x̂_0 lies at
    x'_0 it is zero), logged as ``sds_*_gap``."""
    c = c_t.reshape((-1,) + (1,) * (eps.dim() - 1)).to(eps.dtype)
    return (c * (eps_hat - eps) ** 2).mean()


# -------------------------------------------------------------------------------- adversarial


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of a discriminator, EVE §3.2 (the L_D-Edit / L_D-Video equations; Lim & Ye 2017):

        L_D = E_real[max(0, 1 − D(x_teacher))] + E_fake[max(0, 1 + D(x'_0))]

    Logits may be per token / position; the expectations average over every element."""
    return torch.relu(1.0 - real_logits).mean() + torch.relu(1.0 + fake_logits).mean()


def generator_hinge_loss(fake_logits: torch.Tensor, variant: str = "add") -> torch.Tensor:
    """The student's adversarial loss, EVE §3.2 (the L_G-Edit / L_G-Video equations).

    - ``"add"`` (default): −E[D(x'_0)], the generator hinge loss of Geometric GAN (Lim & Ye
      2017, the paper's ref. [21]) and of ADD, which FDD says it follows;
    - ``"paper"``: −E[max(0, 1 + D(x'_0))] as printed in EVE §3.2.

    Why ``"add"`` is the default: the printed form has zero gradient wherever D(x'_0) < −1,
    i.e. exactly for the student samples the discriminator rejects most confidently, so the
    student would stop learning from the adversarial term once the discriminator wins; the
    sentence around the equations says FDD uses ADD's hinge objective, whose generator term is
    −E[D]. The printed clamp reads as a copy of the discriminator's fake term.
    """
    if variant == "add":
        return -fake_logits.mean()
    if variant == "paper":
        return -torch.relu(1.0 + fake_logits).mean()
    raise ValueError(f"generator_loss: expected 'add' or 'paper', got {variant!r}")


def fdd_generator_loss(g_edit, sds_edit, g_video, sds_video, alpha: float = 0.5, beta: float = 0.5,
                       lam: float = 2.5) -> torch.Tensor:
    """The student objective, EVE §3.2 (L_G-FDD):

        L_G-FDD = α (L_G-Edit + λ L_SDS-Edit) + β (L_G-Video + λ L_SDS-Video)

    A term given as None is absent (phase 1 has no adversarial terms; the Table 2 ablations
    drop SDS or the discriminators)."""
    z = lambda v: 0.0 if v is None else v
    return alpha * (z(g_edit) + lam * z(sds_edit)) + beta * (z(g_video) + lam * z(sds_video))


def fdd_discriminator_loss(d_edit, d_video, alpha: float = 0.5, beta: float = 0.5) -> torch.Tensor:
    """The discriminators' objective, EVE §3.2 (L_D-FDD): L_D-FDD = α L_D-Edit + β L_D-Video."""
    return alpha * d_edit + beta * d_video
