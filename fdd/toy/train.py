"""Train the toy-world model set on a CPU and export it in the real on-disk formats.

    python -m fdd.toy train COMPONENT --out DIR [--minutes M] [--steps N] [--seed S]
    python -m fdd.toy train all --out DIR [--seed S]          # every component in order

Components, in dependency order (each reads the previous ones from ``DIR``):

| component | model | trained on | export (``DIR/export/``) |
|---|---|---|---|
| ``text`` | word-level CLIP tokenizer + frozen random ``CLIPTextModel`` (64 wide, 2 layers, 1 head, 20 positions) with a fixed whitening baked in | nothing (no training) | ``tokenizer/`` |
| ``vae`` | ``AutoencoderKL`` (32, 64): 32x32 RGB -> 4x16x16 latent | rendered frames | (in the backbone file) |
| ``unet`` | ``UNet2DConditionModel`` (32, 64), 10 % caption dropout, EMA | frames with captions (scenes and edit targets) | ``toy_sd1.safetensors`` (LDM single file: UNet + VAE + text encoder) and the same as a diffusers folder ``toy_sd1_diffusers/`` (with ``tokenizer/``) |
| ``controlnet`` | ``ControlNetModel.from_unet`` hint (16, 32), backbone frozen | EVE phase 1: input frame + instruction -> ControlNet, output caption -> backbone, target = ``make_edit``'s ground truth | ``toy_controlnet_edit.safetensors`` (LDM ``control_model.``) |
| ``motion`` | ``MotionAdapter`` (32, 64), no mid block, backbone frozen | 8-frame clips with captions | ``toy_motion_module.safetensors`` (original AnimateDiff keys) |
| ``t2v`` | ``UNet3DConditionModel`` (32, 64) on the toy VAE / text encoder | 8-frame clips with captions | ``toy_t2v/`` (diffusers pipeline-style folder: ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``) |

Every trainer is seeded (data from ``numpy.random.default_rng((seed, step))``, noise from a
torch generator seeded the same way, so a resumed run sees the same batches), stops after
``minutes`` of training or ``steps`` steps, appends one JSON line per logged step to
``DIR/COMPONENT/log.jsonl`` (``{"step", "loss", "elapsed_s"}``, and every ``eval_every`` steps
``"eval": {...}`` from :mod:`fdd.toy.evaluate`), writes ``DIR/COMPONENT/state.pt`` atomically
(temp file + rename) every ``ckpt_every`` steps and at the end, and resumes from it.
``minutes`` is the TOTAL training time across resumed runs (evaluation time excluded), so
re-running the same command after an interruption finishes the same budget; steps after the
last checkpoint are redone and logged again (later lines win). Finished components write
``DIR/COMPONENT/final.pt`` (EMA weights where used), ``result.json`` and their exports; a
component that depends on another must be retrained when that one is.

Text encoder whitening (see /work/shared/toy-world-notes.md: a random CLIP gives nearly
collinear caption embeddings). :func:`whiten_text_encoder` measures the encoder's outputs over
every caption / instruction the world produces and rewrites the FINAL LAYER NORM's affine so
the output channels have zero mean and unit standard deviation over that set:
``w' = w / s``, ``b' = (b - m) / s`` (``m``, ``s`` = per-channel mean and std of the output).
The saved encoder is therefore a plain ``CLIPTextModel``. The notes' whitening also removed a
per-POSITION mean; a position-dependent offset after the final layer norm cannot be expressed
in a plain CLIP text model, so only the per-channel part is baked. To shrink the shared
per-position component instead, the encoder has 20 positions (not 77: less padding) and its
token embeddings are initialised 10x larger than CLIP's default (std 0.2), so the token at a
position dominates the residual stream. :func:`embedding_stats` reports the max pairwise cosine
of the caption embeddings before / after (written to ``DIR/text/whitening.json``).

Tokenizer: a CLIP BPE tokenizer folder (``vocab.json`` + ``merges.txt``) whose vocabulary is
the toy world's words (``word</w>``) plus the two specials; the merges are learned by BPE on
the word list until every word is one token (checked on write). Its ids are < the encoder's
vocabulary size (~50), so it belongs to THIS encoder only: ComfyUI's bundled SD 1.x tokenizer
gives ids up to 49407 and cannot drive it (see the report / README for the loader change).

Offset noise (:func:`training_noise`): the backbone first trained with plain noise and its
backgrounds followed the initial noise instead of the caption (SD's schedule never reaches zero
SNR); it was finished with offset noise 0.5 (:data:`STAGES`), and the ControlNet and motion module
train with it from the start. ``python -m fdd.toy train all`` replays the whole recipe.

VAE latent scale: SD loaders fix the latent scaling factor at 0.18215. After training,
:func:`calibrate_vae_scale` rescales ``quant_conv`` (mean and log-variance) and
``post_quant_conv`` exactly so that ``0.18215 * latent`` has unit standard deviation over
rendered frames; the decoder's output is unchanged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..video import frame_batch, unframe_batch
from .evaluate import expected_reading, read_frame, reading_matches, score_frames
from .world import TASKS, caption, make_edit, random_scene, render_clip, render_frame
from .config import (  # noqa: F401  (re-exported: fdd.toy.train is the recipe's entry point)
    COMPONENTS,
    CONTINUATIONS,
    CROSS,
    DEFAULT_MINUTES,
    DEFAULT_SETTINGS,
    DEFAULT_STEPS,
    EXPORT,
    SCALING,
    STAGES,
    TEXT_POSITIONS,
    TrainConfig,
)
from .text import (  # noqa: F401  (re-exported: fdd.toy.train is the recipe's entry point)
    _learn_merges,
    embedding_stats,
    encode,
    load_tokenizer,
    make_text_encoder,
    text_corpus,
    toy_vocabulary,
    whiten_text_encoder,
    write_word_tokenizer,
)
from .factories import (  # noqa: F401  (re-exported: fdd.toy.train is the recipe's entry point)
    make_controlnet,
    make_motion_adapter,
    make_unet,
    make_unet3d,
    make_vae,
    unet_config,
)
from .data import (  # noqa: F401  (re-exported: fdd.toy.train is the recipe's entry point)
    _draw_task,
    _to_pixels,
    draw_probabilities,
    sample_captioned,
    sample_clips,
    sample_edits,
)
from .loop import (  # noqa: F401  (re-exported: fdd.toy.train is the recipe's entry point)
    _EMA,
    _abar,
    _alphas,
    _atomic_save,
    _log,
    _noise_pred_loss,
    _noised,
    _timesteps,
    train_loop,
    training_noise,
)
from .toolkit import (  # noqa: F401  (re-exported: fdd.toy.train is the recipe's entry point)
    Toolkit,
    _final_weights,
)
from .export import (  # noqa: F401  (re-exported: fdd.toy.train is the recipe's entry point)
    _dest,
    _export_dir,
    _write_pipeline_folder,
    export_backbone,
    export_backbone_diffusers,
    export_controlnet,
    export_motion,
    export_t2v,
)


def _drop(prompts, rng, p):
    return ["" if rng.random() < p else c for c in prompts]


@torch.no_grad()
def _ddim(eps_cond_uncond: Callable, shape, cfg: TrainConfig, seed: int) -> torch.Tensor:
    from fdd.sampling import DDIMSchedule, ddim_sample

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(cfg.device)

    def eps_fn(x, t):
        c, u = eps_cond_uncond(x, t)
        return u + cfg.cfg_scale * (c - u)

    return ddim_sample(eps_fn, x, DDIMSchedule(), cfg.sample_steps)


def train_text(out: str, cfg: TrainConfig) -> dict:
    """Write the tokenizer and the whitened frozen random text encoder (no training)."""
    d = os.path.join(out, "text")
    os.makedirs(d, exist_ok=True)
    tok = load_tokenizer(write_word_tokenizer(os.path.join(d, "tokenizer")))
    te = make_text_encoder(len(tok.get_vocab()), cfg.seed + 2, cfg.extra.get("token_std", 0.2))
    stats = whiten_text_encoder(tok, te, text_corpus(cfg.seed))
    _atomic_save({"model": te.state_dict(), "vocab_size": te.config.vocab_size}, os.path.join(d, "text_encoder.pt"))
    with open(os.path.join(d, "whitening.json"), "w") as fh:
        json.dump(stats, fh, indent=1)
    return {"step": 0, "eval": stats}


def calibrate_vae_scale(vae, pixels) -> float:
    """Rescale the latent so ``SCALING * mean`` has unit std on ``pixels`` (exact; see doc)."""
    with torch.no_grad():
        std = float(vae.encode(pixels.to(vae.device)).latent_dist.mean.std())
        k = 1.0 / (SCALING * std)
        c = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[:c].mul_(k)
        vae.quant_conv.bias[:c].mul_(k)
        vae.quant_conv.bias[c:].add_(2 * math.log(k))
        vae.post_quant_conv.weight.div_(k)
    return k


def eval_vae(vae, n: int, seed: int = 12345, size: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, size).at(int(rng.integers(8))) for _ in range(n)]
    x = _to_pixels([render_frame(s) for s in scenes]).to(vae.device)
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    imgs = ((y.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()
    return _attr_scores([read_frame(i) for i in imgs], [expected_reading(s) for s in scenes])


def _attr_scores(got, want) -> dict:
    n = len(got)
    ok = sum(reading_matches(g, w) for g, w in zip(got, want))
    col = shp = bg = 0
    cerr = []
    for g, w in zip(got, want):
        bg += g.background == w.background
        if w.objects and g.objects:
            o = g.find(w.objects[0].colour)
            col += o is not None
            if o is not None:
                shp += o.shape == w.objects[0].shape
                cerr.append(float(np.hypot(o.cx - w.objects[0].cx, o.cy - w.objects[0].cy)))
    return {"all_correct": ok / n, "colour": col / n, "shape": shp / n, "background": bg / n,
            "centroid_err_px": float(np.median(cerr)) if cerr else float("nan"), "n": n}


def _vae_loss(vae, x, gen, kl_weight: float, z_extra: torch.Tensor | None = None,
              x_extra: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction loss (MSE + L1) of ``x`` decoded from a posterior sample, plus
    ``kl_weight`` x the per-element KL when it is non-zero (train_vae; the decoder fine-tune
    uses 0: its encoder is frozen). ``z_extra`` (unscaled latents) decoded towards ``x_extra``
    join the same loss (the decoder fine-tune's x0 estimates)."""
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(x.device)
    if z_extra is not None:
        z, x = torch.cat([z, z_extra]), torch.cat([x, x_extra])
    rec = vae.decode(z).sample
    loss = F.mse_loss(rec, x) + F.l1_loss(rec, x)
    return loss + kl_weight * (post.kl().mean() / z[0].numel()) if kl_weight else loss


