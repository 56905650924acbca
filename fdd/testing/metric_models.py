"""Tiny random evaluation models written in their real on-disk formats (for tests and demos).

    fdd_metrics/clip/clip-vit-large-patch14/             transformers CLIP folder: config.json, model.safetensors,
                                            preprocessor_config.json, vocab.json, merges.txt, ...
                                            (the layout of ``openai/clip-vit-large-patch14``)
    fdd_metrics/pickscore/PickScore_v1/   the same CLIP folder format with other weights and a
                                            PickScore-like ``logit_scale`` (exp = 100), as
                                            ``yuvalkirstain/PickScore_v1`` + its CLIP-H processor
    fdd_metrics/viclip/ViCLIP-InternVid-10M-FLT/         ``ViClip-InternVid-10M-FLT.pth``: a weights-only pickle
                                            ``{"model": state_dict}`` with the reference's key names
                                            (``vision_encoder.*``, ``text_encoder.*``, ``temp``),
                                            plus the CLIP BPE tokenizer files (vocab.json, merges.txt)

The tiny CLIP towers keep the real 49408-token vocabulary so the character-level tokenizer of
:func:`fdd.testing.tiny.write_tiny_tokenizer` (and a real CLIP tokenizer) can drive them. Images
are 32x32 (patch 8) instead of 224x224; the ViCLIP tower keeps the reference's 8 frames.
"""

from __future__ import annotations

import math
import os
import shutil

import torch

from . import tiny

#: folder -> sub-folder name of each tiny model under a ``fdd_metrics`` model folder
METRIC_MODELS = {"clip": "clip-vit-large-patch14", "pickscore": "PickScore_v1", "viclip": "ViCLIP-InternVid-10M-FLT"}
VICLIP_FILE = "ViClip-InternVid-10M-FLT.pth"
IMAGE_SIZE = 32
WIDTH = 64


def tiny_clip_model(seed: int = 0, logit_scale: float | None = None):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed + 11)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tiny.CLIP_VOCAB, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=2,
                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8,
                           hidden_act="quick_gelu"),
        projection_dim=32,
    )
    model = CLIPModel(cfg).eval()
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(logit_scale))
    return model


def write_tiny_clip_folder(folder: str | os.PathLike, seed: int = 0, logit_scale: float | None = None) -> str:
    """A transformers CLIP folder (model + image processor + tokenizer) with random weights."""
    from transformers import CLIPImageProcessor

    folder = os.fspath(folder)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    tiny_clip_model(seed, logit_scale).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    tiny.write_tiny_tokenizer(folder)
    return folder


def tiny_viclip_state_dict(seed: int = 0, width: int = WIDTH, layers: int = 2, patch: int = 8,
                           image_size: int = IMAGE_SIZE, frames: int = 8, embed_dim: int = 32,
                           text_width: int = WIDTH, text_layers: int = 2, context: int = 32) -> dict:
    """Random weights in the key layout of InternVid's ``ViClip-InternVid-10M-FLT.pth``
    (built through :class:`fdd.metrics.viclip.ViCLIP`, whose parameter names follow the reference)."""
    from ..metrics.viclip import ViCLIP, ViCLIPConfig

    torch.manual_seed(seed + 13)
    cfg = ViCLIPConfig(vision_width=width, vision_layers=layers, vision_heads=max(1, width // 64),
                       patch_size=patch, image_size=image_size, num_frames=frames, kernel_size=1,
                       embed_dim=embed_dim, text_width=text_width, text_layers=text_layers,
                       text_heads=max(1, text_width // 64), context_length=context,
                       vocab_size=tiny.CLIP_VOCAB)
    model = ViCLIP(cfg)
    g = torch.Generator().manual_seed(seed + 14)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # the reference zero-initialises the temporal embedding; make it matter in tests
            if name.endswith("temporal_positional_embedding") or name.endswith("proj") or \
                    name.endswith("projection"):
                p.copy_(torch.randn(p.shape, generator=g) * (p.shape[0] ** -0.5 if p.ndim == 2 else 0.1))
    return model.state_dict()


def write_tiny_viclip_folder(folder: str | os.PathLike, seed: int = 0) -> str:
    folder = os.fspath(folder)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    torch.save({"model": tiny_viclip_state_dict(seed)}, os.path.join(folder, VICLIP_FILE))
    tiny.write_tiny_tokenizer(folder)
    return folder


def write_metric_models(root: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Write the three tiny metric models under ``root`` (a ``fdd_metrics`` model folder):
    ``root/clip/clip-vit-large-patch14``, ``root/pickscore/PickScore_v1``, ``root/viclip/ViCLIP-InternVid-10M-FLT``.
    Returns their paths by kind."""
    root = os.fspath(root)
    paths = {k: os.path.join(root, k, n) for k, n in METRIC_MODELS.items()}
    write_tiny_clip_folder(paths["clip"], seed)
    write_tiny_clip_folder(paths["pickscore"], seed + 100, logit_scale=100.0)
    write_tiny_viclip_folder(paths["viclip"], seed)
    return paths
