"""FDD's discriminators (EVE §3.2, §3.3.2): frozen DINOv2 features with trainable heads.

- :func:`load_dinov2` reads a transformers ``Dinov2Model`` folder (``config.json`` +
  ``model.safetensors``, e.g. the files of ``facebook/dinov2-small``) offline. Both key
  layouts load: the hub files' ``attention.attention.query/key/value`` + ``attention.output.dense``
  and transformers 5's ``attention.q_proj/k_proj/v_proj/o_proj``, whichever the installed
  transformers builds; the load is strict.
- :class:`DinoFeatures`: pixels (-1..1) -> ImageNet normalisation -> resize -> patch tokens of
  a few blocks (ADD takes blocks 2, 5, 8, 11 of ViT-S); frozen, but differentiable w.r.t. the
  pixels so the student gets the adversarial gradient.
- :class:`EditDiscriminator` D_e (input frame, instruction, output frame): per feature block a
  projection of the output frame's tokens, a text projection of the instruction, and the extra
  image projection of the input frame FDD adds; the conditions are combined with one
  cross-attention layer (output tokens attend to [text; input-frame tokens]); per-token logits
  with a projection-discriminator term.
- :class:`VideoDiscriminator` D_v (video, caption): per block a projection of each frame's
  tokens, ONE temporal self-attention layer over the frames at every spatial position
  ("applied per pixel"), a text projection of the caption; per-token-per-frame logits.
- :class:`DiffAugment`: DiffAugment-style colour / translation / cutout with kornia, the same
  transform on every frame of a clip (and on the input and output frame of an edit pair).
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

from ..models.errors import ModelLoadError
from ..models.state_dict import read_state_dict

_DINO_EXPECTED = "a DINOv2 transformers folder (config.json + model.safetensors, e.g. facebook/dinov2-small)"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_OLD_TO_NEW = ((".attention.attention.query.", ".attention.q_proj."),
               (".attention.attention.key.", ".attention.k_proj."),
               (".attention.attention.value.", ".attention.v_proj."),
               (".attention.output.dense.", ".attention.o_proj."))


def _fit_dino_keys(sd: dict, model_keys: set) -> dict:
    """Rename between the hub layout and transformers 5's, towards what ``model_keys`` uses."""
    sd = {(k.removeprefix("dinov2.")): v for k, v in sd.items()}
    wants_new = any(".attention.q_proj." in k for k in model_keys)
    out = {}
    for k, v in sd.items():
        for old, new in _OLD_TO_NEW:
            k = k.replace(old, new) if wants_new else k.replace(new, old)
        out[k] = v
    return out