def x0_estimate(unet, z: torch.Tensor, emb: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                ab: torch.Tensor) -> torch.Tensor:
    """The denoiser's one-step estimate of the clean latent from ``z`` noised to ``t``:
    z0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) with z_t = sqrt(abar_t) z +
    sqrt(1 - abar_t) noise (DDPM, Ho et al. 2020, eq. 4 solved for x0 with eps_hat for eps)."""
    from fdd.sampling import predict_x0

    zt = _noised(z, noise, t, ab)
    eps = unet(zt, t, encoder_hidden_states=emb).sample
    return predict_x0(zt, eps, _abar(ab, t, z))


def train_vae(out: str, cfg: TrainConfig) -> dict:
    vae = make_vae(cfg.seed + 1)

    def step(i, rng, gen):
        return _vae_loss(vae, sample_captioned(rng, cfg.batch, cfg.size, cfg.frames)[0].to(cfg.device), gen, 1e-4)

    res = train_loop("vae", out, cfg, vae, vae.parameters(), step,
                     lambda m: eval_vae(m, cfg.eval_samples, size=cfg.size))
    x, _ = sample_captioned(np.random.default_rng([cfg.seed, 999]), 128, cfg.size, cfg.frames)
    res["latent_gain"] = calibrate_vae_scale(vae, x)
    _atomic_save(vae.state_dict(), os.path.join(out, "vae", "final.pt"))
    return res


