"""Progress reporting and cancellation hooks shared by every long loop in the library.

A ``ProgressCallback`` is called once per step as ``callback(step, total, latents)``; it may
raise (ComfyUI's progress hook raises its interrupt exception) and the loop unwinds without
leaving partial results. ``should_cancel`` is polled every step; when it returns True the loop
raises :class:`Cancelled`. The step's latents are checked finite first
(:func:`fdd.numerics.require_finite`): a loop that met NaN / inf stops there with the step named.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..numerics import require_finite

ProgressCallback = Callable[[int, int, Optional[torch.Tensor]], None]
CancelCheck = Callable[[], bool]


class Cancelled(RuntimeError):
    """A long-running loop was asked to stop; nothing half-done is returned."""


def report(step: int, total: int, latents, callback: ProgressCallback | None,
           should_cancel: CancelCheck | None) -> None:
    if torch.is_tensor(latents):
        require_finite(latents, "the latents", step, total)
    if should_cancel is not None and should_cancel():
        raise Cancelled(f"cancelled at step {step}/{total}")
    if callback is not None:
        callback(step, total, latents)
