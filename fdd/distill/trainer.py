"""The Factorized Diffusion Distillation trainer (EVE §3.2-3.3, §4.0.4).

One iteration (global batch split into micro-batches over processes):

1. the student generates x'_0 from noise in k DDIM steps at K-bin timesteps (§3.3.1), with the
   graph kept through all k steps (optionally checkpointed per step: only the k latents are
   stored, each step's activations recomputed in the backward);
2. SDS from each teacher (Eq. 1) at a random t and ε on the same x'_t;
3. phase 2 (after ``iterations_sds``): x'_0 is decoded to pixels through the VAE with gradient and
   judged by D_e and D_v (frozen DINOv2 + trainable heads); the generator hinge terms join
   the objective L_G-FDD = α(L_G-Edit + λ L_SDS-Edit) + β(L_G-Video + λ L_SDS-Video);
4. the discriminators are trained on teacher samples (multi-step DDIM from noise, no gradient)
   against the detached student samples with L_D-FDD = α L_D-Edit + β L_D-Video;
5. gradients are summed over processes and AdamW steps the LoRA (and the heads in phase 2).

Every random draw of a sample is seeded from (seed, iteration, global sample index, purpose),
and the K-bin steps from (seed, iteration): a run is reproducible, a resumed run continues
the same loss sequence, and N processes compute the same update as one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from ..numerics import OPTIMISATION_CAUSES, require_finite
from ..sampling import DDIMSchedule, ddim_step
from ..sampling.control import Cancelled
from . import distributed as D
from .config import FDDConfig
from .dataset import FDDDataset
from .discriminators import DiffAugment, DinoFeatures, EditDiscriminator, VideoDiscriminator
from .losses import (
    discriminator_hinge_loss,
    fdd_discriminator_loss,
    fdd_generator_loss,
    generator_hinge_loss,
    sds_disagreement,
    sds_loss,
    sds_weight,
    student_timesteps,
)
from .models import Conditioning, FDDModels, training_copy

CHECKPOINT_FORMAT = "fdd-align-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"

#: callback(iterations_done, total, last_log) once per iteration; may raise to stop
TrainCallback = Callable[[int, int, dict | None], None]


def _seed(*keys) -> int:
    h = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _gen(*keys) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*keys))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(cfg: FDDConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where supported (no loss scaling needed), else fp16."""
    if device.type != "cuda" or cfg.mixed_precision == "no":
        return None
    if cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


@dataclass
class TrainResult:
    lora_path: str | None
    checkpoint_path: str | None
    history: list = field(default_factory=list)
    steps: int = 0


