"""Integration: a real ComfyUI server (CPU, loopback) with this pack and the tiny models;
every shipped API workflow queued unchanged; progress events, /interrupt, comfy-cli."""

from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import COMFY_DIR, ROOT

pytestmark = pytest.mark.integration

API_WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "api", "*.json")))
UI_WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "example_workflows", "*.json"))
                      + glob.glob(os.path.join(ROOT, "workflows", "dev", "*.json")))
PNP_API = os.path.join(ROOT, "workflows", "api", "fdd_plug_and_play_video_edit.json")
PNP_UI = os.path.join(ROOT, "example_workflows", "fdd_plug_and_play_video_edit.json")


def _load(path):
    with open(path) as fh:
        return json.load(fh)


def test_pack_nodes_registered(server):
    info = server.get("/object_info")
    for node in ("FDD_LoadBackbone", "FDD_LoadEditAdapter", "FDD_LoadVideoAdapter", "FDD_LoraLoader",
                 "FDD_LoadT2VUNet", "FDD_PlugAndPlayVideoEdit", "FDD_ASSDOptimize", "FDD_VideoEditMetrics",
                 "FDD_EI2Inflate", "FDD_EI2Tune", "FDD_EI2SaveTuned", "FDD_EI2LoadTuned", "FDD_EI2Edit",
                 "FDD_LoadDINOv2", "FDD_Dataset", "FDD_Align", "FDD_EVEVideoEdit"):
        assert node in info, f"{node} missing; log:\n{server.log_tail()}"
    failed = [ln for ln in server.log_tail(2000).splitlines() if "IMPORT FAILED" in ln]
    assert not [ln for ln in failed if "fdd" in ln], failed


#: node types whose progress bar a workflow test checks (steps input name)
LONG_NODES = {"FDD_PlugAndPlayVideoEdit": "steps", "FDD_ASSDOptimize": "steps", "FDD_EI2Tune": "steps",
              "FDD_Align": "iterations", "FDD_EVEVideoEdit": "steps"}


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=os.path.basename)
def test_api_workflow_runs_unchanged(server, path):
    """Queued as shipped: succeeds; every saved file is non-empty; saved frames share one size
    and are not constant; an mp4 decodes to as many frames as were saved as PNG; the long
    nodes reported progress step by step over the websocket."""
    from PIL import Image
    import numpy as np

    prompt = _load(path)
    pid = server.queue(prompt)
    entry = server.wait(pid, timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    files = server.output_files(entry)
    assert files, "the workflow saved nothing"
    for f in files:
        assert os.path.getsize(f) > 0, f
    pngs = sorted(f for f in files if f.endswith(".png") and "loss" not in os.path.basename(f)
                  and "_input_" not in os.path.basename(f))  # toy graphs also save their input frames
    if pngs:
        arrs = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in pngs])
        assert arrs.std() > 2.0, "saved frames are constant"
        mp4s = [f for f in files if f.endswith(".mp4")]
        if mp4s:
            import av

            with av.open(mp4s[0]) as c:
                decoded = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
            assert len(decoded) == len(pngs) and decoded[0].shape == arrs.shape[1:]
    for node_id, node in prompt.items():
        key = LONG_NODES.get(node["class_type"])
        if key is None:
            continue
        steps = node["inputs"][key]
        if "denoise" in node["inputs"]:  # a partial denoise runs (and reports) only the last steps
            steps = max(1, round(steps * node["inputs"]["denoise"]))
        deadline = time.time() + 5
        while time.time() < deadline and not server.events_of("progress", pid):
            time.sleep(0.1)
        prog = [e for e in server.events_of("progress", pid) if e.get("node") == node_id]
        assert prog, f"no progress events from node {node_id}"
        assert prog[-1]["value"] == steps and all(e["max"] == steps for e in prog)
        assert len(prog) >= steps // 2


def test_plug_and_play_workflow_output_matches_input_clip(server):
    """The shipped plug-and-play workflow edits all 16 frames of the 64x64 demo clip."""
    from PIL import Image

    path = os.path.join(ROOT, "workflows", "api", "fdd_plug_and_play_video_edit.json")
    prompt = _load(path)
    edit = [k for k, v in prompt.items() if v["class_type"] == "FDD_PlugAndPlayVideoEdit"][0]
    prompt[edit]["inputs"]["steps"] = 3  # a fresh prompt (not served from ComfyUI's cache)
    entry = server.wait(server.queue(prompt), timeout=900)
    assert entry["status"]["status_str"] == "success"
    pngs = sorted(f for f in server.output_files(entry) if f.endswith(".png"))
    assert len(pngs) == 16
    assert Image.open(pngs[0]).size == (64, 64)