def train_vae_decoder(out: str, cfg: TrainConfig) -> dict:
    """Sharpen the trained VAE's decoder with its encoder frozen (the recipe of Stability's
    decoder-only "ft-MSE" VAE): the latent space does not move, so the backbone and adapters
    trained on it stay valid and only what they decode to changes. Same reconstruction loss as
    :func:`train_vae` on posterior samples (no KL: the encoder is frozen). Writes the whole VAE
    to ``decoder/final.pt`` (:class:`Toolkit` then uses it) and re-exports the backbone and T2V
    files that carry the VAE.

    Why: the evaluator misread shapes decoded by the 1100-step VAE (square corners rounded into
    circles), which capped the adapters' measurable preservation and clip constancy below the
    issue's floors (model cards' "ceiling" lines).

    ``cfg.decoder_x0`` > 0 (needs the run's trained ``unet``): that share of each batch is
    decoded from the backbone's :func:`x0_estimate` of the frame's latent noised at a timestep
    drawn below ``cfg.decoder_x0_tmax`` (caption given), towards the rendered frame, so the
    decoder also learns to draw the latents a sampler ends on (softer than the encoder's) as
    the world's sharp shapes; the rest keeps the posterior samples that hold reconstructions."""
    if not 0.0 <= cfg.decoder_x0 < 1.0:
        raise ValueError(f"decoder_x0: expected a share in [0, 1), got {cfg.decoder_x0}")
    if not 1 <= cfg.decoder_x0_tmax <= 1000:
        raise ValueError(f"decoder_x0_tmax: expected a timestep bound in 1..1000, got {cfg.decoder_x0_tmax}")
    vae = make_vae(0)
    vae.load_state_dict(_final_weights(out, "vae"))
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    k = int(round(cfg.batch * cfg.decoder_x0))
    kit, ab = (Toolkit(out, cfg.device), _alphas(cfg.device)) if k else (None, None)

    def step(i, rng, gen):
        x, caps = sample_captioned(rng, cfg.batch, cfg.size, cfg.frames)
        x = x.to(cfg.device)
        if not k:
            return _vae_loss(vae, x, gen, 0.0)
        with torch.no_grad():
            z = vae.encode(x[:k]).latent_dist.mean * SCALING
            t = torch.randint(0, cfg.decoder_x0_tmax, (k,), generator=gen).to(z.device)
            noise = torch.randn(z.shape, generator=gen).to(z.device)
            z0 = x0_estimate(kit.unet, z, kit.emb(caps[:k]), t, noise, ab) / SCALING
        return _vae_loss(vae, x[k:], gen, 0.0, z0, x[:k])

    res = train_loop("decoder", out, cfg, vae, params, step, lambda m: eval_vae(m, cfg.eval_samples, size=cfg.size))
    _atomic_save(vae.state_dict(), os.path.join(out, "decoder", "final.pt"))
    if os.path.isfile(os.path.join(out, "unet", "final.pt")):
        export_backbone(out)
        export_backbone_diffusers(out)
    if os.path.isfile(os.path.join(out, "t2v", "final.pt")):
        export_t2v(out)
    return res


