"""Video tensors: the one place that knows the layouts a clip goes through and converts between
them (after diffusers' ``VideoProcessor``, which alone owns pixel <-> tensor conversions there).

Layouts, named as in the einops patterns below:

- **frames**: a ComfyUI ``IMAGE`` batch ``[f, H, W, c]``, floats in 0..1 (``c`` 3, or 4 with alpha);
- **pixels**: ``[f, 3, H, W]`` in -1..1, frames in the batch (what the VAE and ControlNet take);
- **video**: ``[b, c, f, h, w]``, diffusers' video layout (what motion UNets and samplers use);
- **frame batch**: ``[(b f), c, h, w]``, every frame of every video in one batch (what a 2-D UNet,
  a ControlNet or the VAE runs on).

Working sizes follow one rule (:func:`size_multiple`): sides are multiples of the VAE factor
times the UNet's downsampling, the largest such size not above the input.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from .memory import run_in_chunks


# --------------------------------------------------------------------------------------------
# layouts

def frame_batch(video: torch.Tensor) -> torch.Tensor:
    """``[b, c, f, h, w]`` -> ``[(b f), c, h, w]``."""
    return rearrange(video, "b c f h w -> (b f) c h w")


def unframe_batch(flat: torch.Tensor, batch: int) -> torch.Tensor:
    """``[(b f), c, h, w]`` -> ``[b, c, f, h, w]`` for ``b = batch`` videos."""
    return rearrange(flat, "(b f) c h w -> b c f h w", b=batch)


def as_video(frames_first: torch.Tensor) -> torch.Tensor:
    """One clip's per-frame tensors ``[f, c, h, w]`` -> one video ``[1, c, f, h, w]``."""
    return rearrange(frames_first, "f c h w -> 1 c f h w")


def video_frames(video: torch.Tensor) -> torch.Tensor:
    """One video ``[1, c, f, h, w]`` -> its frames ``[f, c, h, w]``."""
    if video.shape[0] != 1:
        raise ValueError(f"video: expected one video [1, c, f, h, w], got shape {tuple(video.shape)}")
    return rearrange(video, "1 c f h w -> f c h w")


# --------------------------------------------------------------------------------------------
# frames <-> pixels, sizes

