"""EI² one-shot tuning (§5): the tuned parameter set, loss going down, spectral norms bounded,
tuned-weight files, checkpoints / resume, and editing on a loaded backbone."""

from __future__ import annotations

import os
import re

import pytest
import torch

from fdd.ei2 import (
    EditConfig,
    InflationConfig,
    TuneConfig,
    diffusion_loss,
    inflate_unet,
    read_tuned_weights,
    save_tuned_weights,
    set_trainable,
    tune_one_shot,
    tuned_state_dict,
)
from fdd.ei2.inflate import load_tuned_state
from fdd.sampling import DDIMSchedule, add_noise
from fdd.testing.tiny import tiny_unet

#: §5 written out independently of the code's regex: W_Q of self- and cross-attention, all of STAM
TUNED = re.compile(r"\.attn1\.to_q\.|\.attn2\.to_q\.|\.temporal\.")


@pytest.fixture(scope="module")
def unet2d():
    return tiny_unet(0)


@pytest.fixture(scope="module")
def video():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 4, 4, 16, 16, generator=g), torch.randn(1, 77, 64, generator=g)


def _eval_loss(model, latents, emb, seed=7):
    g = torch.Generator().manual_seed(seed)
    ac = DDIMSchedule().alphas_cumprod
    total = 0.0
    with torch.no_grad():
        for t in (100, 300, 500, 700, 900):
            eps = torch.randn(latents.shape, generator=g)
            total += float(diffusion_loss(model(add_noise(latents, eps, float(ac[t])), t, emb), eps))
    return total / 5


def test_only_the_listed_parameters_receive_gradients(unet2d, video):
    lat, emb = video
    model = inflate_unet(unet2d, InflationConfig())
    named = set_trainable(model)
    with torch.no_grad():
        for m in model.temporal_modules():
            m.gate.fill_(0.3)  # open the gates so every STAM weight is on the gradient path
    model(lat, 400, emb).square().mean().backward()
    n_blocks = sum(1 for n, _ in model.unet.named_modules() if n.endswith("transformer_blocks.0"))
    assert {n for n, _ in named} == {n for n, _ in model.unet.named_parameters() if TUNED.search(n)}
    per_block = {re.sub(r"^.*transformer_blocks\.\d+\.", "", n) for n, _ in named}
    assert per_block == {"attn1.to_q.weight", "attn2.to_q.weight", "temporal.to_q.weight", "temporal.to_k.weight",
                         "temporal.to_v.weight", "temporal.to_out.weight", "temporal.to_out.bias", "temporal.gate"}
    assert len(named) == 8 * n_blocks
    for name, p in model.unet.named_parameters():
        if TUNED.search(name):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


@pytest.mark.slow
def test_tuning_lowers_the_loss_and_keeps_spectral_norms_at_most_one(unet2d, video):
    lat, emb = video
    model = inflate_unet(unet2d, InflationConfig())
    before = _eval_loss(model, lat, emb)
    res = tune_one_shot(model, lat, emb, TuneConfig(steps=30, learning_rate=3e-3, seed=0))
    after = _eval_loss(model, lat, emb)
    assert len(res.history) == 30 and res.steps_done == 30
    assert after < 0.97 * before, (before, after)
    assert sum(res.history[-5:]) < sum(res.history[:5])
    gates = torch.cat([m.gate.detach().abs() for m in model.temporal_modules()])
    assert gates.max() > 0.1  # STAM is active, not left at the identity
    layers = model.spectral_layers()
    assert len(layers) == 2 * len(model.temporal_modules())
    for m in layers:
        w_bar = m.normalized_weight().detach().double()
        assert torch.linalg.matrix_norm(w_bar, ord=2) <= 1 + 1e-3
        # and the normalisation is the spectral norm, not a looser bound
        assert torch.linalg.matrix_norm(w_bar, ord=2) >= 1 - 1e-3