def sample_t2i(kit: Toolkit, unet, scenes, cfg: TrainConfig, seed: int, captions=None) -> np.ndarray:
    """Frames ``[N, H, W, 3]`` the text-to-image ``unet`` samples for ``scenes``' captions (or
    ``captions`` when given) (DDIM, ``cfg.cfg_scale`` guidance, noise from ``seed``)."""
    n, h = len(scenes), cfg.size // 2
    c, u = kit.emb(list(captions) if captions is not None else [caption(s) for s in scenes]), kit.emb([""] * n)

    def ecu(x, t):
        e = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([c, u])).sample
        return e.chunk(2)

    return kit.decode(_ddim(ecu, (n, 4, h, h), cfg, seed))


def eval_t2i(kit: Toolkit, unet, cfg: TrainConfig, seed: int = 12345, task: str | None = None) -> dict:
    """Attribute scores of what ``unet`` samples for captions of random scenes, or with ``task``
    for the output captions of that edit task (e.g. ``"Add"``: two-object scenes, which bound
    what an edit adapter on this backbone can add), each at a random frame."""
    rng = np.random.default_rng(seed)
    if task is None:
        scenes = [random_scene(rng, cfg.size).at(int(rng.integers(cfg.frames))) for _ in range(cfg.eval_samples)]
        captions, inverted = None, [False] * len(scenes)
    elif task in TASKS:
        edits = [make_edit(random_scene(rng, cfg.size, cfg.frames), task, rng, cfg.frames)
                 for _ in range(cfg.eval_samples)]
        scenes = [e.target.at(int(rng.integers(cfg.frames))) for e in edits]
        captions, inverted = [e.target_caption for e in edits], [e.inverted for e in edits]
    else:
        raise ValueError(f"task: expected one of {TASKS} or None, got {task!r}")
    imgs = sample_t2i(kit, unet, scenes, cfg, seed, captions=captions)
    return _attr_scores([read_frame(i) for i in imgs], [expected_reading(s, v) for s, v in zip(scenes, inverted)])