def test_interrupt_stops_a_long_run_and_server_keeps_serving(server):
    prompt = _load(PNP_API)
    long = copy.deepcopy(prompt)
    edit = [k for k, v in long.items() if v["class_type"] == "FDD_PlugAndPlayVideoEdit"][0]
    long[edit]["inputs"]["steps"] = 500
    long[edit]["inputs"]["seed"] = 123456
    pid = server.queue(long)
    deadline = time.time() + 300
    while time.time() < deadline and not [e for e in server.events_of("progress", pid) if e.get("node") == edit]:
        time.sleep(0.2)
    assert server.events_of("progress", pid), server.log_tail()
    t0 = time.time()
    server.interrupt()
    entry = server.wait(pid, timeout=120)
    assert time.time() - t0 < 60
    msgs = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in msgs, msgs
    prog = [e["value"] for e in server.events_of("progress", pid) if e.get("node") == edit]
    assert max(prog) < 500
    # the next prompt succeeds
    again = copy.deepcopy(prompt)
    again[edit]["inputs"]["steps"] = 2
    entry = server.wait(server.queue(again), timeout=600)
    assert entry["status"]["status_str"] == "success"


def test_bad_input_is_refused_and_server_keeps_serving(server):
    prompt = _load(PNP_API)
    bad = copy.deepcopy(prompt)
    loader = [k for k, v in bad.items() if v["class_type"] == "FDD_LoadBackbone"][0]
    bad[loader]["inputs"]["ckpt_name"] = "does-not-exist.safetensors"
    status, body = server.post("/prompt", {"prompt": bad, "client_id": server.client_id})
    if status == 200:
        # ComfyUI 0.3.75 does not check V3 combo values at validation: the node's own error
        entry = server.wait(body["prompt_id"], timeout=300)
        errs = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert errs and "ckpt_name" in errs[0]["exception_message"]
        assert "does-not-exist.safetensors" in errs[0]["exception_message"]
    else:
        assert status == 400 and "does-not-exist" in json.dumps(body)
    # an input the node itself rejects: overlap >= window -> execution_error naming the input
    bad2 = copy.deepcopy(prompt)
    edit = [k for k, v in bad2.items() if v["class_type"] == "FDD_PlugAndPlayVideoEdit"][0]
    bad2[edit]["inputs"].update(context_frames=4, context_overlap=4, steps=1)
    entry = server.wait(server.queue(bad2), timeout=300)
    errs = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errs and "context_overlap" in errs[0]["exception_message"]
    assert server.get("/system_stats")["system"]


def test_ui_workflows_convert_to_the_api_files(server):
    """Each UI-format workflow converts (comfy-cli's converter, live /object_info) to exactly
    the inputs of its API twin."""
    from comfy_cli.workflow_to_api import convert_ui_to_api

    info = server.get("/object_info")
    assert UI_WORKFLOWS
    for ui_path in UI_WORKFLOWS:
        api_path = os.path.join(ROOT, "workflows", "api", os.path.basename(ui_path))
        assert os.path.exists(api_path), f"{ui_path} has no API twin"
        got = convert_ui_to_api(_load(ui_path), info)
        want = _load(api_path)
        assert {k: v["class_type"] for k, v in got.items()} == {k: v["class_type"] for k, v in want.items()}
        for k in want:
            assert got[k]["inputs"] == want[k]["inputs"], (ui_path, k)


def test_comfy_cli_runs_the_ui_workflow(server, tmp_path):
    comfy = shutil.which("comfy", path=os.path.dirname(sys.executable)) or shutil.which("comfy")
    assert comfy, "comfy-cli is not installed (scripts/setup.sh installs it)"
    env = dict(os.environ, HOME=str(tmp_path), DO_NOT_TRACK="1")
    before = set(server.get("/history?max_items=1000"))
    r = subprocess.run([comfy, "--skip-prompt", "--workspace", COMFY_DIR, "run", "--workflow",
                        PNP_UI, "--wait", "--port", str(server.port), "--timeout", "900"],
                       env=env, capture_output=True, text=True, timeout=960)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    hist = server.get("/history?max_items=1000")
    new = [v for k, v in hist.items() if k not in before]
    assert len(new) == 1, r.stdout[-2000:]
    assert new[0]["status"]["status_str"] == "success"
    assert {v["class_type"] for v in new[0]["prompt"][2].values()} >= {"FDD_PlugAndPlayVideoEdit"}


