"""EI² end to end on a loaded SD 1.x backbone: build the inflated model (with the backbone's
LoRAs merged into its private copy), tune it on a video, edit a video with it.

These are the functions the ComfyUI nodes call; they work as well from a script::

    bb = load_sd1("v1-5-pruned-emaonly.safetensors", tokenizer=...)
    model, result, frames8 = ei2_tune(bb, InflationConfig(), frames, "a man is surfing", TuneConfig())
    edited = ei2_edit(bb, model, frames8, "a panda is surfing")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..pipelines.common import encode_prompts
from ..video import pixels_to_frames
from ..sampling.control import CancelCheck, ProgressCallback
from .config import InflationConfig
from ..video import decode_video, encode_video, size_multiple
from .edit import EditConfig, ei2_edit_latents, prepare_pixels, resize_back, select_frames
from .inflate import InflatedUNet, inflate_unet, load_tuned_state
from .tune import TuneConfig, TuneResult, tune_one_shot


def build_model(backbone, config: InflationConfig, *, loras: Sequence = (), tuned: Mapping[str, torch.Tensor] | None = None,
                device=None, dtype: torch.dtype = torch.float32, source: str | None = None) -> InflatedUNet:
    """Inflate a private copy of ``backbone.unet`` (see :func:`fdd.ei2.inflate.inflate_unet`), merge
    the backbone's UNet LoRAs (a :class:`~fdd.models.lora.LoraStack` or ``(LoraWeights, strength)``
    pairs) into the copy, then load the tuned tensors if given. The merge is permanent because the
    copy is what EI² tunes and keeps: the tuned tensors are learnt on top of the LoRA'd weights
    (EI² §4.1 tunes the model it edits with). The cached backbone is never modified."""
    from ..models.lora import LoraStack

    with torch.inference_mode(False):
        model = inflate_unet(backbone.unet, config, dtype=dtype)
        if device is not None:
            model.to(device)
        if loras:
            LoraStack.of(loras).unet_only().merge_into(model.unet)
        if tuned is not None:
            load_tuned_state(model, tuned, source)
    return model


def encode_text(backbone, prompts: Sequence[str], loras: Sequence = (), device=None) -> torch.Tensor:
    """CLIP embeddings of ``prompts`` with the backbone's text-encoder LoRAs applied for the call
    (patched in place and restored bit-exactly, as the other samplers of the pack do)."""
    te = backbone.text_encoder
    device = device or next(te.parameters()).device
    from ..models.lora import LoraStack

    with LoraStack.of(loras).text_only().patch(text_encoder=te):
        return encode_prompts(backbone.tokenizer, te, list(prompts), device)


def prepare_video(backbone, frames: torch.Tensor, *, num_frames: int = 8, stride: int = 1, start: int = 0,
                  size: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the frames (§5: 8), resize them to a size the UNet accepts (longer side ``size``,
    0 = as given) and encode them. Returns (IMAGE frames used ``[n, h, w, 3]``, pixels
    ``[n, 3, h, w]`` in −1..1, latents ``(1, C, n, h/f, w/f)``)."""
    chosen = select_frames(frames, num_frames, stride, start)
    pixels = prepare_pixels(chosen, size_multiple(backbone.vae_scale_factor, backbone.unet), size)
    with torch.no_grad():
        latents = encode_video(backbone.vae, pixels, backbone.scaling_factor)
    return pixels_to_frames(pixels), pixels, latents


def ei2_tune(backbone, config: InflationConfig, frames: torch.Tensor, caption: str,
             tune_config: TuneConfig | None = None, *, loras: Sequence = (),
             tuned: Mapping[str, torch.Tensor] | None = None, num_frames: int = 8, stride: int = 1,
             start: int = 0, size: int = 0, device=None, checkpoint_path: str | None = None,
             resume: bool = False, callback: ProgressCallback | None = None,
             should_cancel: CancelCheck | None = None) -> tuple[InflatedUNet, TuneResult, torch.Tensor]:
    """One-shot tuning of EI² on a video (§4.1 Fig. 2a, §5): encode the chosen frames and the
    caption, build the inflated model (starting from ``tuned`` tensors if given), tune it.
    Returns the tuned model, the tuning result (loss history) and the frames it was tuned on
    (edit those). The model trains in float32 on ``device`` (default: the VAE's device) with
    mixed precision as ``tune_config`` says."""
    tune_config = (tune_config or TuneConfig()).validate()
    device = torch.device(device) if device is not None else next(backbone.vae.parameters()).device
    used, _, latents = prepare_video(backbone, frames, num_frames=num_frames, stride=stride, start=start, size=size)
    emb = encode_text(backbone, [caption], loras)
    model = build_model(backbone, config, loras=loras, tuned=tuned, device=device)
    result = tune_one_shot(model, latents.to(device), emb.to(device), tune_config,
                           checkpoint_path=checkpoint_path, resume=resume, callback=callback,
                           should_cancel=should_cancel)
    return model, result, used


@torch.no_grad()
def ei2_edit(backbone, model: InflatedUNet, frames: torch.Tensor, edit_prompt: str, *,
             inversion_prompt: str = "", negative_prompt: str = "", config: EditConfig | None = None,
             loras: Sequence = (), size: int = 0, callback: ProgressCallback | None = None,
             should_cancel: CancelCheck | None = None, return_latents: bool = False):
    """Edit ``frames`` (IMAGE ``[n, H, W, 3]``, ideally the frames the model was tuned on) with
    ``edit_prompt``: DDIM inversion with ``inversion_prompt`` (Tune-A-Video: empty), then DDIM
    sampling with classifier-free guidance against ``negative_prompt``. Returns IMAGE frames of
    the input's size (and the final latents ``(1, C, n, h, w)`` with ``return_latents``)."""
    cfg = (config or EditConfig()).validate()
    _, H, W, _ = frames.shape
    pixels = prepare_pixels(frames, size_multiple(backbone.vae_scale_factor, model.unet), size)
    device = model.device
    latents = encode_video(backbone.vae, pixels, backbone.scaling_factor).to(device)
    embs = encode_text(backbone, [edit_prompt, negative_prompt, inversion_prompt], loras)
    edit_emb, uncond_emb, inv_emb = (e.unsqueeze(0).to(device) for e in embs)
    out = ei2_edit_latents(model, latents, edit_emb, uncond_emb, inv_emb, cfg, callback=callback,
                           should_cancel=should_cancel)
    vae_dev = next(backbone.vae.parameters()).device
    pix = decode_video(backbone.vae, out.to(vae_dev), backbone.scaling_factor)
    frames_out = pixels_to_frames(resize_back(pix, (H, W)))
    return (frames_out, out) if return_latents else frames_out