def train_unet(out: str, cfg: TrainConfig) -> dict:
    kit, unet, ab = Toolkit(out, cfg.device), make_unet(cfg.seed + 3), _alphas(cfg.device)

    def step(i, rng, gen):
        x, caps = sample_captioned(rng, cfg.batch, cfg.size, cfg.frames, task_weights=cfg.task_weights)
        z = kit.encode_images(x)
        noise, t = training_noise(z, gen, cfg.offset_noise), _timesteps(gen, len(z), z.device)
        emb = kit.emb(_drop(caps, rng, cfg.caption_dropout))
        return _noise_pred_loss(unet(_noised(z, noise, t, ab), t, encoder_hidden_states=emb).sample, noise)

    res = train_loop("unet", out, cfg, unet, unet.parameters(), step, lambda m: eval_t2i(kit, m, cfg), ema=True)
    _atomic_save(unet.state_dict(), os.path.join(out, "unet", "final.pt"))
    export_backbone(out)
    export_backbone_diffusers(out)
    return res


def _cn_eps(unet, cn, x, t, cap, ins, hint):
    d, m = cn(x, t, encoder_hidden_states=ins, controlnet_cond=hint, return_dict=False)
    return unet(x, t, encoder_hidden_states=cap, down_block_additional_residuals=list(d),
                mid_block_additional_residual=m).sample


def eval_edit(kit: Toolkit, cn, cfg: TrainConfig, seed: int = 12345) -> dict:
    """Single-frame edits: guidance over the text (the ``image`` branch keeps the input
    frame with empty texts, as plug_and_play_edit does with image_cfg 1)."""
    rng = np.random.default_rng(seed)
    n = cfg.eval_samples
    src, _, ins, caps, edits, idx = sample_edits(rng, n, cfg.size, cfg.frames)
    hint = ((src + 1) / 2).to(cfg.device)
    c, i_, u = kit.emb(caps), kit.emb(ins), kit.emb([""] * n)
    h = cfg.size // 2

    def ecu(x, t):
        tt = torch.full((2 * n,), t, device=x.device)
        e = _cn_eps(kit.unet, cn, torch.cat([x, x]), tt, torch.cat([c, u]), torch.cat([i_, u]),
                    torch.cat([hint, hint]))
        return e.chunk(2)

    return _score_edits(kit.decode(_ddim(ecu, (n, 4, h, h), cfg, seed)), src, edits, idx)


def _score_edits(imgs, src, edits, idx) -> dict:
    """eval_edit's scores of output frames ``imgs`` ``[N, H, W, 3]`` for the sampled edits."""
    from .heldout import score_set

    frames = [replace(e, source=e.source.at(k), target=e.target.at(k)) for e, k in zip(edits, idx)]  # frame scored
    inputs = [((s + 1) / 2).permute(1, 2, 0).numpy()[None] for s in src]
    sc = score_set([img[None] for img in imgs], frames, inputs)
    return {"edit_accuracy": sc["edit_accuracy"], "preservation": sc["preservation"],
            "attribute_accuracy": sc["attribute_accuracy"], "fully_right": sc["fully_right"],
            "per_task_fully_right": {t: v["fully_right"] for t, v in sc["per_task"].items()}, "n": len(imgs)}