class FDDTrainer:
    """Holds the student, teachers, discriminator heads, optimisers and the run state."""

    def __init__(self, cfg: FDDConfig, models: FDDModels, dataset: FDDDataset, dino, device=None,
                 dist_info: D.DistInfo | None = None):
        self.cfg = cfg
        self.models = models
        self.dataset = dataset
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        self.dist = dist_info or D.current()
        self.schedule = DDIMSchedule()
        self.alphas = self.schedule.alphas_cumprod.float()
        self.amp = autocast_dtype(cfg, self.device)
        models.to(self.device)
        self.feats = DinoFeatures(training_copy(dino), cfg.dino_layers, cfg.dino_resolution).to(self.device)
        text_dim = int(models.text_encoder.config.hidden_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(cfg.seed, "heads"))
            self.d_edit = EditDiscriminator(self.feats.dim, len(self.feats.layers), text_dim, cfg.disc_dim,
                                            cfg.disc_heads).to(self.device)
            self.d_video = VideoDiscriminator(self.feats.dim, len(self.feats.layers), text_dim, cfg.disc_dim,
                                              cfg.disc_heads).to(self.device)
        self.augment = DiffAugment() if cfg.augment else None
        self.lora_params = models.lora_parameters()
        self.d_params = list(self.d_edit.parameters()) + list(self.d_video.parameters())
        D.broadcast_(self.lora_params + self.d_params, self.dist)
        betas = tuple(cfg.adam_betas)
        self.opt_g = torch.optim.AdamW(self.lora_params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
        self.opt_d = torch.optim.AdamW(self.d_params, lr=cfg.d_lr, betas=betas, weight_decay=cfg.weight_decay)
        self.scaler_g = self.scaler_d = None
        if self.amp is torch.float16:
            self.scaler_g = torch.amp.GradScaler("cuda")
            self.scaler_d = torch.amp.GradScaler("cuda")
        self.step = 0
        self.history: list[dict] = []
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._input_images: dict[int, torch.Tensor] = {}
        self.last_checkpoint: str | None = None

    # ------------------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _alpha(self, t) -> torch.Tensor:
        return self.alphas[torch.as_tensor(t).long().cpu()].to(self.device)

    def _text(self, prompt: str):
        if prompt not in self._text_cache:
            h, p = self.models.encode_text([prompt], self.device)
            self._text_cache[prompt] = (h[0], p[0])
        return self._text_cache[prompt]

    def batch_items(self, step: int) -> list[tuple[int, int]]:
        """This process's ``(global position j, record index)`` pairs of iteration ``step``:
        records in a per-epoch random order, positions ``rank, rank + world, ...``."""
        G, N = self.cfg.global_batch, len(self.dataset)
        items = []
        for j in range(self.dist.rank, G, self.dist.world_size):
            p = step * G + j
            epoch, pos = divmod(p, N)
            perm = torch.randperm(N, generator=_gen(self.cfg.seed, "epoch", epoch))
            items.append((j, int(perm[pos])))
        return items

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        cfg, m = self.cfg, self.models
        F_ = cfg.num_frames if m.video else 1
        C = m.unet2d.config.in_channels
        return (batch, C, F_, cfg.height // m.vae_scale_factor, cfg.width // m.vae_scale_factor)

    def _noise(self, items, step, purpose) -> torch.Tensor:
        shape = self.latent_shape(1)[1:]
        return torch.stack([torch.randn(shape, generator=_gen(self.cfg.seed, purpose, step, j))
                            for j, _ in items]).to(self.device)

    @torch.no_grad()
    def _lora_input_image(self, idx: int) -> torch.Tensor:
        """§4.4: the input image of an edit+lora record, generated by the LoRA teacher from the
        record's input caption (DDIM, ``teacher_sample_steps``), cached; ``(1, 3, H, W)`` 0..1."""
        if idx not in self._input_images:
            rec = self.dataset.records[idx]
            h, p = self._text(rec.input_caption)
            eh, _ = self._text("")
            cond = Conditioning(h[None], h[None], eh[None], p[None], p[None], frames=None)
            shape = self.latent_shape(1)
            noise = torch.randn(shape, generator=_gen(self.cfg.seed, "input_image", idx)).to(self.device)
            lat = self.teacher_sample(self.models.video_teacher_eps, noise, cond)
            pix = self.models.decode(lat)[0].float()
            self._input_images[idx] = ((pix.clamp(-1, 1) + 1) / 2).cpu()
        return self._input_images[idx]

    def conditioning(self, items, step: int) -> Conditioning:
        recs = [self.dataset.records[i] for _, i in items]
        cap = [self._text(r.output_caption) for r in recs]
        ins = [self._text(r.instruction) for r in recs]
        empty = self._text("")[0]
        if self.models.video:
            frames = [self.dataset.frames(i, offset_rng=_gen(self.cfg.seed, "offset", step, j)) for j, i in items]
        else:
            frames = [self._lora_input_image(i) for _, i in items]
        return Conditioning(caption=torch.stack([c[0] for c in cap]), instruction=torch.stack([c[0] for c in ins]),
                            empty=empty[None].expand(len(recs), *empty.shape).contiguous(),
                            caption_pooled=torch.stack([c[1] for c in cap]),
                            instruction_pooled=torch.stack([c[1] for c in ins]),
                            frames=torch.stack(frames).to(self.device))

    # --------------------------------------------------------------------------- generation
    def student_steps(self, step: int) -> list[int]:
        return student_timesteps(self.cfg.timestep_sampling, self.schedule, self.cfg.k_steps,
                                 _gen(self.cfg.seed, "kbin", step))

    def generate(self, noise: torch.Tensor, timesteps: list[int], cond: Conditioning) -> torch.Tensor:
        """x'_0 from ``noise`` in len(timesteps) deterministic DDIM steps of the student, the
        graph kept through all of them (each step checkpointed when gradient checkpointing is on)."""
        x = noise
        B = x.shape[0]
        ckpt = self.cfg.gradient_checkpointing and torch.is_grad_enabled()
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            tt = torch.full((B,), int(t), device=self.device, dtype=torch.long)

            def eps_fn(x_in, tt=tt):
                with self._autocast():
                    return self.models.student_eps(x_in, tt, cond, self.cfg).float()

            eps = grad_checkpoint(eps_fn, x, use_reentrant=False) if ckpt else eps_fn(x)
            x = ddim_step(x, eps, self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_prev))
        return x

    @torch.no_grad()
    def teacher_sample(self, eps_fn, noise: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """A teacher's multi-step DDIM sample from noise (the discriminators' "real" data)."""
        x = noise
        n = self.cfg.teacher_sample_steps
        B = x.shape[0]
        for t in self.schedule.timesteps(n):
            tt = torch.full((B,), int(t), device=self.device, dtype=torch.long)
            with self._autocast():
                eps = eps_fn(x, tt, cond, self.cfg).float()
            x = ddim_step(x, eps, self.schedule.alpha_bar(t), self.schedule.alpha_bar(self.schedule.previous(t, n)))
        return x

    # ---------------------------------------------------------------------------- losses
    def sds_terms(self, x0: torch.Tensor, items, step: int, cond: Conditioning) -> dict:
        """L_SDS-Edit and L_SDS-Video on one x'_t = sqrt(ᾱ_t) x'_0 + sqrt(1 - ᾱ_t) ε (§3.2)."""
        cfg = self.cfg
        T = self.schedule.num_train_timesteps
        lo, hi = int(cfg.sds_t_min * T), max(int(cfg.sds_t_min * T) + 1, int(cfg.sds_t_max * T))
        t = torch.tensor([int(torch.randint(lo, hi, (1,), generator=_gen(cfg.seed, "sds_t", step, j)))
                          for j, _ in items], device=self.device)
        eps = self._noise(items, step, "sds_eps")
        ab = self._alpha(t).view(-1, 1, 1, 1, 1)
        x_t = (ab.sqrt() * x0.detach() + (1 - ab).sqrt() * eps)
        c_t = sds_weight(self._alpha(t), cfg.sds_weighting)
        with torch.no_grad(), self._autocast():
            e_edit = self.models.edit_teacher_eps(x_t, t, cond, cfg).float()
            e_video = self.models.video_teacher_eps(x_t, t, cond, cfg).float()
        return {"sds_edit": sds_loss(x0, e_edit, eps, c_t), "sds_video": sds_loss(x0, e_video, eps, c_t),
                "sds_edit_gap": sds_disagreement(e_edit, eps, c_t).detach(),
                "sds_video_gap": sds_disagreement(e_video, eps, c_t).detach()}

    def _augment(self, video: torch.Tensor, keys) -> torch.Tensor:
        """DiffAugment per sample with its own seed (``video`` ``(B, T, 3, H, W)``)."""
        if self.augment is None:
            return video
        outs = []
        devices = [self.device] if self.device.type == "cuda" else []
        for b, key in enumerate(keys):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(_seed(self.cfg.seed, *key))
                outs.append(self.augment(video[b:b + 1]))
        return torch.cat(outs)

    def d_edit_logits(self, out_pix: torch.Tensor, cond: Conditioning, keys) -> torch.Tensor:
        """D_e on (input frame, instruction, output frame) for every frame; ``out_pix``
        ``(B, F, 3, H, W)`` in -1..1. Input and output frame share one augmentation."""
        B, Fr = out_pix.shape[:2]
        inp = cond.frames.to(out_pix.dtype) * 2 - 1
        pair = torch.stack([inp, out_pix], dim=2).reshape(B * Fr, 2, *out_pix.shape[2:])
        pair = self._augment(pair, [k + (f,) for k in keys for f in range(Fr)])
        with self._autocast():
            f_in = self.feats(pair[:, 0])
            f_out = self.feats(pair[:, 1])
            text = cond.instruction_pooled.repeat_interleave(Fr, dim=0)
            return self.d_edit(f_out, f_in, text).float().view(B, -1)

    def d_video_logits(self, pix: torch.Tensor, cond: Conditioning, keys) -> torch.Tensor:
        B, Fr = pix.shape[:2]
        pix = self._augment(pix, keys)
        with self._autocast():
            f = self.feats(pix.reshape(B * Fr, *pix.shape[2:]))
            return self.d_video(f, Fr, cond.caption_pooled).float().view(B, -1)

    def _decode(self, lat):
        with self._autocast():
            return self.models.decode(lat).float()

    # --------------------------------------------------------------------------- one step
    def _backward(self, loss, scaler):
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def _opt_step(self, opt, scaler, params):
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def train_step(self) -> dict:
        """One FDD iteration over the global batch; returns its logged (global-mean) values."""
        cfg = self.cfg
        step = self.step
        phase = cfg.phase(step)
        adversarial = phase == 2 and cfg.use_discriminators
        items = self.batch_items(step)
        ts = self.student_steps(step)
        self.opt_g.zero_grad(set_to_none=False)
        self.opt_d.zero_grad(set_to_none=False)
        for p in self.lora_params + self.d_params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        keys = ("loss_g", "sds_edit", "sds_video", "sds_edit_gap", "sds_video_gap", "g_edit", "g_video",
                "loss_d", "d_edit", "d_video", "d_real_edit", "d_fake_edit", "d_real_video", "d_fake_video")
        acc = torch.zeros(len(keys), dtype=torch.float64)
        t0 = time.perf_counter()
        for s in range(0, len(items), cfg.micro_batch):
            mb = items[s:s + cfg.micro_batch]
            w = len(mb) / cfg.global_batch
            cond = self.conditioning(mb, step)
            vals: dict[str, torch.Tensor] = {}
            # -- student generation, SDS, generator terms
            self.d_edit.requires_grad_(False)
            self.d_video.requires_grad_(False)
            x0 = self.generate(self._noise(mb, step, "student_noise"), ts, cond)
            sds = self.sds_terms(x0, mb, step, cond)
            vals.update({k: v.detach() for k, v in sds.items()})
            g_edit = g_video = None
            fake = None
            if adversarial:
                fake = self._decode(x0)
                g_edit = generator_hinge_loss(self.d_edit_logits(fake, cond, [("aug_e_fake", step, j) for j, _ in mb]),
                                              cfg.generator_loss)
                g_video = generator_hinge_loss(self.d_video_logits(fake, cond, [("aug_v_fake", step, j) for j, _ in mb]),
                                               cfg.generator_loss)
                vals["g_edit"], vals["g_video"] = g_edit.detach(), g_video.detach()
            use_sds = cfg.use_sds
            loss_g = fdd_generator_loss(g_edit, sds["sds_edit"] if use_sds else None, g_video,
                                        sds["sds_video"] if use_sds else None, cfg.alpha, cfg.beta, cfg.lam)
            if torch.is_tensor(loss_g) and loss_g.requires_grad:
                self._backward(loss_g * w, self.scaler_g)
            vals["loss_g"] = loss_g.detach() if torch.is_tensor(loss_g) else torch.tensor(float(loss_g))
            del x0
            # -- discriminators on teacher samples vs the detached student samples
            if adversarial:
                self.d_edit.requires_grad_(True)
                self.d_video.requires_grad_(True)
                real_e = self._decode(self.teacher_sample(self.models.edit_teacher_eps,
                                                          self._noise(mb, step, "edit_teacher_noise"), cond))
                real_v = self._decode(self.teacher_sample(self.models.video_teacher_eps,
                                                          self._noise(mb, step, "video_teacher_noise"), cond))
                fake_d = fake.detach()
                re_ = self.d_edit_logits(real_e, cond, [("aug_e_real", step, j) for j, _ in mb])
                fe_ = self.d_edit_logits(fake_d, cond, [("aug_e_fake_d", step, j) for j, _ in mb])
                rv_ = self.d_video_logits(real_v, cond, [("aug_v_real", step, j) for j, _ in mb])
                fv_ = self.d_video_logits(fake_d, cond, [("aug_v_fake_d", step, j) for j, _ in mb])
                d_e = discriminator_hinge_loss(re_, fe_)
                d_v = discriminator_hinge_loss(rv_, fv_)
                loss_d = fdd_discriminator_loss(d_e, d_v, cfg.alpha, cfg.beta)
                self._backward(loss_d * w, self.scaler_d)
                vals.update(loss_d=loss_d.detach(), d_edit=d_e.detach(), d_video=d_v.detach(),
                            d_real_edit=re_.mean().detach(), d_fake_edit=fe_.mean().detach(),
                            d_real_video=rv_.mean().detach(), d_fake_video=fv_.mean().detach())
            acc += torch.tensor([float(vals[k]) if k in vals else 0.0 for k in keys], dtype=torch.float64) * w
        # -- reduce over processes, step
        D.all_reduce_grads_(self.lora_params, self.dist)
        if adversarial:
            D.all_reduce_grads_(self.d_params, self.dist)
        D.all_reduce_sum_([acc], self.dist)
        grad_norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in self.lora_params))
        # before any weight moves: a non-finite loss, or non-finite gradients that no loss scaler
        # will skip, stop the run here and the checkpoint of the last good iteration stays
        require_finite(acc, "the FDD losses (" + ", ".join(keys) + ")", self.step + 1, cfg.iterations,
                       OPTIMISATION_CAUSES)
        if self.scaler_g is None:
            require_finite(torch.tensor(grad_norm), "the LoRA gradient norm", self.step + 1, cfg.iterations,
                           OPTIMISATION_CAUSES)
        if cfg.use_sds or adversarial:
            self._opt_step(self.opt_g, self.scaler_g, self.lora_params)
        if adversarial:
            self._opt_step(self.opt_d, self.scaler_d, self.d_params)
        self.step += 1
        log = {"step": self.step, "phase": phase, **{k: float(v) for k, v in zip(keys, acc.tolist())},
               "grad_norm_g": grad_norm, "timesteps": ts, "seconds": time.perf_counter() - t0}
        if not adversarial:
            for k in ("g_edit", "g_video", "loss_d", "d_edit", "d_video", "d_real_edit", "d_fake_edit",
                      "d_real_video", "d_fake_video"):
                log.pop(k)
        self.history.append(log)
        return log

    @torch.no_grad()
    def probe(self, step: int = 0) -> dict:
        """The SDS terms of iteration ``step``'s batch and randomness with the current weights,
        no update: a fixed yardstick to compare the student before and after training."""
        items = self.batch_items(step)
        out = {"sds_edit_gap": 0.0, "sds_video_gap": 0.0}
        for s in range(0, len(items), self.cfg.micro_batch):
            mb = items[s:s + self.cfg.micro_batch]
            cond = self.conditioning(mb, step)
            x0 = self.generate(self._noise(mb, step, "student_noise"), self.student_steps(step), cond)
            sds = self.sds_terms(x0, mb, step, cond)
            for k in out:
                out[k] += float(sds[k]) * len(mb) / len(items)
        return out

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        lora = {n: p.detach().cpu().clone() for n, p in zip(self.models.lora_param_names, self.lora_params)}
        rng = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
               "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"format": CHECKPOINT_FORMAT, "step": self.step, "phase": self.cfg.phase(max(self.step - 1, 0)),
                "lora": lora, "d_edit": self.d_edit.state_dict(), "d_video": self.d_video.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "rng": rng,
                "config": json.dumps(self.cfg.to_dict()), "history": json.dumps(self.history),
                "world_size": self.dist.world_size}

    def save_checkpoint(self, path: str | None = None) -> str:
        """Write the run state atomically (temp file + rename); only rank 0 writes."""
        path = path or os.path.join(self.cfg.output_dir, CHECKPOINT_NAME)
        if self.dist.is_main:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            try:
                torch.save(self.state_dict(), tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        self.last_checkpoint = path
        return path

    def load_checkpoint(self, path: str) -> None:
        """Restore LoRA, heads, optimisers, step, history and RNG states (weights-only load)."""
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"checkpoint {path!r} cannot be read ({exc})") from exc
        if not isinstance(sd, dict) or sd.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {path!r} is not an FDD alignment checkpoint")
        lora = sd["lora"]
        if set(lora) != set(self.models.lora_param_names):
            raise ValueError(f"checkpoint {path!r} holds a LoRA of another shape (rank / targets differ "
                             "from this config)")
        with torch.no_grad():
            for n, p in zip(self.models.lora_param_names, self.lora_params):
                if lora[n].shape != p.shape:
                    raise ValueError(f"checkpoint {path!r}: LoRA {n} has shape {tuple(lora[n].shape)}, "
                                     f"the config gives {tuple(p.shape)}")
                p.copy_(lora[n].to(p.device))
        self.d_edit.load_state_dict(sd["d_edit"])
        self.d_video.load_state_dict(sd["d_video"])
        self.opt_g.load_state_dict(sd["opt_g"])
        self.opt_d.load_state_dict(sd["opt_d"])
        self.step = int(sd["step"])
        self.history = json.loads(sd["history"])
        rng = sd["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.last_checkpoint = path

    # ------------------------------------------------------------------------------ export
    def lora_layers(self):
        from ..models.lora import lora_layers_from_peft

        return lora_layers_from_peft(self.models.student_unet)

    def export_lora(self, path: str | None = None) -> str:
        """Write θ_align as a kohya LoRA (``lora_unet_*``, alpha = lora_alpha) that ComfyUI's
        LoraLoader and :func:`fdd.models.lora.read_lora` read. Only rank 0 writes."""
        from ..models.lora import save_kohya_lora

        path = path or os.path.join(self.cfg.output_dir, self.cfg.lora_name)
        if self.dist.is_main:
            meta = {"fdd_method": "FDD alignment LoRA (EVE)", "fdd_combination": self.cfg.combination,
                    "fdd_steps": str(self.step), "fdd_k_steps": str(self.cfg.k_steps)}
            save_kohya_lora(path, self.lora_layers(), metadata=meta)
        return path

    # ------------------------------------------------------------------------------- loop
    def train(self, iterations: int | None = None, callback: TrainCallback | None = None,
              should_cancel: Callable[[], bool] | None = None, log: Callable[[dict], None] | None = None) -> list:
        """Run until ``iterations`` (default: the config's total) are done, calling ``callback``
        after each. Checkpoints every ``checkpoint_every`` iterations; when anything stops the
        loop (the callback raising ComfyUI's interrupt, ``should_cancel``, Ctrl-C, an error) the
        state after the last completed iteration is written first, then the exception goes on."""
        total = self.cfg.iterations if iterations is None else int(iterations)
        try:
            while self.step < total:
                if should_cancel is not None and should_cancel():
                    raise Cancelled(f"cancelled at iteration {self.step}/{total}")
                entry = self.train_step()
                if log is not None:
                    log(entry)
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if callback is not None:
                    callback(self.step, total, entry)
        except BaseException:
            if self.step > 0:
                self.save_checkpoint()
            raise
        return self.history


# ---------------------------------------------------------------------------------------------
# from a config file


def load_models(cfg: FDDConfig):
    """Load (backbone, controlnet, motion adapter or None, DINOv2, teacher LoRA or None) from the
    config's paths."""
    from ..models.controlnet import check_controlnet_matches_unet, load_controlnet
    from ..models.lora import read_lora
    from ..models.motion import load_motion_adapter
    from ..models.sd1 import load_sd1
    from .discriminators import load_dinov2

    bb = load_sd1(cfg.backbone, tokenizer=cfg.tokenizer)
    if bb.tokenizer is None:
        raise ValueError("tokenizer: the backbone file has no tokenizer; set 'tokenizer' to a CLIP tokenizer folder")
    cn = load_controlnet(cfg.controlnet)
    check_controlnet_matches_unet(cn, bb.unet, cfg.controlnet)
    mm = load_motion_adapter(cfg.motion_module) if cfg.combination == "edit+video" else None
    dino = load_dinov2(cfg.dino)
    lora = read_lora(cfg.teacher_lora) if cfg.combination == "edit+lora" else None
    return bb, cn, mm, dino, lora


def make_trainer(cfg: FDDConfig, loaded=None, device=None, dist_info: D.DistInfo | None = None) -> FDDTrainer:
    """Build the trainer (models from ``loaded`` = :func:`load_models`' tuple, or the config's
    paths) and resume from ``output_dir/checkpoint.pt`` when ``cfg.resume`` and it exists."""
    from .models import build_fdd_models

    cfg.validate()
    bb, cn, mm, dino, lora = loaded if loaded is not None else load_models(cfg)
    dataset = FDDDataset(cfg.dataset, cfg.manifest, cfg.num_frames, cfg.height, cfg.width, cfg.frame_stride,
                         needs_clips=cfg.combination == "edit+video")
    with torch.inference_mode(False):
        models = build_fdd_models(bb, cn, mm, cfg, teacher_lora=lora)
        trainer = FDDTrainer(cfg, models, dataset, dino, device=device, dist_info=dist_info)
        ck = os.path.join(cfg.output_dir, CHECKPOINT_NAME)
        if cfg.resume and os.path.isfile(ck):
            trainer.load_checkpoint(ck)
    return trainer


def train(cfg: FDDConfig, loaded=None, *, callback: TrainCallback | None = None,
          should_cancel: Callable[[], bool] | None = None, log: Callable[[dict], None] | None = None,
          device=None, dist_info: D.DistInfo | None = None) -> TrainResult:
    """Run an alignment from a config: build, resume, train, checkpoint, export the LoRA to
    ``output_dir/lora_name``. Usable from scripts, the CLI (also under torchrun) and the node.
    Runs with gradients enabled even when called under ``torch.inference_mode`` (ComfyUI)."""
    with torch.inference_mode(False), torch.enable_grad():
        trainer = make_trainer(cfg, loaded, device=device, dist_info=dist_info)
        trainer.train(callback=callback, should_cancel=should_cancel, log=log)
        ck = trainer.save_checkpoint()
        lora = trainer.export_lora()
        D.barrier(trainer.dist)
    return TrainResult(lora_path=lora, checkpoint_path=ck, history=trainer.history, steps=trainer.step)
