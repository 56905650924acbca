"""Integration: every shipped UI workflow in the real ComfyUI frontend (headless Chromium), served
by a real ComfyUI server with this pack and the tiny models tree.

For each UI file: it is built from its API twin (no drift), it loads with no missing node types
and no page errors, the prompt the page would queue equals its API twin input for input, the
widgets hold the file's values in the file's order, and no two node boxes overlap. The toy
workflows are queued from the page (Run) and complete.

Another frontend build: ``FDD_FRONT_END_ROOT=DIR/comfyui_frontend_package/static`` (passed to
ComfyUI as ``--front-end-root``). CI installs Chromium and playwright (scripts/setup.sh) and never
skips these tests; elsewhere they skip with the reason when the browser is missing.
"""

from __future__ import annotations

import glob
import json
import os
import time

import pytest

from conftest import ROOT, start_comfy_server

pytestmark = pytest.mark.integration

PUBLISHED = sorted(glob.glob(os.path.join(ROOT, "example_workflows", "*.json")))
DEV = sorted(glob.glob(os.path.join(ROOT, "workflows", "dev", "*.json")))
UI_WORKFLOWS = PUBLISHED + DEV
TOY = [p for p in PUBLISHED if os.path.basename(p).startswith("fdd_toy_")]


def _load(path):
    with open(path) as fh:
        return json.load(fh)


def _api_twin(ui_path):
    return _load(os.path.join(ROOT, "workflows", "api", os.path.basename(ui_path)))


@pytest.fixture(scope="module")
def server(models_tree, tmp_path_factory):
    root = os.environ.get("FDD_FRONT_END_ROOT")
    srv = start_comfy_server(models_tree, tmp_path_factory, "comfy_fe", ("--front-end-root", root) if root else ())
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


@pytest.fixture(scope="module")
def page(server):
    from fdd.testing.frontend import Frontend, browser_missing_reason

    reason = browser_missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the real-frontend tests must run in CI: {reason}")
        pytest.skip(reason)
    with Frontend(server.url) as fe:
        yield fe


def test_the_shipped_set_is_split_as_the_catalog_says():
    """Published workflows (example_workflows/, each with a .jpg thumbnail) and development ones
    (workflows/dev/) are exactly the catalog's, one UI file per API twin."""
    import tomllib

    with open(os.path.join(ROOT, "workflows", "catalog.toml"), "rb") as fh:
        cat = tomllib.load(fh)
    names = lambda paths: {os.path.splitext(os.path.basename(p))[0] for p in paths}  # noqa: E731
    assert names(PUBLISHED) == {n for n, e in cat.items() if e["published"]}
    assert names(DEV) == {n for n, e in cat.items() if not e["published"]}
    assert names(glob.glob(os.path.join(ROOT, "workflows", "api", "*.json"))) == set(cat)
    for p in PUBLISHED:
        thumb = p[:-5] + ".jpg"
        assert os.path.getsize(thumb) > 5000, f"{thumb} missing or empty"
    assert not glob.glob(os.path.join(ROOT, "workflows", "*.json")), \
        "UI workflows live in example_workflows/ or workflows/dev/"


def test_ui_files_are_built_from_their_api_twins(object_info):
    """Each UI file equals what scripts/build_workflows.py makes of its API twin with the live
    schemas: the two formats cannot drift apart."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_workflows",
                                                  os.path.join(ROOT, "scripts", "build_workflows.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    built = mod.build_all(object_info)
    assert sorted(built) == sorted(UI_WORKFLOWS)
    for path, ui in built.items():
        assert _load(path) == json.loads(json.dumps(ui)), \
            f"{os.path.relpath(path, ROOT)} is stale: run scripts/build_workflows.py"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=os.path.basename)
def test_workflow_loads_in_the_real_frontend_as_its_api_twin(page, object_info, path):
    from fdd.testing.ui_workflow import boxes_overlap, schema_inputs

    ui, api = _load(path), _api_twin(path)
    got = page.load(ui)
    assert got["missing"] == [], f"missing node types {got['missing']}"
    assert got["errors"] == [], f"page errors while loading: {got['errors']}"
    prompt = got["prompt"]
    assert sorted(prompt, key=int) == sorted(api, key=int), "the page queues other nodes"
    for nid, node in api.items():
        assert prompt[nid]["class_type"] == node["class_type"]
        want, have = schema_inputs(node, prompt[nid], object_info[node["class_type"]])
        assert have == want, f"node {nid} ({node['class_type']}): page sends {have}, API twin has {want}"
    saved = {n["id"]: n for n in got["saved"]["nodes"]}
    for n in ui["nodes"]:
        assert saved[n["id"]].get("widgets_values", []) == n["widgets_values"], \
            f"node {n['id']} ({n['type']}): the frontend builds other widgets than the file lists"
    from fdd.testing.ui_workflow import MIN_SIZES

    boxes = list(got["boxes"].items())
    for nid, b in boxes:  # every widget visible (media previews scale to their node instead)
        if b["type"] not in MIN_SIZES and b["min"] is not None:
            assert b["size"][0] >= b["min"][0] - 0.5 and b["size"][1] >= b["min"][1] - 0.5, \
                f"node {nid} ({b['type']}) is drawn {b['size']}, smaller than its content {b['min']}"
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            assert not boxes_overlap(ba["box"], bb["box"]), \
                f"nodes {a} ({ba['type']}) and {b} ({bb['type']}) overlap: {ba['box']} / {bb['box']}"


@pytest.mark.parametrize("path", TOY, ids=os.path.basename)
def test_toy_workflow_runs_from_the_page(page, server, path):
    """Loaded and queued as a user presses Run: the server runs it to success with the
    shipped toy models."""
    before = set(server.get("/history"))
    page.load(_load(path))
    page.queue()
    deadline = time.time() + 600
    entry = None
    while time.time() < deadline:
        new = [k for k in server.get("/history") if k not in before]
        if new:
            entry = server.wait(new[0], timeout=max(1.0, deadline - time.time()))
            break
        time.sleep(0.5)
    assert entry is not None, f"nothing reached the server's history; console: {page.console[-10:]}"
    status = entry["status"]
    assert status["status_str"] == "success", json.dumps(status["messages"])[:3000]
    assert server.output_files(entry), "the workflow saved nothing"