@torch.no_grad()
def vae_ceiling_edit(kit: Toolkit, cfg: TrainConfig, seed: int = 12345) -> dict:
    """eval_edit's scores of the ground-truth edited frames of the same edits after a round trip
    through the VAE: the best any model decoded by this VAE can score there (the evaluator reads
    blurred shapes less reliably than rendered ones)."""
    rng = np.random.default_rng(seed)
    src, tgt, _, _, edits, idx = sample_edits(rng, cfg.eval_samples, cfg.size, cfg.frames)
    return _score_edits(kit.decode(kit.encode_images(tgt)), src, edits, idx)


def train_controlnet(out: str, cfg: TrainConfig) -> dict:
    """EVE phase 1: ControlNet fed the input frame and the instruction; backbone frozen and
    fed the output caption; target = the ground-truth edited frame. Instruction and caption
    are dropped independently with ``caption_dropout``."""
    kit, ab = Toolkit(out, cfg.device), _alphas(cfg.device)
    cn = make_controlnet(kit.unet)

    def step(i, rng, gen):
        src, tgt, ins, caps, _, _ = sample_edits(rng, cfg.batch, cfg.size, cfg.frames, cfg.task_weights)
        z = kit.encode_images(tgt)
        noise, t = training_noise(z, gen, cfg.offset_noise), _timesteps(gen, len(z), z.device)
        pred = _cn_eps(kit.unet, cn, _noised(z, noise, t, ab), t, kit.emb(_drop(caps, rng, cfg.caption_dropout)),
                       kit.emb(_drop(ins, rng, cfg.caption_dropout)), ((src + 1) / 2).to(z.device))
        return _noise_pred_loss(pred, noise)

    res = train_loop("controlnet", out, cfg, cn, cn.parameters(), step, lambda m: eval_edit(kit, m, cfg), ema=True)
    _atomic_save(cn.state_dict(), os.path.join(out, "controlnet", "final.pt"))
    export_controlnet(out)
    return res


def sample_t2v(kit: Toolkit, denoise: Callable, scenes, cfg: TrainConfig, seed: int) -> np.ndarray:
    """Clips ``[N, F, H, W, 3]`` that ``denoise(x, t, emb)`` (a video model) samples for
    ``scenes``' captions (DDIM, ``cfg.cfg_scale`` guidance, noise from ``seed``)."""
    n, h = len(scenes), cfg.size // 2
    c, u = kit.emb([caption(s) for s in scenes]), kit.emb([""] * n)

    def ecu(x, t):
        e = denoise(torch.cat([x, x]), t, torch.cat([c, u]))
        return e.chunk(2)

    return _decode_clips(kit, _ddim(ecu, (n, 4, cfg.frames, h, h), cfg, seed))


def eval_video(kit: Toolkit, denoise: Callable, cfg: TrainConfig, seed: int = 12345) -> dict:
    """Sample clips from captions; temporal consistency (score_frames) and attribute accuracy."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, cfg.size, cfg.frames) for _ in range(cfg.eval_samples)]
    return _score_videos(sample_t2v(kit, denoise, scenes, cfg, seed), scenes)


def _decode_clips(kit: Toolkit, lat: torch.Tensor) -> np.ndarray:
    """``(N, C, F, h, w)`` latents -> ``[N, F, H, W, 3]`` frames."""
    n, Fr = lat.shape[0], lat.shape[2]
    imgs = kit.decode(frame_batch(lat))
    return imgs.reshape(n, Fr, *imgs.shape[1:])


@torch.no_grad()
def vae_ceiling_video(kit: Toolkit, cfg: TrainConfig, seed: int = 12345) -> dict:
    """eval_video's scores of the ground-truth clips of the same captions after a round trip
    through the VAE (the ceiling of any video model decoded by it; see vae_ceiling_edit)."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, cfg.size, cfg.frames) for _ in range(cfg.eval_samples)]
    clips = torch.stack([_to_pixels(render_clip(s, cfg.frames)) for s in scenes])
    return _score_videos(_decode_clips(kit, _video_latents(kit, clips)), scenes)


