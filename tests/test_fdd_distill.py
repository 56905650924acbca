"""FDD alignment (EVE §3.2-3.3): K-bin sampling, SDS, hinge losses and the combined objective
against independent formulas; the trainer's frozen / trainable split, learning signals,
checkpoints and resume, gradient checkpointing, export, the §4.4 combination, EVE sampling."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch

from fdd.distill import losses as L
from fdd.sampling import DDIMSchedule


@pytest.fixture(scope="module")
def fdd_tree(models_tree):
    from fdd.testing.fdd_fixtures import write_fdd_tree

    root = os.path.dirname(os.path.dirname(models_tree["checkpoint"]))
    return write_fdd_tree(root, models_tree)


@pytest.fixture(scope="module")
def loaded(models_tree, fdd_tree, tmp_path_factory):
    """Models loaded once (the trainer makes its own private copies of them)."""
    from fdd.distill.trainer import load_models
    from fdd.testing.fdd_fixtures import tiny_config

    cfg = tiny_config(models_tree, fdd_tree["dino"], fdd_tree["dataset"], str(tmp_path_factory.mktemp("x")))
    return load_models(cfg)


def _cfg(models_tree, fdd_tree, out, **kw):
    from fdd.testing.fdd_fixtures import tiny_config

    dataset = kw.pop("dataset", fdd_tree["dataset"])
    return tiny_config(models_tree, fdd_tree["dino"], dataset, str(out), **kw)


def _trainer(models_tree, fdd_tree, loaded, out, **kw):
    from fdd.distill.trainer import make_trainer

    return make_trainer(_cfg(models_tree, fdd_tree, out, **kw), loaded)


# ------------------------------------------------------------------------------ K-bin (§3.3.1)


@pytest.mark.parametrize("T,k", [(1000, 3), (1000, 7), (10, 4)])
def test_kbin_every_bin_hit_step_i_in_bin_i_descending(T, k):
    g = torch.Generator().manual_seed(0)
    draws = [L.kbin_timesteps(T, k, g) for _ in range(3000)]
    width = T / k
    for ts in draws:
        assert len(ts) == k
        assert all(a > b for a, b in zip(ts, ts[1:])), ts  # strictly descending
        for i, t in enumerate(ts):  # bin i counted from the noisy end: [T-(i+1)T/k, T-iT/k)
            assert T - (i + 1) * width - 1 < t < T - i * width, (i, t)
    for i in range(k):
        seen = {ts[i] for ts in draws}
        lo, hi = int(T - (i + 1) * width), int(T - i * width) - 1
        # every bin is hit, all over its range
        assert min(seen) <= lo + max(1, int(0.02 * width)) and max(seen) >= hi - max(1, int(0.02 * width))


def test_uniform_ablation_uses_fixed_ddim_timesteps():
    s = DDIMSchedule()
    g = torch.Generator().manual_seed(0)
    a = L.student_timesteps("uniform", s, 3, g)
    b = L.student_timesteps("uniform", s, 3, g)
    assert a == b == s.timesteps(3) == [667, 334, 1]
    r = L.student_timesteps("random", s, 3, g)
    assert r == sorted(r, reverse=True) and len(set(r)) == 3


# ---------------------------------------------------------------------------------- SDS (Eq. 1)


def test_sds_gradient_equals_weight_times_residual():
    g = torch.Generator().manual_seed(1)
    shape = (3, 4, 2, 5, 5)
    x0 = torch.randn(shape, generator=g, requires_grad=True)
    eps_hat, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ab = torch.tensor([0.9, 0.5, 0.05])
    c = L.sds_weight(ab, "alpha")
    assert torch.allclose(c, torch.sqrt(ab))
    assert torch.allclose(L.sds_weight(ab, "sigma2"), 1 - ab)
    L.sds_loss(x0, eps_hat, eps, c, reduction="sum").backward()
    expected = c.view(3, 1, 1, 1, 1) * (eps_hat - eps)
    assert torch.equal(x0.grad, expected)
    x0.grad = None
    L.sds_loss(x0, eps_hat, eps, c, reduction="mean").backward()
    assert torch.allclose(x0.grad, expected / x0.numel(), rtol=1e-6, atol=0)
    # the teacher term carries no gradient (stop-gradient)
    e = eps_hat.clone().requires_grad_(True)
    L.sds_loss(x0, e, eps, c).backward()
    assert e.grad is None


# ------------------------------------------------------------------------------- hinge losses


def test_hinge_losses_match_hand_computation():
    real = torch.tensor([[2.0, 0.5, -1.0]])
    fake = torch.tensor([[-2.0, 0.0, 1.5]])
    # max(0, 1 - r): 0, 0.5, 2 -> 2.5/3 ; max(0, 1 + f): 0, 1, 2.5 -> 3.5/3
    assert L.discriminator_hinge_loss(real, fake).item() == pytest.approx(6.0 / 3)
    assert L.generator_hinge_loss(fake, "add").item() == pytest.approx(0.5 / 3)
    assert L.generator_hinge_loss(fake, "paper").item() == pytest.approx(-3.5 / 3)
    # why "add" is the default: the printed form gives no gradient where D rejects the sample
    f = torch.tensor([-3.0, -2.0], requires_grad=True)
    L.generator_hinge_loss(f, "paper").backward()
    assert torch.equal(f.grad, torch.zeros(2))
    f.grad = None
    L.generator_hinge_loss(f, "add").backward()
    assert torch.equal(f.grad, torch.full((2,), -0.5))


def test_fdd_objectives_combine_with_alpha_beta_lambda():
    assert float(L.fdd_generator_loss(1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 2.5)) == pytest.approx(0.5 * (1 + 5) + 0.5 * (3 + 10))
    assert float(L.fdd_generator_loss(None, 2.0, None, 4.0, 0.5, 0.5, 2.5)) == pytest.approx(0.5 * 5 + 0.5 * 10)
    assert float(L.fdd_generator_loss(1.0, None, 3.0, None, 0.3, 0.7, 2.5)) == pytest.approx(0.3 + 2.1)
    assert float(L.fdd_discriminator_loss(torch.tensor(2.0), torch.tensor(1.0), 0.5, 0.5)) == pytest.approx(1.5)


# ------------------------------------------------------------------------ config and dataset


def test_config_refuses_unknown_keys_and_reads_toml(tmp_path, models_tree, fdd_tree):
    from fdd.distill.config import FDDConfig, load_config

    with pytest.raises(ValueError, match="unknown config keys.*lerning_rate"):
        FDDConfig.from_dict({"lerning_rate": 1})
    p = tmp_path / "run.toml"
    p.write_text(f'backbone = "{models_tree["checkpoint"]}"\ncontrolnet = "{models_tree["controlnet"]}"\n'
                 f'motion_module = "{models_tree["motion"]}"\ndino = "{fdd_tree["dino"]}"\n'
                 f'dataset = "{fdd_tree["dataset"]}"\nk_steps = 4\n')
    cfg = load_config(str(p))
    assert cfg.k_steps == 4 and cfg.alpha == 0.5 and cfg.lam == 2.5 and cfg.global_batch == 64
    assert cfg.iterations_sds == 1000 and cfg.iterations_adv == 500 and cfg.lr == 1e-5
    with pytest.raises(ValueError, match="generator_loss"):
        load_config(str(p), {"generator_loss": "wgan"})


def test_dataset_reads_jsonl_csv_frames_and_mp4(fdd_tree):
    from fdd.distill.dataset import FDDDataset

    a = FDDDataset(fdd_tree["dataset"], "manifest.jsonl", num_frames=4, height=16, width=24)
    b = FDDDataset(fdd_tree["dataset"], "manifest.csv", num_frames=4, height=16, width=24)
    key = lambda r: (r.clip, r.instruction, r.output_caption, r.task)
    assert [key(r) for r in a.records] == [key(r) for r in b.records] and len(a) == 3
    assert any(r.clip.endswith(".mp4") for r in a.records)
    for i in range(len(a)):
        fr = a.frames(i, offset_rng=torch.Generator().manual_seed(i))
        assert fr.shape == (4, 3, 16, 24) and 0 <= fr.min() and fr.max() <= 1 and fr.std() > 0.05


@pytest.mark.parametrize("edit,match", [
    (lambda r: r.update(clip="clips/nope.mp4"), "does not exist"),
    (lambda r: r.update(output_caption="  "), "empty output_caption"),
    (lambda r: r.update(instruction=""), "empty instruction"),
    (lambda r: r.update(task="Recolor"), "unknown task 'Recolor'"),
])
def test_dataset_validation_errors_name_the_line(tmp_path, fdd_tree, edit, match):
    import shutil

    from fdd.distill.dataset import DatasetError, FDDDataset
    from fdd.testing.fdd_fixtures import write_manifest

    shutil.copytree(os.path.join(fdd_tree["dataset"], "clips"), tmp_path / "clips")
    rows = [json.loads(x) for x in open(os.path.join(fdd_tree["dataset"], "manifest.jsonl"))]
    edit(rows[1])
    write_manifest(str(tmp_path), rows)
    with pytest.raises(DatasetError, match=match) as ei:
        FDDDataset(str(tmp_path), "manifest.jsonl", num_frames=4)
    assert "manifest.jsonl:2" in str(ei.value)
    with pytest.raises(DatasetError, match=match):
        FDDDataset(str(tmp_path), "manifest.csv", num_frames=4)


def test_dataset_clip_too_short(fdd_tree):
    from fdd.distill.dataset import DatasetError, FDDDataset

    with pytest.raises(DatasetError, match="too short: 8 frames, need 9"):
        FDDDataset(fdd_tree["dataset"], num_frames=9)
    with pytest.raises(DatasetError, match="too short"):
        FDDDataset(fdd_tree["dataset"], num_frames=4, frame_stride=3)  # needs 10


# --------------------------------------------------------------------- models and the trainer


def _snapshot(modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


@pytest.mark.slow
def test_only_lora_and_heads_train_everything_else_bit_identical(models_tree, fdd_tree, loaded, tmp_path):
    tr = _trainer(models_tree, fdd_tree, loaded, tmp_path, iterations_sds=1, iterations_adv=1)
    m = tr.models
    names = m.lora_param_names
    assert names and all("lora_" in n and "motion_modules" not in n for n in names)
    assert not any("lora" in n for n, _ in m.controlnet.named_parameters())
    assert not any("lora" in n for n, _ in m.unet2d.named_parameters())
    trainable = {id(p) for p in tr.lora_params + tr.d_params}
    frozen_modules = [m.unet2d, m.controlnet, m.vae, m.text_encoder, tr.feats.dino]
    frozen = [p for mod in frozen_modules for p in mod.parameters()]
    frozen += [p for n, p in m.student_unet.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad for p in frozen)
    before = _snapshot(frozen_modules) + [{n: p.detach().clone() for n, p in m.student_unet.named_parameters()
                                           if "lora_" not in n}]
    lora0 = [p.detach().clone() for p in tr.lora_params]
    heads0 = [p.detach().clone() for p in tr.d_params]
    orig0 = _snapshot([loaded[0].unet, loaded[1]])
    for _ in range(2):
        tr.train_step()
        assert all(p.grad is None for p in frozen)  # no gradient ever reaches a frozen weight
    after = _snapshot(frozen_modules) + [{n: p.detach().clone() for n, p in m.student_unet.named_parameters()
                                          if "lora_" not in n}]
    for a, b in zip(before, after):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for a, b in zip(orig0, _snapshot([loaded[0].unet, loaded[1]])):  # the shared loaded models too
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a, p) for a, p in zip(lora0, tr.lora_params))
    assert any(not torch.equal(a, p) for a, p in zip(heads0, tr.d_params))
    assert {id(p) for p in tr.opt_g.param_groups[0]["params"]} | \
           {id(p) for p in tr.opt_d.param_groups[0]["params"]} == trainable
    assert [h["phase"] for h in tr.history] == [1, 2]
    assert "g_edit" not in tr.history[0] and "g_edit" in tr.history[1]


@pytest.mark.slow
def test_gradients_flow_through_all_k_steps_and_checkpointing_is_exact(models_tree, fdd_tree, loaded, tmp_path):
    """The loss reaches θ_align through every one of the k student steps (the gradient
    changes when any single step's LoRA contribution is cut), and per-step gradient
    checkpointing computes the same gradient as keeping the whole graph."""
    from fdd.distill.models import adapters_disabled

    grads = {}
    for ckpt in (False, True):
        tr = _trainer(models_tree, fdd_tree, loaded, tmp_path / str(ckpt), k_steps=3, gradient_checkpointing=ckpt)
        items = tr.batch_items(0)[:1]
        cond = tr.conditioning(items, 0)
        x0 = tr.generate(tr._noise(items, 0, "n"), [900, 500, 100], cond)
        (x0 ** 2).mean().backward()
        grads[ckpt] = [p.grad.clone() for p in tr.lora_params]
    for a, b in zip(grads[False], grads[True]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)
    # cut LoRA out of one step at a time: each step contributes to the gradient
    orig_eps = tr.models.student_eps
    full = torch.cat([g.flatten() for g in grads[True]])
    for cut in range(3):
        calls = {"n": 0}

        def eps(x, t, c, cfg, _cut=cut, _calls=calls):
            i = _calls["n"]
            _calls["n"] += 1
            if i == _cut:
                with adapters_disabled(tr.models.student_unet):
                    return orig_eps(x, t, c, cfg)
            return orig_eps(x, t, c, cfg)

        tr.models.student_eps = eps
        for p in tr.lora_params:
            p.grad = None
        tr.cfg.gradient_checkpointing = False
        x0 = tr.generate(tr._noise(items, 0, "n"), [900, 500, 100], cond)
        (x0 ** 2).mean().backward()
        part = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in tr.lora_params])
        assert not torch.allclose(part, full, rtol=1e-3, atol=0), cut
    tr.models.student_eps = orig_eps


@pytest.mark.slow
def test_sds_training_lowers_the_sds_loss(models_tree, fdd_tree, loaded, tmp_path):
    """A few optimiser steps on the SDS objective (the graph through all k student steps into
    θ_align) lower the SDS loss at its stop-gradient point: the teacher residuals sg(ε̂ − ε) of
    the starting student, on a fixed batch, t and ε. (With random tiny teachers the residual
    itself carries no learnable structure; this checks sign and path of the whole update.)"""
    tr = _trainer(models_tree, fdd_tree, loaded, tmp_path, iterations_sds=100, iterations_adv=0, lr=2e-3)
    items = tr.batch_items(0)
    cond = tr.conditioning(items, 0)
    noise = tr._noise(items, 0, "student_noise")
    ts = tr.student_steps(0)
    with torch.no_grad():
        x0 = tr.generate(noise, ts, cond)
        t = torch.tensor([700, 300])
        eps = tr._noise(items, 0, "sds_eps")
        ab = tr._alpha(t).view(-1, 1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        res_e = tr.models.edit_teacher_eps(x_t, t, cond, tr.cfg)
        res_v = tr.models.video_teacher_eps(x_t, t, cond, tr.cfg)
    c = L.sds_weight(tr._alpha(t))

    def objective():
        x = tr.generate(noise, ts, cond)
        return tr.cfg.alpha * tr.cfg.lam * L.sds_loss(x, res_e, eps, c) + \
            tr.cfg.beta * tr.cfg.lam * L.sds_loss(x, res_v, eps, c)

    values = []
    for _ in range(4):
        tr.opt_g.zero_grad()
        loss = objective()
        loss.backward()
        tr.opt_g.step()
        values.append(float(loss.detach()))
    with torch.no_grad():
        values.append(float(objective()))
    assert values[-1] < values[0] - 1e-4, values
    assert all(b < a for a, b in zip(values, values[1:])), values


@pytest.mark.slow
def test_discriminators_separate_teacher_from_student_samples(models_tree, fdd_tree, loaded, tmp_path):
    tr = _trainer(models_tree, fdd_tree, loaded, tmp_path, augment=False, d_lr=3e-3)
    items = tr.batch_items(0)
    cond = tr.conditioning(items, 0)
    with torch.no_grad():
        fake = tr._decode(tr.generate(tr._noise(items, 0, "student_noise"), tr.student_steps(0), cond))
        real_e = tr._decode(tr.teacher_sample(tr.models.edit_teacher_eps, tr._noise(items, 0, "e"), cond))
        real_v = tr._decode(tr.teacher_sample(tr.models.video_teacher_eps, tr._noise(items, 0, "v"), cond))
    keys = [("k", j) for j, _ in items]
    for _ in range(40):
        tr.opt_d.zero_grad()
        d_e = L.discriminator_hinge_loss(tr.d_edit_logits(real_e, cond, keys), tr.d_edit_logits(fake, cond, keys))
        d_v = L.discriminator_hinge_loss(tr.d_video_logits(real_v, cond, keys), tr.d_video_logits(fake, cond, keys))
        L.fdd_discriminator_loss(d_e, d_v).backward()
        tr.opt_d.step()
    with torch.no_grad():
        re_, fe_ = tr.d_edit_logits(real_e, cond, keys), tr.d_edit_logits(fake, cond, keys)
        rv_, fv_ = tr.d_video_logits(real_v, cond, keys), tr.d_video_logits(fake, cond, keys)
    assert (re_.mean(1) > fe_.mean(1)).all() and (rv_.mean(1) > fv_.mean(1)).all()
    assert float(L.discriminator_hinge_loss(re_, fe_)) < 1.0  # chance level is 2
    assert float(L.discriminator_hinge_loss(rv_, fv_)) < 1.0


def _losses(history):
    return [(h["step"], h["phase"], h["loss_g"], h["sds_edit"], h.get("loss_d")) for h in history]


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_loss_sequence(models_tree, fdd_tree, loaded, tmp_path):
    from fdd.distill.trainer import make_trainer

    kw = dict(iterations_sds=2, iterations_adv=2)
    full = _trainer(models_tree, fdd_tree, loaded, tmp_path / "full", **kw)
    full.train()
    # interrupted after 1 iteration by the callback (as ComfyUI's interrupt does), then resumed
    cfg = _cfg(models_tree, fdd_tree, tmp_path / "part", **kw)
    part = make_trainer(cfg, loaded)

    class Stop(Exception):
        pass

    def cb(step, total, log):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        part.train(callback=cb)
    ck = os.path.join(cfg.output_dir, "checkpoint.pt")
    assert os.path.isfile(ck) and not glob.glob(ck + ".tmp*")
    sd = torch.load(ck, weights_only=True)
    assert sd["step"] == 3 and sd["phase"] == 2 and {"lora", "d_edit", "d_video", "opt_g", "opt_d", "rng"} <= set(sd)
    resumed = make_trainer(cfg, loaded)
    assert resumed.step == 3
    resumed.train()
    assert _losses(resumed.history) == _losses(full.history)
    for a, b in zip(full.lora_params, resumed.lora_params):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_export_loads_back_into_the_stack_with_the_same_predictions(models_tree, fdd_tree, loaded, tmp_path):
    """The kohya export read back with read_lora and patched into the plug-and-play stack
    (what 'FDD Apply LoRA to Backbone' does) predicts what the peft student predicts."""
    from fdd.models.lora import read_lora
    from fdd.pipelines import VideoEditStack

    tr = _trainer(models_tree, fdd_tree, loaded, tmp_path, iterations_sds=2, iterations_adv=0, lr=5e-2)
    tr.train()
    path = tr.export_lora()
    lw = read_lora(path)
    assert set(lw.unet) == {k.replace(".", "_") for k in tr.lora_layers()} and not lw.text_encoder
    bb, cn, mm = loaded[0], loaded[1], loaded[2]
    stack = VideoEditStack(bb, controlnet=cn, motion_adapter=mm, loras=[(lw, 1.0)])
    items = tr.batch_items(0)[:1]
    cond = tr.conditioning(items, 0)
    x = tr._noise(items, 0, "probe")
    t = torch.tensor([500])
    with torch.no_grad():
        ours = tr.models.student_eps(x, t, cond, tr.cfg)
        with stack.applied_loras():
            theirs = stack.predict_noise(x, 500, cond.caption, cond.instruction, cond.frames[0])
        plain = stack.predict_noise(x, 500, cond.caption, cond.instruction, cond.frames[0])
    assert torch.allclose(ours, theirs, atol=2e-5), (ours - theirs).abs().max()
    assert not torch.allclose(ours, plain, atol=1e-4)  # the LoRA changed something


def test_edit_plus_lora_combination_trains_and_exports(models_tree, fdd_tree, loaded, tmp_path):
    """§4.4: edit adapter + a subject/style LoRA; input images generated by the LoRA teacher."""
    from fdd.distill.trainer import make_trainer
    from fdd.models.lora import read_lora
    from fdd.testing.fdd_fixtures import write_tiny_lora_dataset

    ds = write_tiny_lora_dataset(str(tmp_path / "ds"))
    cfg = _cfg(models_tree, fdd_tree, tmp_path / "out", combination="edit+lora", teacher_lora=models_tree["lora"],
               motion_module=None, dataset=ds, iterations_sds=1, iterations_adv=1)
    tr = make_trainer(cfg, (loaded[0], loaded[1], None, loaded[3], read_lora(models_tree["lora"])))
    assert not tr.models.video and tr.latent_shape(1)[2] == 1
    # the LoRA teacher is the backbone with the style LoRA merged, the edit teacher without it
    w_lora = dict(tr.models.student_unet.named_parameters())[
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.base_layer.weight"]
    w_plain = tr.models.unet2d.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert not torch.equal(w_lora, w_plain)
    tr.train()
    img = tr._input_images[0]
    assert img.shape == (1, 3, 32, 32) and img.std() > 0
    assert [h["phase"] for h in tr.history] == [1, 2]
    lw = read_lora(tr.export_lora())
    assert lw.unet


@pytest.mark.slow
def test_ablation_switches(models_tree, fdd_tree, loaded, tmp_path):
    with pytest.raises(ValueError, match="iterations_sds: with use_sds off"):
        _trainer(models_tree, fdd_tree, loaded, tmp_path / "x", use_sds=False)
    tr = _trainer(models_tree, fdd_tree, loaded, tmp_path / "a", timestep_sampling="uniform", use_sds=False,
                  k_steps=3, iterations_sds=0, iterations_adv=2)
    tr.train()
    assert [h["timesteps"] for h in tr.history] == [[667, 334, 1]] * 2
    assert [h["phase"] for h in tr.history] == [2, 2]
    for h in tr.history:  # adversarial only: the generator loss is the two hinge terms
        assert h["loss_g"] == pytest.approx(0.5 * h["g_edit"] + 0.5 * h["g_video"])
    tr = _trainer(models_tree, fdd_tree, loaded, tmp_path / "b", use_discriminators=False)
    tr.train()
    assert all("loss_d" not in h for h in tr.history)


# ------------------------------------------------------------------------------------ EVE


def test_eve_edit_first_frame_anchor_and_windows(models_tree, fdd_tree, loaded):
    from fdd.distill.eve import EVEConfig, eve_edit
    from fdd.models.lora import read_lora
    from fdd.pipelines import VideoEditStack
    from fdd.testing.clip import moving_shapes_clip

    bb, cn, mm = loaded[0], loaded[1], loaded[2]
    stack = VideoEditStack(bb, controlnet=cn, motion_adapter=mm, loras=[(read_lora(fdd_tree["aligned_lora"]), 1.0)])
    frames = moving_shapes_clip(6, 32, 32)
    calls = []
    cfg = EVEConfig(steps=3, context_frames=4, context_overlap=2, first_frame_steps=2, seed=3)
    out, lat = eve_edit(stack, frames, "make it snowy", "a snowy scene", cfg,
                        callback=lambda i, n, x: calls.append((i, n)), return_latents=True)
    assert out.shape == frames.shape and out.std() > 1e-3 and calls == [(1, 3), (2, 3), (3, 3)]
    none, lat_none = eve_edit(stack, frames, "make it snowy", "a snowy scene",
                              EVEConfig(steps=3, context_frames=4, context_overlap=2, first_frame="none", seed=3),
                              return_latents=True)
    # frame 0 ends at the edit teacher's first-frame edit (up to DDIM's last alpha_bar < 1)
    from fdd.distill.eve import edit_first_frame
    from fdd.video import frames_to_pixels, vae_encode

    first = edit_first_frame(stack, frames, "make it snowy", "a snowy scene", cfg)
    anchor = vae_encode(bb.vae, frames_to_pixels(first), bb.scaling_factor)[0]
    d_anchor = (lat[0, :, 0] - anchor).abs().mean()
    assert d_anchor < 0.1 * (lat_none[0, :, 0] - anchor).abs().mean()
    assert not torch.equal(lat[0, :, 1:], lat_none[0, :, 1:])  # the anchor propagates to other frames


def test_eve_edit_denoise_starts_from_the_noised_input(models_tree, fdd_tree, loaded):
    """denoise < 1 runs only the last round(steps * denoise) steps, from the input's latent
    noised with the seed's noise, so a light denoise ends near the input latent."""
    from fdd.distill.eve import EVEConfig, eve_edit
    from fdd.models.lora import read_lora
    from fdd.pipelines import VideoEditStack
    from fdd.video import frames_to_pixels, vae_encode
    from fdd.testing.clip import moving_shapes_clip

    bb, cn, mm = loaded[0], loaded[1], loaded[2]
    stack = VideoEditStack(bb, controlnet=cn, motion_adapter=mm, loras=[(read_lora(fdd_tree["aligned_lora"]), 1.0)])
    frames = moving_shapes_clip(4, 32, 32)
    src = vae_encode(bb.vae, frames_to_pixels(frames), bb.scaling_factor).permute(1, 0, 2, 3)
    dist = {}
    for denoise in (0.1, 1.0):
        calls = []
        cfg = EVEConfig(steps=10, context_frames=4, context_overlap=2, first_frame_steps=10, seed=3, denoise=denoise)
        _, lat = eve_edit(stack, frames, "make it snowy", "a snowy scene", cfg,
                          callback=lambda i, n, x: calls.append((i, n)), return_latents=True)
        assert [n for _, n in calls] == [round(10 * denoise)] * round(10 * denoise)
        dist[denoise] = float((lat[0] - src).abs().mean())
    assert dist[0.1] < 0.5 * dist[1.0]
    with pytest.raises(ValueError, match="denoise"):
        eve_edit(stack, frames, "a", "b", EVEConfig(denoise=1.5))


def test_loss_curve_image_edge_cases():
    from fdd.distill.plot import render_loss_curve

    for hist in ([], [{"step": 1, "phase": 2, "loss_g": 0.5, "loss_d": 2.0}],
                 [{"step": i, "phase": 1 + (i > 2), "loss_g": float(i), "sds_edit_gap": 0.1} for i in range(1, 6)],
                 [{"step": 1, "phase": 1, "loss_g": float("nan")}]):
        img = render_loss_curve(hist, 200, 120)
        assert img.shape == (1, 120, 200, 3) and img.dtype == torch.float32 and 0 <= img.min() <= img.max() <= 1


def test_shipped_configs_parse():
    from conftest import ROOT

    from fdd.distill.config import load_config

    files = sorted(glob.glob(os.path.join(ROOT, "configs", "*.toml")) + glob.glob(os.path.join(ROOT, "configs", "*.json")))
    assert len(files) >= 3
    for f in files:
        cfg = load_config(f)
        assert os.path.isabs(cfg.backbone) and os.path.isabs(cfg.output_dir)


@pytest.mark.slow
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(models_tree, fdd_tree, loaded,
                                                                              tmp_path, monkeypatch):
    """Iteration 2's loss turns NaN: the run ends with an error naming the iteration, the LoRA
    is the one after iteration 1 and the checkpoint written on the way out holds step 1."""
    import fdd.distill.trainer as T
    from fdd.numerics import NonFiniteError

    tr = _trainer(models_tree, fdd_tree, loaded, tmp_path / "nan", iterations_sds=3, iterations_adv=0)
    real = T.fdd_generator_loss
    monkeypatch.setattr(T, "fdd_generator_loss",
                        lambda *a, **k: real(*a, **k) * (float("nan") if tr.step >= 1 else 1.0))
    after_one = []

    def cb(step, total, log):
        after_one.extend(p.detach().clone() for p in tr.lora_params)

    with pytest.raises(NonFiniteError, match=r"the FDD losses .* at step 2/3"):
        tr.train(callback=cb)
    assert tr.step == 1 and after_one
    for a, b in zip(after_one, tr.lora_params):
        assert torch.equal(a, b) and torch.isfinite(b).all()
    sd = torch.load(os.path.join(tr.cfg.output_dir, "checkpoint.pt"), weights_only=True)
    assert sd["step"] == 1