def load_dinov2(folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a frozen ``Dinov2Model`` from a local transformers folder (strict, offline)."""
    from transformers import Dinov2Config, Dinov2Model

    from ..models.state_dict import key_mismatch_report

    folder = os.fspath(folder)
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise ModelLoadError(folder, "no config.json in the folder.", _DINO_EXPECTED)
    with open(cfg_path, encoding="utf-8") as fh:
        raw = json.load(fh)
    if raw.get("model_type") not in ("dinov2", "dinov2_with_registers"):
        raise ModelLoadError(folder, f"config.json says model_type {raw.get('model_type')!r}, not dinov2.",
                             _DINO_EXPECTED)
    if raw.get("model_type") == "dinov2_with_registers":
        from transformers import Dinov2WithRegistersConfig as Cfg
        from transformers import Dinov2WithRegistersModel as Model
    else:
        Cfg, Model = Dinov2Config, Dinov2Model
    weights = next((os.path.join(folder, n) for n in ("model.safetensors", "pytorch_model.bin")
                    if os.path.isfile(os.path.join(folder, n))), None)
    if weights is None:
        raise ModelLoadError(folder, "no model.safetensors / pytorch_model.bin in the folder.", _DINO_EXPECTED)
    config = Cfg.from_dict({k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
    model = Model(config)
    sd = _fit_dino_keys(read_state_dict(weights), set(model.state_dict()))
    problem = key_mismatch_report(model.state_dict(), sd)
    if problem:
        raise ModelLoadError(weights, f"the DINOv2 weights do not fit its config.json: {problem}.", _DINO_EXPECTED)
    model.load_state_dict(sd, strict=True)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pre = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(pre):
        with open(pre, encoding="utf-8") as fh:
            p = json.load(fh)
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    model = model.to(dtype).eval().requires_grad_(False)
    model.fdd_norm = (mean, std)
    return model


class DinoFeatures(nn.Module):
    """Frozen DINOv2 patch tokens of selected blocks for pixels in -1..1 ``[N, 3, H, W]``.

    ``layers`` are block indices (0-based); None picks 4 evenly spaced blocks ending at the last
    (ViT-S/14's 12 blocks -> 2, 5, 8, 11 as in ADD), or all when there are fewer. Images are
    resized (bilinear, differentiable) to ``resolution`` rounded to the patch size.
    """

    def __init__(self, dino: nn.Module, layers=None, resolution: int = 224):
        super().__init__()
        self.dino = dino
        cfg = dino.config
        n = cfg.num_hidden_layers
        if layers is None:
            m = min(4, n)
            layers = sorted({round((i + 1) * n / m) - 1 for i in range(m)})
        bad = [i for i in layers if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"dino_layers: {bad} out of range for a DINOv2 with {n} blocks")
        self.layers = [int(i) for i in layers]
        p = cfg.patch_size
        self.resolution = max(p, (int(resolution) // p) * p)
        self.skip = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        mean, std = getattr(dino, "fdd_norm", (IMAGENET_MEAN, IMAGENET_STD))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.dino.config.hidden_size)

    @property
    def num_tokens(self) -> int:
        return (self.resolution // self.dino.config.patch_size) ** 2

    def train(self, mode: bool = True):
        super().train(mode)
        self.dino.eval()  # always frozen
        return self

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        x = (pixels.float() + 1.0) / 2.0
        if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                                          align_corners=False)
        x = (x - self.mean) / self.std
        out = self.dino(pixel_values=x.to(next(self.dino.parameters()).dtype), output_hidden_states=True)
        hs = out.hidden_states  # embeddings + one per block
        return [hs[i + 1][:, self.skip:].float() for i in self.layers]


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.LeakyReLU(0.2), nn.Linear(2 * dim, dim))


class _EditHead(nn.Module):
    def __init__(self, feat_dim: int, text_dim: int, dim: int, heads: int):
        super().__init__()
        self.out_proj = nn.Sequential(nn.LayerNorm(feat_dim), nn.Linear(feat_dim, dim), nn.LeakyReLU(0.2))
        self.img_proj = nn.Sequential(nn.LayerNorm(feat_dim), nn.Linear(feat_dim, dim), nn.LeakyReLU(0.2))
        self.text_proj = nn.Linear(text_dim, dim)
        self.norm_q = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = _mlp(dim)
        self.logit = nn.Linear(dim, 1)
        self.cond_map = nn.Linear(2 * dim, dim)

    def forward(self, f_out, f_in, text):
        h = self.out_proj(f_out)                       # output-frame ("noisy image") projection
        img = self.img_proj(f_in)                      # FDD's extra input-image projection
        txt = self.text_proj(text).unsqueeze(1)        # instruction projection
        cond = torch.cat([txt, img], dim=1)
        h = h + self.attn(self.norm_q(h), cond, cond, need_weights=False)[0]  # the attention layer
        h = h + self.mlp(h)
        c = self.cond_map(torch.cat([txt[:, 0], img.mean(1)], dim=-1))
        return self.logit(h).squeeze(-1) + (h * c.unsqueeze(1)).sum(-1) / math.sqrt(h.shape[-1])


class EditDiscriminator(nn.Module):
    """D_e: logits ``[N, tokens * blocks]`` for (input frame, instruction, output frame)."""

    def __init__(self, feat_dim: int, num_layers: int, text_dim: int, dim: int = 128, heads: int = 4):
        super().__init__()
        self.heads = nn.ModuleList(_EditHead(feat_dim, text_dim, dim, heads) for _ in range(num_layers))

    def forward(self, feats_out: list, feats_in: list, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([hd(fo, fi, text) for hd, fo, fi in zip(self.heads, feats_out, feats_in)], dim=1)


class _VideoHead(nn.Module):
    def __init__(self, feat_dim: int, text_dim: int, dim: int, heads: int, max_frames: int = 64):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(feat_dim), nn.Linear(feat_dim, dim), nn.LeakyReLU(0.2))
        self.pos = nn.Parameter(torch.zeros(1, max_frames, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.norm_t = nn.LayerNorm(dim)
        self.temporal = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = _mlp(dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.logit = nn.Linear(dim, 1)

    def forward(self, f, frames: int, text):
        BF, N, _ = f.shape
        B = BF // frames
        if frames > self.pos.shape[1]:
            raise ValueError(f"the video discriminator handles at most {self.pos.shape[1]} frames, got {frames}")
        h = self.proj(f).view(B, frames, N, -1).permute(0, 2, 1, 3).reshape(B * N, frames, -1)
        h = h + self.pos[:, :frames]
        q = self.norm_t(h)
        h = h + self.temporal(q, q, q, need_weights=False)[0]  # one temporal layer, per position
        h = h.reshape(B, N * frames, -1)
        h = h + self.mlp(h)
        c = self.text_proj(text)
        return self.logit(h).squeeze(-1) + (h * c.unsqueeze(1)).sum(-1) / math.sqrt(h.shape[-1])


class VideoDiscriminator(nn.Module):
    """D_v: logits ``[B, positions * frames * blocks]`` for (video, caption)."""

    def __init__(self, feat_dim: int, num_layers: int, text_dim: int, dim: int = 128, heads: int = 4):
        super().__init__()
        self.heads = nn.ModuleList(_VideoHead(feat_dim, text_dim, dim, heads) for _ in range(num_layers))

    def forward(self, feats: list, frames: int, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([hd(f, frames, text) for hd, f in zip(self.heads, feats)], dim=1)


class DiffAugment(nn.Module):
    """DiffAugment (Zhao et al. 2020) with kornia: brightness / saturation / contrast jitter,
    translation by up to 1/8 of the size, and cutout, differentiable w.r.t. the pixels; one
    draw of parameters per clip, applied to all its frames. Input / output ``[B, T, 3, H, W]``
    in -1..1. Uses torch's global RNG (the trainer seeds it per sample)."""

    def __init__(self):
        super().__init__()
        import kornia.augmentation as K

        self.aug = K.VideoSequential(
            K.ColorJiggle(brightness=0.25, contrast=0.25, saturation=0.25, p=1.0),
            K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="reflection", p=1.0),
            K.RandomErasing(scale=(0.06, 0.25), ratio=(0.5, 2.0), value=0.5, p=0.5),
            data_format="BTCHW", same_on_frame=True)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = ((video.float() + 1.0) / 2.0).clamp(0, 1)
        return self.aug(x) * 2.0 - 1.0
