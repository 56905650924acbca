"""No run reports success on non-finite numbers: one check, used at every step of every sampler,
optimiser and trainer, that stops the run at the first NaN / inf with the step, the quantity and
the usual causes in the message."""

from __future__ import annotations

import math

import torch

#: the usual causes, per kind of loop
SAMPLING_CAUSES = ("a guidance scale or strength far too large, fp16 overflow in the UNet (run it in "
                   "bf16 or fp32), or a non-finite input")
OPTIMISATION_CAUSES = ("a learning rate too large (the run diverged), fp16 overflow (run in bf16 or fp32), "
                       "or a non-finite input")


class NonFiniteError(FloatingPointError):
    """A run met NaN or inf; nothing after that point was kept."""


def require_finite(value, quantity: str, step: int | None = None, total: int | None = None,
                   causes: str = SAMPLING_CAUSES) -> None:
    """Raise :class:`NonFiniteError` when ``value`` (tensor or number) holds NaN or inf."""
    if value is None:
        return
    finite = bool(torch.isfinite(value).all()) if torch.is_tensor(value) else math.isfinite(float(value))
    if finite:
        return
    where = "" if step is None else (f" at step {step}" + (f"/{total}" if total else ""))
    raise NonFiniteError(f"{quantity} became non-finite (NaN or inf){where}; likely causes: {causes}. "
                         f"The run was stopped; nothing from this step on was kept.")
