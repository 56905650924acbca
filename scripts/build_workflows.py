"""Build every shipped UI workflow from its API twin, the live node schemas and the catalog.

    .venv/bin/python scripts/build_workflows.py [--thumbnails] [--front-end-root DIR]

Starts a real ComfyUI (CPU) with this pack and the tiny models tree, reads ``/object_info``, and
for each ``workflows/api/NAME.json`` writes the UI file (``fdd.testing.ui_workflow.convert``) to
``example_workflows/NAME.json`` when ``workflows/catalog.toml`` publishes it, else to
``workflows/dev/NAME.json``. ``--thumbnails`` also opens each published workflow in the real
frontend (headless Chromium) and saves a screenshot of the canvas as ``example_workflows/NAME.jpg``.
The test suite checks that the files equal what this script writes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

API_DIR = os.path.join(ROOT, "workflows", "api")
CATALOG = os.path.join(ROOT, "workflows", "catalog.toml")
PUBLISHED_DIR = os.path.join(ROOT, "example_workflows")
DEV_DIR = os.path.join(ROOT, "workflows", "dev")


def load_catalog() -> dict:
    import tomllib

    with open(CATALOG, "rb") as fh:
        cat = tomllib.load(fh)
    names = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(API_DIR, "*.json"))}
    if set(cat) != names:
        raise SystemExit(f"workflows/catalog.toml and workflows/api/ disagree: only in the catalog "
                         f"{sorted(set(cat) - names)}, only in api/ {sorted(names - set(cat))}")
    return cat


def ui_path(name: str, entry: dict) -> str:
    return os.path.join(PUBLISHED_DIR if entry.get("published") else DEV_DIR, name + ".json")


def build_all(object_info: dict) -> dict[str, dict]:
    """{UI file path: UI workflow} for every API twin."""
    from fdd.testing.ui_workflow import convert

    out = {}
    for name, entry in sorted(load_catalog().items()):
        with open(os.path.join(API_DIR, name + ".json")) as fh:
            api = json.load(fh)
        out[ui_path(name, entry)] = convert(api, object_info, entry)
    return out


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thumbnails", action="store_true", help="also screenshot each published workflow")
    ap.add_argument("--front-end-root", default=None, help="serve this frontend build instead of ComfyUI's pinned one")
    ap.add_argument("--models", default=os.path.join(ROOT, ".models", "tiny"))
    a = ap.parse_args(argv)

    from fdd.testing.comfy_server import ComfyServer, prepare_demo_inputs
    from fdd.testing.models_tree import write_models_tree

    write_models_tree(a.models)
    extra = ("--front-end-root", a.front_end_root) if a.front_end_root else ()
    with tempfile.TemporaryDirectory() as work, ComfyServer(work, a.models, extra_args=extra) as srv:
        prepare_demo_inputs(srv)
        files = build_all(srv.get("/object_info"))
        for path, ui in files.items():
            write_json(path, ui)
            print(os.path.relpath(path, ROOT))
        keep = set(files)
        for stale in glob.glob(os.path.join(PUBLISHED_DIR, "*.json")) + glob.glob(os.path.join(DEV_DIR, "*.json")):
            if stale not in keep:
                os.remove(stale)
                print("removed", os.path.relpath(stale, ROOT))
        if a.thumbnails:
            from fdd.testing.frontend import Frontend

            with Frontend(srv.url, viewport=(2200, 1100)) as fe:
                for path, ui in files.items():
                    if os.path.dirname(path) == PUBLISHED_DIR:
                        fe.load(ui)
                        print(os.path.relpath(fe.screenshot(path[:-5] + ".jpg"), ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