def test_save_load_gives_identical_outputs(unet2d, video, tmp_path):
    lat, emb = video
    cfg = InflationConfig(ffam_ratio=4, seed=5)
    model = inflate_unet(unet2d, cfg)
    tune_one_shot(model, lat, emb, TuneConfig(steps=3, learning_rate=1e-3))
    path = save_tuned_weights(tmp_path / "tuned.safetensors", model, [1.0, 0.5], {"caption": "x"})
    tw = read_tuned_weights(path)
    assert tw.config == cfg and tw.history == [1.0, 0.5] and tw.train_info["caption"] == "x"
    assert set(tw.tensors) == set(tuned_state_dict(model)) and all(TUNED.search(k) for k in tw.tensors)
    n_all = sum(p.numel() for p in model.unet.parameters())
    assert sum(t.numel() for t in tw.tensors.values()) < 0.5 * n_all  # only the tuned tensors
    fresh = inflate_unet(unet2d, tw.config.with_(seed=99))  # any new-weight init is overwritten
    load_tuned_state(fresh, tw.tensors, path)
    x = torch.randn(2, 4, 4, 16, 16)
    e2 = torch.cat([emb, -emb])
    with torch.no_grad():
        assert torch.equal(model(x, 250, e2), fresh(x, 250, e2))
    # a file tuned on another architecture is refused with the file named
    other = inflate_unet(unet2d, InflationConfig(temporal_module=False))
    from fdd.models.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="tuned.safetensors"):
        load_tuned_state(other, tw.tensors, path)


