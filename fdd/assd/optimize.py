"""The ASSD optimiser: zero-shot video editing by optimising the video latent directly
(paper: ASSD, Method section; Eq. numbers refer to it).

One step (:meth:`ASSDOptimizer.step`):

1. draw one timestep t ~ U[t_min, t_max) and one noise eps ~ N(0, I) shared by both branches
   (Eq. 1 for both: Z^_t from the source latent, Z_t from the edited latent Z(phi));
2. one batched call of the video UNet on ``[ref_uncond, ref_cond, edit_uncond, edit_cond]``
   (the reference branch on Z^_t with the source prompt, the editing branch on Z_t with the target
   prompt, each with its unconditional twin for classifier-free guidance w); with attention
   fusion on, the editing elements' last spatial self-attention layers mix in their reference
   twins' keys / values (Eq. 11-13);
3. the update direction: Video DDS (Eq. 5), or ASSD (Eq. 6-8: smoothing of the reference
   prediction along frames where the adaptive mask says so);
4. with joint guidance, an SD 1.x image model adds DDS gradients on keyframes (Eq. 9-10), one
   batched UNet2D call on the keyframes of both branches;
5. SGD on the latent: z <- z - lr * (loss_scale / (h * w)) * grad (see
   :func:`fdd.assd.gradients.dds_update_scale` for this DDS scaling).

No gradient flows through any UNet (score distillation), so everything runs under
``torch.no_grad`` / ``torch.inference_mode`` and no activation memory is kept.

Defaults follow the paper where it gives values (SGD, lr 0.1, 200 steps; gamma_i 0.67;
lambda 0.8) and the DDS reference implementation it builds on elsewhere (t in [50, 950),
w = 7.5, loss scale 2000 / (h * w)). tau, the number of fused layers and the keyframe stride are
not given in the paper: see :class:`ASSDConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..video import (as_video, check_clip, decode_video, encode_video, fit_size, frames_to_pixels, pixels_to_frames,
                     resize_pixels, video_frames)
from ..params import param
from ..sampling import add_noise, classifier_free_guidance
from ..sampling.control import CancelCheck, ProgressCallback, report
from .attention import AttentionFusion
from .gradients import (MASK_CHANNEL_MODES, SMOOTH_BOUNDARIES, adaptive_mask, assd_gradient,
                        dds_update_scale, image_dds_gradient, joint_gradient, keyframe_indices, sgd_step,
                        sliding_window_smooth, video_dds_gradient)
from .models import ASSDModels

#: the ablation rows of the paper's Fig. 4, as switch settings
ABLATIONS = {
    "dds": dict(smoothing=False, mask=False, attention_fusion=False, joint_guidance=False),
    "assd": dict(smoothing=True, mask=True, attention_fusion=False, joint_guidance=False),
    "assd+fusion": dict(smoothing=True, mask=True, attention_fusion=True, joint_guidance=False),
    "full": dict(smoothing=True, mask=True, attention_fusion=True, joint_guidance=True),
}


@dataclass
class ASSDConfig:
    """Settings of one ASSD run. Every component the paper ablates (Fig. 4) has a switch:
    ``smoothing`` + ``mask`` (ASSD itself, Eq. 6-8; both off = Video DDS, Eq. 5),
    ``attention_fusion`` (Eq. 11-13) and ``joint_guidance`` (Eq. 9-10). See :data:`ABLATIONS`.

    Optimisation: ``steps`` (200) SGD steps of learning rate ``lr`` (0.1) on the latent, the
    gradient scaled by ``loss_scale / (h * w)`` (DDS: 2000; ``normalize_by_area`` False drops
    the division). ``guidance_scale`` is w of the video prior (both branches),
    ``image_guidance_scale`` that of the image model; t is uniform in [``t_min``, ``t_max``)
    (DDS: 50, 950). ``seed`` fixes t and eps of every step.

    ASSD: ``center_weight`` gamma_i of Eq. 6 (0.67; neighbours (1 - gamma_i) / 2 each),
    ``smooth_boundary`` what the first / last frame do (see
    :func:`~fdd.assd.gradients.sliding_window_smooth`). ``tau`` of Eq. 7 (not given in the paper;
    0.2 is our default, on the scale of guided noise differences at w = 7.5), ``mask_channels``
    and ``mask_invert`` (see :func:`~fdd.assd.gradients.adaptive_mask`). ``mask`` off with
    ``smoothing`` on smooths everywhere (m = 1).

    Joint guidance: keyframes ``keyframe_offset, +keyframe_stride, ...`` (stride 4: frames 0, 4,
    8, 12 of 16); ``image_weight`` scales the image term (1 = Eq. 10's plain sum).

    Fusion: lambda = ``fusion_lambda`` (0.8) on the last ``fusion_layers`` spatial self-attention
    layers (3: the last up block of ModelScope / Zeroscope / SD 1.x, at full latent resolution).

    ``batch_branches`` (default True) runs the four branches as one UNet batch; False makes
    separate calls (same result; for memory-bound cases and for the bench).
    """

    steps: int = param(200, "SGD steps on the latent (paper: 200). Each step is one batched video UNet call (and "
                            "one image UNet call with joint guidance).", min=1, max=10000)
    lr: float = param(0.1, "SGD learning rate (paper: 0.1). The gradient is scaled as in DDS: loss_scale / (latent "
                           "height x width).", min=0.0, max=100.0, step=0.001)
    guidance_scale: float = param(7.5, "Classifier-free guidance w of the video prior, on both branches. 1 skips "
                                       "the unconditional branches.", min=0.0, max=30.0, step=0.1, input_name="cfg")
    image_guidance_scale: float = param(7.5, "Classifier-free guidance of the image model in the joint guidance.",
                                        min=0.0, max=30.0, step=0.1, input_name="image_cfg")
    t_min: int = param(50, "Smallest timestep drawn each step (DDS: 50).", min=0, max=999)
    t_max: int = param(950, "Timesteps are drawn below this (DDS: 950).", min=1, max=1000)
    loss_scale: float = param(2000.0, "DDS loss scale: the update is lr x loss_scale / (h x w) x gradient, h x w "
                                      "the latent frame size (DDS reference code: 2000).", min=0.0, max=1e6, step=1.0)
    normalize_by_area: bool = True
    seed: int = param(0, "Seed of the timesteps and noises of all steps; the same seed gives the same result.",
                      min=0, max=0xFFFFFFFFFFFFFFFF, seed=True)
    negative_prompt: str = param("", "Text of the unconditional branches of classifier-free guidance.",
                                 multiline=True)
    smoothing: bool = param(True, "ASSD sliding-window smoothing of the reference prediction along frames (Eq. 6). "
                                  "Off together with 'mask': plain Video DDS (Eq. 5).")
    center_weight: float = param(0.67, "gamma_i of Eq. 6, the current frame's weight (paper: 0.67); the two "
                                       "neighbours share the rest equally.", min=0.0, max=1.0, step=0.01)
    smooth_boundary: str = param("renormalize", "First / last frame, which miss a neighbour: 'renormalize' rescales "
                                                "the two remaining weights to sum 1, 'replicate' repeats the frame, "
                                                "'reflect' uses the other neighbour twice.", options=SMOOTH_BOUNDARIES)
    mask: bool = param(True, "Adaptive mask (Eq. 7): smooth only where |eps_edit - eps_ref| is below its maximum "
                             "over frames minus tau; elsewhere plain DDS (Eq. 8). Off with smoothing on: smooth "
                             "everywhere.")
    tau: float = param(0.2, "tau of Eq. 7 (not given in the paper). Larger: fewer positions smoothed.", min=0.0,
                       max=100.0, step=0.01)
    mask_channels: str = param("elementwise", "'elementwise': Eq. 7 per latent element; 'mean': one mask per pixel "
                                              "from the channel-averaged difference.", options=MASK_CHANNEL_MODES)
    mask_invert: bool = param(False, "Swap the mask's 0 and 1 (smooth where the difference is near its temporal "
                                     "peak). Off follows Eq. 7 as written.")
    joint_guidance: bool = param(True, "Image-based joint guidance (Eq. 9-10): the backbone (SD 1.x) adds DDS "
                                       "gradients on keyframes. Needs 'backbone'.")
    keyframe_stride: int = param(4, "Joint guidance on every n-th frame (0, n, 2n, ...).", min=1, max=1024)
    keyframe_offset: int = 0
    image_weight: float = param(1.0, "Weight of the image gradient in the sum of Eq. 10 (paper: 1).", min=0.0,
                                max=10.0, step=0.05)
    attention_fusion: bool = param(True, "Weighted attention fusion (Eq. 11-13) in the editing branch's last "
                                         "spatial self-attention layers; temporal attention untouched.")
    fusion_lambda: float = param(0.8, "lambda of Eq. 13 (paper: 0.8): 0 plain self-attention, 1 all reference "
                                      "attention. Larger keeps more of the source, edits less.", min=0.0, max=1.0,
                                 step=0.01)
    fusion_layers: int = param(3, "How many of the last spatial self-attention layers fuse (3 = the last up block "
                                  "of ModelScope / Zeroscope / SD 1.x).", min=1, max=64)
    batch_branches: bool = True

    @classmethod
    def ablation(cls, stage: str, **overrides) -> "ASSDConfig":
        """The config of one row of the paper's Fig. 4: ``"dds"``, ``"assd"``,
        ``"assd+fusion"`` or ``"full"``."""
        if stage not in ABLATIONS:
            raise ValueError(f"stage: expected one of {list(ABLATIONS)}, got {stage!r}")
        return cls(**{**ABLATIONS[stage], **overrides})

    def validate(self, num_frames: int | None = None) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if self.lr < 0:
            raise ValueError(f"lr: expected >= 0, got {self.lr}")
        if not 0 <= self.t_min < self.t_max <= 1000:
            raise ValueError(f"t_min / t_max: expected 0 <= t_min < t_max <= 1000, got {self.t_min}, {self.t_max}")
        if self.guidance_scale < 0 or self.image_guidance_scale < 0:
            raise ValueError("cfg / image_cfg: expected non-negative guidance scales")
        if not 0.0 <= self.center_weight <= 1.0:
            raise ValueError(f"center_weight: expected 0..1, got {self.center_weight}")
        if self.smooth_boundary not in SMOOTH_BOUNDARIES:
            raise ValueError(f"smooth_boundary: expected one of {SMOOTH_BOUNDARIES}, got {self.smooth_boundary!r}")
        if self.mask_channels not in MASK_CHANNEL_MODES:
            raise ValueError(f"mask_channels: expected one of {MASK_CHANNEL_MODES}, got {self.mask_channels!r}")
        if self.tau < 0:
            raise ValueError(f"tau: expected >= 0, got {self.tau}")
        if not 0.0 <= self.fusion_lambda <= 1.0:
            raise ValueError(f"fusion_lambda: expected 0..1, got {self.fusion_lambda}")
        if self.fusion_layers < 1:
            raise ValueError(f"fusion_layers: expected >= 1, got {self.fusion_layers}")
        if self.keyframe_stride < 1:
            raise ValueError(f"keyframe_stride: expected >= 1, got {self.keyframe_stride}")
        if num_frames is not None and self.joint_guidance and not 0 <= self.keyframe_offset < num_frames:
            raise ValueError(f"keyframe_offset: expected 0 <= offset < {num_frames} frames, got {self.keyframe_offset}")


class ASSDOptimizer:
    """Optimises a video latent ``(1, C, F, h, w)`` from ``source_latent`` towards
    ``target_prompt``. Use as a context manager (installs / removes the attention-fusion
    processors) or call :meth:`run`, which does that itself.

    ``z`` is the edited latent Z(phi), updated in place by :meth:`step`; ``z_src`` stays fixed.
    """

    def __init__(self, models: ASSDModels, source_latent: torch.Tensor, source_prompt: str,
                 target_prompt: str, config: ASSDConfig | None = None):
        cfg = config or ASSDConfig()
        if source_latent.dim() != 5 or source_latent.shape[0] != 1:
            raise ValueError(f"source_latent: expected (1, C, F, h, w), got {tuple(source_latent.shape)}")
        F_ = source_latent.shape[2]
        cfg.validate(F_)
        if cfg.joint_guidance and models.image is None:
            raise ValueError("joint_guidance: needs an image model (an SD 1.x backbone); connect one or "
                             "turn joint guidance off")
        self.models, self.cfg = models, cfg
        self.device = models.video.device
        self.z_src = source_latent.to(self.device, torch.float32)
        self.z = self.z_src.clone()
        self.frames = F_
        self.branches = (["ref_cond", "edit_cond"] if cfg.guidance_scale == 1.0 else
                         ["ref_uncond", "ref_cond", "edit_uncond", "edit_cond"])
        prompts = {"uncond": cfg.negative_prompt, "ref": source_prompt, "edit": target_prompt}
        v = models.video
        emb = v.encode_text([prompts["uncond"], prompts["ref"], prompts["edit"]], self.device)
        self.video_text = {"uncond": emb[0:1], "ref": emb[1:2], "edit": emb[2:3]}
        self.keyframes: list[int] = []
        if cfg.joint_guidance:
            self.keyframes = keyframe_indices(F_, cfg.keyframe_stride, cfg.keyframe_offset)
            im = models.image
            iemb = im.encode_text([prompts["uncond"], prompts["ref"], prompts["edit"]], self.device)
            self.image_text = {"uncond": iemb[0:1], "ref": iemb[1:2], "edit": iemb[2:3]}
        self.scale = dds_update_scale(cfg.loss_scale, self.z.shape[-2], self.z.shape[-1], cfg.normalize_by_area)
        self.generator = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
        self.fusion: Optional[AttentionFusion] = None
        self.steps_done = 0
        self.last: dict = {}

    # -- context: attention fusion processors ---------------------------------------------------
    def __enter__(self) -> "ASSDOptimizer":
        if self.cfg.attention_fusion and self.fusion is None:
            self.fusion = AttentionFusion(self.models.video.unet, self.cfg.fusion_layers, self.cfg.fusion_lambda)
            self.fusion.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        if self.fusion is not None:
            self.fusion.__exit__(*exc)
            self.fusion = None
        return False

    # -- pieces of one step -------------------------------------------------------------------
    def sample_t_eps(self) -> tuple[int, torch.Tensor]:
        """One timestep and one noise tensor shared by both branches (drawn from the seeded
        generator: t first, then eps)."""
        t = int(torch.randint(self.cfg.t_min, self.cfg.t_max, (1,), generator=self.generator))
        eps = torch.randn(self.z.shape, generator=self.generator, dtype=torch.float32).to(self.device)
        return t, eps

    def _branch_text(self, branch: str) -> torch.Tensor:
        side, cond = branch.split("_")
        return self.video_text["uncond" if cond == "uncond" else side]

    def video_predictions(self, zt_ref: torch.Tensor, zt_edit: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided predictions (eps^ of the reference branch, eps of the editing branch), from one
        batched UNet call (or one call per branch with ``batch_branches`` False)."""
        v = self.models.video
        lat = {"ref": zt_ref, "edit": zt_edit}
        raw: dict[str, torch.Tensor] = {}
        if self.cfg.batch_branches:
            x = torch.cat([lat[b.split("_")[0]] for b in self.branches])
            text = torch.cat([self._branch_text(b) for b in self.branches])
            if self.fusion is not None:
                pos = {b: i for i, b in enumerate(self.branches)}
                pairs = [(pos["edit_" + c], pos["ref_" + c]) for c in ("uncond", "cond") if "edit_" + c in pos]
                self.fusion.batched(self.frames, pairs)
            out = v.predict(x, t, text)
            raw = dict(zip(self.branches, out.split(1)))
        else:
            for cond in ("uncond", "cond"):
                if "ref_" + cond not in self.branches:
                    continue
                for side in ("ref", "edit"):
                    if self.fusion is not None:
                        (self.fusion.record if side == "ref" else self.fusion.inject)()
                    raw[f"{side}_{cond}"] = v.predict(lat[side], t, self._branch_text(f"{side}_{cond}"))
        if self.fusion is not None:
            self.fusion.off()
        w = self.cfg.guidance_scale
        if "ref_uncond" not in raw:
            return raw["ref_cond"], raw["edit_cond"]
        return (classifier_free_guidance(raw["ref_uncond"], raw["ref_cond"], w),
                classifier_free_guidance(raw["edit_uncond"], raw["edit_cond"], w))

    def video_gradient(self, eps_ref: torch.Tensor, eps_edit: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Eq. 5 (both switches off), or Eq. 8 with Eq. 6 / Eq. 7. Returns (gradient, mask)."""
        cfg = self.cfg
        if not cfg.smoothing:
            return video_dds_gradient(eps_edit, eps_ref), None
        smooth = sliding_window_smooth(eps_ref, cfg.center_weight, frame_dim=2, boundary=cfg.smooth_boundary)
        if cfg.mask:
            m = adaptive_mask(eps_edit, eps_ref, cfg.tau, frame_dim=2, channels=cfg.mask_channels,
                              invert=cfg.mask_invert)
        else:
            m = torch.ones((), dtype=eps_ref.dtype, device=eps_ref.device)
        return assd_gradient(eps_edit, eps_ref, smooth, m), m

    def image_gradient(self, t: int, eps: torch.Tensor, zt_ref: torch.Tensor, zt_edit: torch.Tensor) -> torch.Tensor:
        """Eq. 9 for the keyframes, ``(1, C, K, h, w)``: one batched UNet2D call on the keyframes
        of both branches (and their unconditional twins). The keyframes' noised latents are the
        video's (same t, same eps) when both models share the noise schedule, else re-noised
        with the image model's schedule and the same eps."""
        im = self.models.image
        kf = torch.tensor(self.keyframes, device=self.device)
        if im.schedule == self.models.schedule:
            zr, ze = zt_ref.index_select(2, kf), zt_edit.index_select(2, kf)
        else:
            ab = im.schedule.alpha_bar(t)
            e = eps.index_select(2, kf)
            zr = add_noise(self.z_src.index_select(2, kf), e, ab)
            ze = add_noise(self.z.index_select(2, kf), e, ab)
        K = len(self.keyframes)
        w = self.cfg.image_guidance_scale
        branches = self.branches
        lat = {"ref": video_frames(zr), "edit": video_frames(ze)}  # (K, C, h, w) each

        def text(b):
            side, cond = b.split("_")
            return self.image_text["uncond" if cond == "uncond" else side].expand(K, -1, -1)

        out = im.predict(torch.cat([lat[b.split("_")[0]] for b in branches]), t,
                         torch.cat([text(b) for b in branches]))
        raw = dict(zip(branches, out.split(K)))
        if "ref_uncond" in raw:
            e_ref = classifier_free_guidance(raw["ref_uncond"], raw["ref_cond"], w)
            e_edit = classifier_free_guidance(raw["edit_uncond"], raw["edit_cond"], w)
        else:
            e_ref, e_edit = raw["ref_cond"], raw["edit_cond"]
        g = image_dds_gradient(e_edit, e_ref)  # (K, C, h, w)
        return as_video(g)

    @torch.no_grad()
    def gradient(self, t: int, eps: torch.Tensor) -> torch.Tensor:
        """The total update direction at (t, eps) for the current latent (Eq. 5 / 8 / 10)."""
        ab = self.models.schedule.alpha_bar(t)
        zt_ref = add_noise(self.z_src, eps, ab)  # Eq. 1, reference branch (Z^_t)
        zt_edit = add_noise(self.z, eps, ab)     # Eq. 1, editing branch (Z_t(phi)), same t and eps
        eps_ref, eps_edit = self.video_predictions(zt_ref, zt_edit, t)
        grad, m = self.video_gradient(eps_ref, eps_edit)
        self.last = {"t": t, "mask_fraction": None if m is None else float(m.float().mean())}
        if self.cfg.joint_guidance:
            grad = joint_gradient(grad, self.image_gradient(t, eps, zt_ref, zt_edit), self.keyframes,
                                  frame_dim=2, image_weight=self.cfg.image_weight)
        return grad

    @torch.no_grad()
    def step(self) -> dict:
        """One optimisation step; returns ``{"t", "grad_abs_mean", "mask_fraction"}``."""
        t, eps = self.sample_t_eps()
        grad = self.gradient(t, eps)
        sgd_step(self.z, grad, self.cfg.lr, self.scale)
        self.steps_done += 1
        self.last["grad_abs_mean"] = float(grad.abs().mean())
        return dict(self.last)

    @torch.no_grad()
    def run(self, callback: ProgressCallback | None = None,
            should_cancel: CancelCheck | None = None) -> torch.Tensor:
        """All ``steps``; the callback gets ``(step, total, latent)`` after each step and may
        raise (ComfyUI's interrupt) to stop: then no result is returned. Returns the latent."""
        total = self.cfg.steps
        with self:
            for i in range(self.steps_done, total):
                self.step()
                report(i + 1, total, self.z, callback, should_cancel)
        return self.z


# --------------------------------------------------------------------------------------------
# frames in, frames out


def working_size(models: ASSDModels, height: int, width: int) -> tuple[int, int]:
    """The largest pixel size <= (height, width) every model of ``models`` accepts."""
    mult = models.video.size_multiple()
    if models.image is not None:
        mult = max(mult, models.image.size_multiple())
    return fit_size(height, width, models.vae_scale_factor * mult)


@torch.no_grad()
def encode_source(models: ASSDModels, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """ComfyUI IMAGE ``[F, H, W, 3]`` -> source latent ``(1, C, F, h, w)`` (VAE posterior mean x
    scaling factor) at :func:`working_size`; also returns that pixel size."""
    check_clip(frames)
    h, w = working_size(models, frames.shape[1], frames.shape[2])
    pixels = resize_pixels(frames_to_pixels(frames.float()), (h, w))
    return encode_video(models.vae, pixels, models.scaling_factor), (h, w)


@torch.no_grad()
def decode_latent(models: ASSDModels, latent: torch.Tensor, frame_indices=None) -> torch.Tensor:
    """Latent ``(1, C, F, h, w)`` -> pixels ``[F, 3, H, W]`` in -1..1 (optionally some frames)."""
    return decode_video(models.vae, latent, models.scaling_factor, frame_indices)


@torch.no_grad()
def preview_strip(models: ASSDModels, latent: torch.Tensor, max_frames: int = 4) -> torch.Tensor:
    """A quick look at the current edit: up to ``max_frames`` evenly spaced frames decoded and
    placed side by side, as one ComfyUI IMAGE ``[1, H, k * W, 3]`` in 0..1."""
    n = latent.shape[2]
    k = max(1, min(max_frames, n))
    idx = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})
    px = decode_latent(models, latent, idx)  # [k, 3, H, W]
    strip = torch.cat(list(px), dim=-1).unsqueeze(0)  # [1, 3, H, k W]
    return pixels_to_frames(strip)


@torch.no_grad()
def assd_edit(models: ASSDModels, frames: torch.Tensor, source_prompt: str, target_prompt: str,
              config: ASSDConfig | None = None, *, callback: ProgressCallback | None = None,
              should_cancel: CancelCheck | None = None, return_latent: bool = False):
    """Edit ``frames`` (ComfyUI IMAGE ``[F, H, W, 3]``, 0..1), described by ``source_prompt``,
    towards ``target_prompt`` with ASSD. Returns frames of the same shape (and the optimised
    latent with ``return_latent``).

    Frames are resized to the nearest smaller size the models accept, encoded, optimised for
    ``config.steps`` steps (:class:`ASSDOptimizer`), decoded and resized back.
    """
    cfg = config or ASSDConfig()
    F_, H, W = frames.shape[0], frames.shape[1], frames.shape[2]
    cfg.validate(F_)
    z_src, _ = encode_source(models, frames)
    opt = ASSDOptimizer(models, z_src, source_prompt, target_prompt, cfg)
    z = opt.run(callback=callback, should_cancel=should_cancel)
    out = decode_latent(models, z)
    out = pixels_to_frames(resize_pixels(out, (H, W)))
    return (out, z) if return_latent else out