def _score_videos(imgs: np.ndarray, scenes) -> dict:
    """eval_video's scores of clips ``[N, F, H, W, 3]`` sampled for ``scenes``' captions."""
    n = len(imgs)
    const, resid, attr = [], [], 0
    for clip, s in zip(imgs, scenes):
        sf = score_frames(clip)
        const.append(sf["attributes_constant"])
        resid.append(sf["path_residual_px"])
        attr += reading_matches(sf["readings"][0], expected_reading(s))
    r = np.array(resid, dtype=float)
    return {"attributes_constant": float(np.mean(const)), "attribute_accuracy_f0": attr / n,
            "path_residual_px_median": float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
            "path_residual_le_1px": float(np.mean(np.nan_to_num(r, nan=99.0) <= 1.0)), "n": n}


def _video_latents(kit, clips):
    B, Fr = clips.shape[:2]
    z = kit.encode_images(clips.reshape(B * Fr, *clips.shape[2:]))
    return unframe_batch(z, B)  # B C F h w


def _video_step(kit: Toolkit, cfg: TrainConfig, denoise: Callable) -> Callable:
    """The denoising-loss step of the video trainers: ``denoise(x_t, t, emb)`` on clips with
    captions (caption dropout, offset noise as configured)."""
    ab = _alphas(cfg.device)

    def step(i, rng, gen):
        clips, caps = sample_clips(rng, cfg.clips_per_batch, cfg.size, cfg.frames,
                                   shape_weights=cfg.shape_weights)
        z = _video_latents(kit, clips)
        noise, t = training_noise(z, gen, cfg.offset_noise), _timesteps(gen, len(z), z.device)
        emb = kit.emb(_drop(caps, rng, cfg.caption_dropout))
        return _noise_pred_loss(denoise(_noised(z, noise, t, ab), t, emb), noise)

    return step


def train_motion(out: str, cfg: TrainConfig) -> dict:
    """Motion module on the frozen backbone (AnimateDiff training: only motion_modules learn)."""
    from diffusers import UNetMotionModel

    kit = Toolkit(out, cfg.device)
    adapter = make_motion_adapter(cfg.seed + 4)
    mu = UNetMotionModel.from_unet2d(kit.unet, adapter)
    mu.requires_grad_(False)
    params = [p for n, p in mu.named_parameters() if "motion_modules" in n]
    for p in params:
        p.requires_grad_(True)

    def denoise(x, t, emb, model=mu):
        Fr = x.shape[2]
        return model(x, t, encoder_hidden_states=emb.repeat_interleave(Fr, 0)).sample

    step = _video_step(kit, cfg, denoise)

    res = train_loop("motion", out, cfg, mu, params, step,
                     lambda m: eval_video(kit, lambda x, t, e: denoise(x, t, e, m), cfg), ema=True)
    sd = mu.state_dict()
    ad_sd = adapter.state_dict()
    adapter.load_state_dict({k: sd.get(k, v) for k, v in ad_sd.items()})
    _atomic_save(adapter.state_dict(), os.path.join(out, "motion", "final.pt"))
    export_motion(out)
    return res


def train_t2v(out: str, cfg: TrainConfig) -> dict:
    kit = Toolkit(out, cfg.device)
    u3 = make_unet3d(cfg.seed + 6)

    def denoise(x, t, emb, model=u3):
        return model(x, t, encoder_hidden_states=emb).sample

    step = _video_step(kit, cfg, denoise)

    res = train_loop("t2v", out, cfg, u3, u3.parameters(), step,
                     lambda m: eval_video(kit, lambda x, t, e: denoise(x, t, e, m), cfg), ema=True)
    _atomic_save(u3.state_dict(), os.path.join(out, "t2v", "final.pt"))
    export_t2v(out)
    return res


TRAINERS = {"text": train_text, "vae": train_vae, "unet": train_unet, "controlnet": train_controlnet,
            "motion": train_motion, "t2v": train_t2v, "decoder": train_vae_decoder}


def train(component: str, out: str, cfg: TrainConfig) -> dict:
    if component not in TRAINERS:
        raise ValueError(f"component: unknown {component!r}; expected one of {COMPONENTS} or 'all'")
    os.makedirs(out, exist_ok=True)
    res = TRAINERS[component](os.fspath(out), cfg)
    path = os.path.join(out, component, "result.json")
    with open(path + ".tmp", "w") as fh:
        json.dump({"component": component, "config": asdict(cfg), **res}, fh, indent=1, default=str)
    os.replace(path + ".tmp", path)
    return res