def latent_batch(latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """A video latent ``(1, C, F, h, w)`` in the sampler's scale -> ComfyUI's LATENT samples for
    SD 1.x: the raw VAE latents (divided by ``scaling_factor``; core scales inside its sampler)
    with the frames in the batch, ``(F, C, h, w)``, as core video latents for SD 1.x are."""
    return video_frames(latents.float().cpu()) / scaling_factor


def from_latent_batch(samples: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """ComfyUI LATENT samples ``(F, C, h, w)`` (raw VAE latents) -> the sampler's video latent
    ``(1, C, F, h, w)`` (:func:`latent_batch` undone)."""
    if samples.ndim != 4:
        raise ValueError(f"latent: expected LATENT samples [frames, channels, h, w], got shape {tuple(samples.shape)}")
    return as_video(samples.float()) * scaling_factor


def check_clip(frames: torch.Tensor, name: str = "frames") -> torch.Tensor:
    """Refuse anything but a ComfyUI IMAGE batch ``[f, H, W, 3|4]`` with at least one frame."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] not in (3, 4) \
            or frames.shape[0] < 1:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"{name}: expected an IMAGE batch [frames, height, width, 3] with at least one "
                         f"frame, got shape {shape}")
    return frames


def frames_to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[f, H, W, c]`` in 0..1 -> pixels ``[f, 3, H, W]`` in -1..1 (alpha dropped)."""
    check_clip(frames)
    return rearrange(frames[..., :3], "f h w c -> f c h w") * 2.0 - 1.0


def pixels_to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels ``[f, 3, H, W]`` in -1..1 -> IMAGE ``[f, H, W, 3]`` in 0..1 (clamped, float32, CPU)."""
    out = (pixels.float().clamp(-1, 1) + 1.0) / 2.0
    return rearrange(out, "f c h w -> f h w c").cpu().contiguous()


def size_multiple(vae_scale_factor: int, unet) -> int:
    """Pixel sides the UNet accepts are multiples of this: the VAE factor x 2^(levels - 1)."""
    return int(vae_scale_factor) * 2 ** (len(unet.config.block_out_channels) - 1)


def fit_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """The largest size <= (height, width) whose sides are multiples of ``multiple``."""
    h, w = (height // multiple) * multiple, (width // multiple) * multiple
    if h == 0 or w == 0:
        raise ValueError(f"frames: {height}x{width} is smaller than the model's minimum size "
                         f"{multiple}x{multiple}")
    return h, w


def resize_pixels(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixels resized to ``size`` (bilinear, antialiased); unchanged when already that size."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)


def prepare_frames(backbone, frames: torch.Tensor, device) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int]]:
    """Validate an IMAGE batch and bring it to the size the backbone's UNet accepts.

    Returns ``(pixels [f, 3, h, w] in -1..1 on device, (f, H, W) original, (h, w) working size)``."""
    check_clip(frames)
    F_, H, W, _ = frames.shape
    h, w = fit_size(H, W, size_multiple(backbone.vae_scale_factor, backbone.unet))
    pixels = resize_pixels(frames_to_pixels(frames.float()), (h, w)).to(device)
    return pixels, (F_, H, W), (h, w)


# --------------------------------------------------------------------------------------------
# pixels <-> latents

def _vae_dtype_device(vae) -> tuple[torch.dtype, torch.device]:
    p = next(vae.parameters())
    return p.dtype, p.device


@torch.no_grad()
def vae_encode(vae, pixels: torch.Tensor, scaling_factor: float, batch: int = 8) -> torch.Tensor:
    """Pixels ``[n, 3, H, W]`` (-1..1) -> latents ``[n, c, h, w]``: the posterior mean times the
    scaling factor (deterministic, as editing methods use for the source video). Frames go
    ``batch`` at a time, fewer when memory runs out (:func:`fdd.memory.run_in_chunks`)."""
    dtype, _ = _vae_dtype_device(vae)
    outs = run_in_chunks(lambda i, j: vae.encode(pixels[i:j].to(dtype)).latent_dist.mean,
                         len(pixels), batch, "VAE encode")
    return torch.cat(outs) * scaling_factor


@torch.no_grad()
def vae_decode(vae, latents: torch.Tensor, scaling_factor: float, batch: int = 8) -> torch.Tensor:
    """Latents ``[n, c, h, w]`` -> pixels ``[n, 3, H, W]`` (-1..1), ``batch`` frames at a time,
    fewer when memory runs out."""
    dtype, _ = _vae_dtype_device(vae)
    outs = run_in_chunks(lambda i, j: vae.decode((latents[i:j] / scaling_factor).to(dtype)).sample,
                         len(latents), batch, "VAE decode")
    return torch.cat(outs)


@torch.no_grad()
def encode_video(vae, pixels: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Pixels ``[f, 3, H, W]`` -> one video latent ``[1, c, f, h, w]`` (float32, on the VAE's device)."""
    dtype, device = _vae_dtype_device(vae)
    return as_video(vae_encode(vae, pixels.to(device=device, dtype=dtype), scaling_factor).float())


@torch.no_grad()
def decode_video(vae, latents: torch.Tensor, scaling_factor: float,
                 frame_indices: Iterable[int] | None = None) -> torch.Tensor:
    """One video latent ``[1, c, f, h, w]`` -> pixels ``[f, 3, H, W]`` in -1..1 (float32);
    ``frame_indices`` decodes only those frames."""
    dtype, _ = _vae_dtype_device(vae)
    flat = video_frames(latents)
    if frame_indices is not None:
        flat = flat[list(frame_indices)]
    return vae_decode(vae, flat.to(dtype), scaling_factor).float()


__all__: Sequence[str] = [
    "frame_batch", "unframe_batch", "as_video", "video_frames", "check_clip", "frames_to_pixels",
    "pixels_to_frames", "size_multiple", "fit_size", "resize_pixels", "prepare_frames", "vae_encode",
    "vae_decode", "encode_video", "decode_video"]
