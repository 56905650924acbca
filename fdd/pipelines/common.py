"""Shared conversions: prompts to embeddings, frames to latents and back."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], device=None) -> torch.Tensor:
    """SD 1.x text conditioning: CLIP tokens padded / truncated to the encoder's 77 positions,
    the last hidden state (after the final layer norm) as ``encoder_hidden_states``."""
    if tokenizer is None:
        raise ValueError("tokenizer: the backbone has no tokenizer; load it with a tokenizer folder "
                         "(outside ComfyUI) or run inside ComfyUI, which provides comfy/sd1_tokenizer")
    device = device or next(text_encoder.parameters()).device
    max_len = getattr(text_encoder.config, "max_position_embeddings", 77)
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    vocab = text_encoder.config.vocab_size
    if int(ids.max()) >= vocab:
        raise ValueError(f"tokenizer: produced token id {int(ids.max())} but the text encoder has only "
                         f"{vocab} tokens; the tokenizer does not belong to this model")
    return text_encoder(ids)[0]


def frames_to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[F, H, W, C]`` in 0..1 -> ``[F, C, H, W]`` in -1..1 (RGB; alpha dropped)."""
    if frames.dim() != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"frames: expected an IMAGE batch [frames, height, width, 3], got shape "
                         f"{tuple(frames.shape)}")
    return frames[..., :3].permute(0, 3, 1, 2) * 2.0 - 1.0


def pixels_to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """``[F, C, H, W]`` in -1..1 -> ComfyUI IMAGE ``[F, H, W, C]`` in 0..1 (clamped, float32, CPU)."""
    return ((pixels.float().clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1).cpu().contiguous()


def fit_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """The largest size <= (height, width) whose sides are multiples of ``multiple``."""
    h, w = (height // multiple) * multiple, (width // multiple) * multiple
    if h == 0 or w == 0:
        raise ValueError(f"frames: {height}x{width} is smaller than the model's minimum size "
                         f"{multiple}x{multiple}")
    return h, w


def resize_pixels(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)


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


@torch.no_grad()
def vae_encode(vae, pixels: torch.Tensor, scaling_factor: float, batch: int = 8) -> torch.Tensor:
    """Pixels ``[N, 3, H, W]`` (-1..1) -> latents ``[N, C, h, w]``: the posterior mean times the
    scaling factor (deterministic, as editing methods use for the source video). Frames go
    ``batch`` at a time, fewer when memory runs out (:func:`run_in_chunks`)."""
    dtype = next(vae.parameters()).dtype
    outs = run_in_chunks(lambda i, j: vae.encode(pixels[i:j].to(dtype)).latent_dist.mean,
                         len(pixels), batch, "VAE encode")
    return torch.cat(outs) * scaling_factor


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor, scaling_factor: float, batch: int = 8) -> torch.Tensor:
    """Latents ``[N, C, h, w]`` -> pixels ``[N, 3, H, W]`` (-1..1), ``batch`` frames at a time,
    fewer when memory runs out (:func:`run_in_chunks`)."""
    dtype = next(vae.parameters()).dtype
    outs = run_in_chunks(lambda i, j: vae.decode((latents[i:j] / scaling_factor).to(dtype)).sample,
                         len(latents), batch, "VAE decode")
    return torch.cat(outs)


def prepare_frames(backbone, frames: torch.Tensor, device) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int]]:
    """Validate an IMAGE batch and bring it to the size the backbone's UNet accepts.

    Returns ``(pixels [F, 3, h, w] in -1..1 on device, (F, H, W) original, (h, w) working size)``;
    the working size is the largest <= the input whose sides are multiples of the VAE factor
    times the UNet's downsampling."""
    if frames.dim() != 4 or frames.shape[-1] not in (3, 4) or frames.shape[0] < 1:
        raise ValueError(f"frames: expected an IMAGE batch [frames, height, width, 3] with at least "
                         f"one frame, got shape {tuple(frames.shape)}")
    F_, H, W, _ = frames.shape
    levels = len(backbone.unet.config.block_out_channels)
    h, w = fit_size(H, W, backbone.vae_scale_factor * 2 ** (levels - 1))
    pixels = resize_pixels(frames_to_pixels(frames.float()), (h, w)).to(device)
    return pixels, (F_, H, W), (h, w)
