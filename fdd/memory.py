"""Running within the accelerator's memory: recognise an out-of-memory error, give cached
blocks back, and retry per-item work in smaller chunks."""

from __future__ import annotations

import torch


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator out-of-memory error (CUDA, or another backend's)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def release_cached_memory() -> None:
    """Give the allocator's cached blocks back after an out-of-memory error, before retrying."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_in_chunks(fn, n: int, batch: int, what: str) -> list:
    """``[fn(i, j) for consecutive (i, j) chunks of range(n)]`` of at most ``batch`` items; on an
    out-of-memory error the chunk size is halved and the failed chunk retried (down to one item,
    after which the error is raised with ``what`` named). Results do not depend on the chunking
    for per-item work such as VAE encode / decode."""
    outs, i, size = [], 0, max(1, int(batch))
    while i < n:
        j = min(n, i + size)
        try:
            outs.append(fn(i, j))
        except Exception as exc:  # noqa: BLE001 (only OOM is retried)
            if not is_out_of_memory(exc):
                raise
            release_cached_memory()
            if size == 1:
                raise RuntimeError(f"{what}: out of memory even one frame at a time ({exc})") from exc
            size = max(1, size // 2)
            continue
        i = j
    return outs


class Placed:
    """Mixin for a wrapper around one main module: its ``device`` and ``dtype`` are those of the
    weights of the attribute named by ``placed_on`` (a module, or a property giving one)."""

    placed_on = "unet"

    @property
    def device(self) -> torch.device:
        return next(getattr(self, self.placed_on).parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(getattr(self, self.placed_on).parameters()).dtype