@pytest.mark.slow
def test_resume_after_interrupt_continues_the_same_loss_sequence(unet2d, video, tmp_path):
    lat, emb = video
    cfg = TuneConfig(steps=8, learning_rate=1e-3, seed=3, checkpoint_every=3)
    full = inflate_unet(unet2d, InflationConfig())
    ref = tune_one_shot(full, lat, emb, cfg)
    ckpt = str(tmp_path / "run.safetensors")

    class Stop(Exception):
        pass

    def stop_at_5(step, total, _):
        if step == 5:
            raise Stop()

    part = inflate_unet(unet2d, InflationConfig())
    with pytest.raises(Stop):
        tune_one_shot(part, lat, emb, cfg, checkpoint_path=ckpt, callback=stop_at_5)
    assert os.path.isfile(ckpt)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # atomic writes leave no temp files
    from fdd.models.state_dict import read_safetensors_metadata

    assert '"step": 5' in read_safetensors_metadata(ckpt)["fdd_ei2_train"]  # the interrupt kept step 5
    again = inflate_unet(unet2d, InflationConfig())
    res = tune_one_shot(again, lat, emb, cfg, checkpoint_path=ckpt, resume=True)
    assert res.resumed_from == 5
    assert res.history == ref.history  # bit-identical continuation
    a, b = tuned_state_dict(full), tuned_state_dict(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resume from a periodic checkpoint (step 6 of a run killed after it) continues as well
    killed = inflate_unet(unet2d, InflationConfig())
    ckpt2 = str(tmp_path / "run2.safetensors")
    with pytest.raises(Stop):
        tune_one_shot(killed, lat, emb, TuneConfig(steps=8, learning_rate=1e-3, seed=3, checkpoint_every=3),
                      checkpoint_path=ckpt2, callback=lambda s, t, _: (_ for _ in ()).throw(Stop()) if s == 6 else None)
    res2 = tune_one_shot(inflate_unet(unet2d, InflationConfig()), lat, emb, cfg, checkpoint_path=ckpt2, resume=True)
    assert res2.resumed_from == 6 and res2.history == ref.history
    # other settings or another video are refused
    with pytest.raises(ValueError, match="learning_rate"):
        tune_one_shot(inflate_unet(unet2d, InflationConfig()), lat, emb,
                      TuneConfig(steps=8, learning_rate=2e-3, seed=3), checkpoint_path=ckpt, resume=True)
    with pytest.raises(ValueError, match="input frames"):
        tune_one_shot(inflate_unet(unet2d, InflationConfig()), lat + 1, emb, cfg, checkpoint_path=ckpt, resume=True)


def test_gradient_checkpointing_gives_the_same_training(unet2d, video):
    lat, emb = video
    a = inflate_unet(unet2d, InflationConfig())
    b = inflate_unet(unet2d, InflationConfig())
    ra = tune_one_shot(a, lat, emb, TuneConfig(steps=2, learning_rate=1e-3))
    rb = tune_one_shot(b, lat, emb, TuneConfig(steps=2, learning_rate=1e-3, gradient_checkpointing=True))
    assert ra.history == pytest.approx(rb.history, rel=1e-5)
    sa, sb = tuned_state_dict(a), tuned_state_dict(b)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_tune_and_edit_on_a_loaded_backbone(models_tree):
    from fdd.ei2 import ei2_edit, ei2_tune
    from fdd.models.sd1 import load_sd1
    from fdd.testing.clip import moving_shapes_clip

    bb = load_sd1(models_tree["checkpoint"], tokenizer=models_tree["tokenizer"])
    frames = moving_shapes_clip(8, 48, 40)
    seen = []
    model, _res, used = ei2_tune(bb, InflationConfig(), frames, "a red ball and a blue square",
                                TuneConfig(steps=3, learning_rate=1e-3), num_frames=4, stride=2, size=32,
                                callback=lambda s, t, _: seen.append((s, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert used.shape == (4, 32, 24, 3)  # 48x40 scaled to 32 on the long side, cut to multiples of 8
    assert torch.allclose(used[1], torch.nn.functional.interpolate(
        frames[2:3].permute(0, 3, 1, 2), size=(32, 24), mode="bilinear", antialias=True,
        align_corners=False).permute(0, 2, 3, 1)[0], atol=2e-2)
    steps = []
    out = ei2_edit(bb, model, used, "a green ball", config=EditConfig(steps=3, cfg=7.5),
                   callback=lambda s, t, _: steps.append((s, t)))
    assert out.shape == used.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert steps == [(i, 6) for i in range(1, 7)]  # inversion then sampling, one count
    again = ei2_edit(bb, model, used, "a green ball", config=EditConfig(steps=3, cfg=7.5))
    assert torch.equal(out, again)  # DDIM inversion + DDIM sampling is deterministic
    noise = ei2_edit(bb, model, used, "a green ball", config=EditConfig(steps=3, init="noise", seed=1))
    assert not torch.allclose(noise, out)
    with pytest.raises(ValueError, match="num_frames"):
        ei2_tune(bb, InflationConfig(), frames, "x", TuneConfig(steps=1), num_frames=8, stride=2)


def test_tuned_weights_refuse_another_backbone():
    """The base fingerprint stored with tuned weights is checked when they are loaded: the same
    backbone passes, another (other conv_in weights, or another architecture) is refused naming
    the file and what differs; files without a fingerprint are let through."""
    from fdd.ei2 import TunedWeights, check_tuned_base
    from fdd.ei2.inflate import base_fingerprint
    from fdd.models.errors import ModelLoadError
    from fdd.testing.tiny import tiny_unet

    a, b = tiny_unet(seed=0), tiny_unet(seed=1)
    tw = TunedWeights(tensors={}, config=None, base=base_fingerprint(a), source="tuned.safetensors")
    check_tuned_base(tw, a, "a.safetensors")
    with pytest.raises(ModelLoadError, match=r"tuned\.safetensors.*tuned on another backbone than "
                                             r"'b\.safetensors'.*conv_in checksum"):
        check_tuned_base(tw, b, "b.safetensors")
    other = dict(tw.base, block_out_channels=[64, 128])
    with pytest.raises(ModelLoadError, match="block_out_channels"):
        check_tuned_base(TunedWeights(tensors={}, config=None, base=other, source="t"), a)
    check_tuned_base(TunedWeights(tensors={}, config=None, base={}, source="old"), b)


@pytest.mark.slow
def test_tuning_repeats_bit_exactly_in_separate_processes(tmp_path):
    """Two uninterrupted tuning runs with one seed, each in a fresh process (2 threads), give the
    same loss sequence and the same tuned tensors, bit for bit."""
    import hashlib
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import hashlib, json, sys, torch\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})\n"
        "torch.set_num_threads(2)\n"
        "from fdd.ei2 import InflationConfig, TuneConfig, inflate_unet, tune_one_shot\n"
        "from fdd.ei2.tune import tuned_state_dict\n"
        "from fdd.testing.tiny import tiny_unet\n"
        "g = torch.Generator().manual_seed(1)\n"
        "lat, emb = torch.randn(1, 4, 4, 16, 16, generator=g), torch.randn(1, 77, 64, generator=g)\n"
        "m = inflate_unet(tiny_unet(0), InflationConfig())\n"
        "r = tune_one_shot(m, lat, emb, TuneConfig(steps=6, learning_rate=1e-3, seed=3))\n"
        "h = hashlib.sha256(json.dumps(r.history).encode())\n"
        "for k, v in sorted(tuned_state_dict(m).items()):\n"
        "    h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())\n"
        "print(h.hexdigest())\n")
    outs = [subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for o in outs:
        assert o.returncode == 0, o.stderr[-2000:]
    digests = [o.stdout.strip().splitlines()[-1] for o in outs]
    assert digests[0] == digests[1] and len(digests[0]) == len(hashlib.sha256().hexdigest())
