"""Builders of tiny, randomly initialised diffusers / transformers modules in SD 1.x layout.

The sizes are the smallest that keep every structural feature real SD 1.x files have
(GroupNorm(32), cross-attention, a down block without attention, CLIP text tower with the
real 49408-token vocabulary so ComfyUI's bundled SD1 tokenizer can drive it), so the
loaders infer their configs exactly as they do for a 4 GB file.

Pixel -> latent downsampling is 4 (three VAE blocks) instead of SD's 8 to keep frames small;
the ControlNet hint encoder downsamples by the same factor.
"""

from __future__ import annotations

import json
import os

import torch

#: SD 1.x CLIP vocabulary size (ComfyUI's bundled tokenizer produces ids up to 49407)
CLIP_VOCAB = 49408
CROSS_DIM = 64
UNET_CHANNELS = (32, 64)
VAE_CHANNELS = (32, 32, 64)
HINT_CHANNELS = (16, 32, 32)
#: SD 1.x uses 8 heads in every UNet / motion-module attention layer
HEADS = 8


def tiny_unet_config() -> dict:
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=CROSS_DIM,
        attention_head_dim=HEADS,
        norm_num_groups=32,
    )


def tiny_unet(seed: int = 0, in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    cfg = tiny_unet_config()
    cfg["in_channels"] = in_channels
    return UNet2DConditionModel(**cfg).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    n = len(VAE_CHANNELS)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1, norm_num_groups=32, sample_size=64,
        scaling_factor=0.18215,
    ).eval()


def tiny_text_encoder(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 2)
    cfg = CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=CROSS_DIM, intermediate_size=4 * CROSS_DIM,
        num_hidden_layers=2, num_attention_heads=CROSS_DIM // 64, max_position_embeddings=77,
        hidden_act="quick_gelu", projection_dim=CROSS_DIM,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(cfg).eval()


def tiny_controlnet(unet=None, seed: int = 0):
    """A ControlNet initialised from the tiny UNet (as ControlNet training does), then perturbed
    so its zero convolutions are not zero and the adapter visibly changes the output."""
    from diffusers import ControlNetModel

    unet = unet if unet is not None else tiny_unet(seed)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    g = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if "controlnet_" in name or "conv_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return cn.eval()


def tiny_motion_adapter(seed: int = 0, mid_block: bool = True, max_seq_length: int = 32):
    """AnimateDiff motion adapter matching the tiny UNet. ``mid_block`` False gives the v1
    layout (no mid-block motion module), True the v2 / v3 layout. The zero-initialised
    output projections are perturbed so the modules are not the identity."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed + 4)
    ad = MotionAdapter(
        block_out_channels=UNET_CHANNELS, motion_layers_per_block=1,
        motion_mid_block_layers_per_block=1, motion_num_attention_heads=HEADS,
        motion_norm_num_groups=32, motion_max_seq_length=max_seq_length,
        use_motion_mid_block=mid_block,
    )
    g = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():
        for name, p in ad.named_parameters():
            if "proj_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return ad.eval()


def tiny_unet3d(seed: int = 0):
    """A tiny ModelScope-style text-to-video UNet3DConditionModel."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed + 6)
    return UNet3DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=UNET_CHANNELS, layers_per_block=1, norm_num_groups=32,
        cross_attention_dim=CROSS_DIM, attention_head_dim=HEADS,
    ).eval()


def write_tiny_tokenizer(folder: str | os.PathLike) -> str:
    """Write a character-level CLIP BPE tokenizer folder (vocab.json + merges.txt, no merges).

    Its ids (< 514 plus the two special tokens at 49406/49407) are valid for the tiny text
    encoder and for the real SD 1.x one; it stands in for ComfyUI's ``comfy/sd1_tokenizer``
    outside ComfyUI.
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    from ..metrics.viclip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = 49406
    vocab["<|endoftext|>"] = 49407
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as fh:
        json.dump(special, fh)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as fh:
        json.dump({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer", **special}, fh)
    return folder