@pytest.mark.parametrize("backbone,controlnet", [
    ("v1-5-pruned-emaonly.safetensors", "toy_controlnet_edit.safetensors"),
    ("toy_sd1.safetensors", "control_v11e_sd15_ip2p.safetensors"),
], ids=["sd15-backbone+toy-adapter", "toy-backbone+sd15-adapter"])
def test_a_mismatched_model_pair_fails_naming_both_files_and_the_server_keeps_serving(server, backbone,
                                                                                       controlnet):
    """Before: 'The size of tensor a (8) must match the size of tensor b (16)' from inside
    diffusers. Now the sampler refuses the pair before any step, naming both files."""
    prompt = _load(os.path.join(ROOT, "workflows", "api", "fdd_toy_plug_and_play_video_edit.json"))
    loaders = {v["class_type"]: k for k, v in prompt.items()}
    prompt[loaders["FDD_LoadBackbone"]]["inputs"]["ckpt_name"] = backbone
    prompt[loaders["FDD_LoadEditAdapter"]]["inputs"]["controlnet_name"] = controlnet
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "error"
    err = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]
    msg = err["exception_message"]
    assert err["node_type"] == "FDD_PlugAndPlayVideoEdit"
    assert controlnet in msg and backbone in msg and "does not match the backbone" in msg, msg
    assert server.get("/system_stats")["system"]


@pytest.mark.parametrize("backbone", ["toy_sd1.safetensors", "v1-5-pruned-emaonly.safetensors"],
                         ids=["toy-backbone", "tiny-sd-backbone"])
def test_a_mismatched_motion_module_fails_naming_both_files(server, models_tree, backbone):
    """Before: a backbone with another model's motion module was accepted silently or failed
    inside diffusers. A motion module twice as wide as both small backbones (written next to the
    others) is refused when the motion UNet is built, naming both files. (The tiny and toy motion
    modules share the small backbones' widths (32, 64) and are a valid pair for either.)"""
    from diffusers import MotionAdapter

    from fdd.models.motion_formats import save_animatediff_original

    motion = "other_width_motion.safetensors"
    path = os.path.join(os.path.dirname(models_tree["motion"]), motion)
    if not os.path.exists(path):
        save_animatediff_original(path, MotionAdapter(block_out_channels=(64, 128), motion_layers_per_block=1,
                                                      motion_num_attention_heads=8, motion_norm_num_groups=32,
                                                      motion_max_seq_length=32, use_motion_mid_block=False))
    prompt = _load(os.path.join(ROOT, "workflows", "api", "fdd_toy_eve_video_edit.json"))
    loaders = {v["class_type"]: k for k, v in prompt.items()}
    prompt[loaders["FDD_LoadBackbone"]]["inputs"]["ckpt_name"] = backbone
    prompt[loaders["FDD_LoadVideoAdapter"]]["inputs"]["motion_module"] = motion
    if backbone != "toy_sd1.safetensors":  # keep the edit adapter matching the backbone
        prompt[loaders["FDD_LoadEditAdapter"]]["inputs"]["controlnet_name"] = "control_v11e_sd15_ip2p.safetensors"
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "error"
    err = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]
    msg = err["exception_message"]
    assert motion in msg and backbone in msg and "do not match the backbone" in msg, msg
    assert server.get("/system_stats")["system"]


def test_ei2_weights_tuned_on_one_backbone_are_refused_on_another(server):
    """Before: EI² tuned weights loaded silently onto any backbone (the stored fingerprint was
    never checked). Tuned (2 steps) and saved on the tiny SD checkpoint, then loaded onto the toy
    backbone: refused, naming the tuned file, the backbone and what differs (their
    weights: both have one architecture)."""
    prompt = _load(os.path.join(ROOT, "workflows", "api", "fdd_toy_ei2_tune_and_edit.json"))
    ids = {v["class_type"]: k for k, v in prompt.items()}
    keep = {ids[c] for c in ("FDD_ToyClip", "FDD_LoadBackbone", "FDD_EI2Inflate", "FDD_EI2Tune")}
    tune = {k: v for k, v in prompt.items() if k in keep}
    tune[ids["FDD_LoadBackbone"]]["inputs"]["ckpt_name"] = "v1-5-pruned-emaonly.safetensors"
    tune[ids["FDD_EI2Tune"]]["inputs"].update(steps=2, run_name="")
    tune["90"] = {"class_type": "FDD_EI2SaveTuned",
                  "inputs": {"ei2_model": [ids["FDD_EI2Tune"], 0], "filename_prefix": "pair_check"}}
    entry = server.wait(server.queue(tune))
    assert entry["status"]["status_str"] == "success", entry["status"]
    load = {"1": {"class_type": "FDD_LoadBackbone", "inputs": {"ckpt_name": "toy_sd1.safetensors"}},
            "2": {"class_type": "FDD_EI2LoadTuned",
                  "inputs": {"backbone": ["1", 0], "tuned_weights": "pair_check_00001.safetensors"}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}}
    entry = server.wait(server.queue(load))
    assert entry["status"]["status_str"] == "error"
    msg = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]["exception_message"]
    assert "pair_check_00001.safetensors" in msg and "toy_sd1.safetensors" in msg, msg
    # the two small backbones share one architecture: the stored conv_in checksum tells them apart
    assert "tuned on another backbone" in msg and "conv_in checksum" in msg, msg
    assert server.get("/system_stats")["system"]
