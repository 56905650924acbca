"""What the Registry and ComfyUI-Manager read: pyproject fields through comfy-cli's own parser,
the license file, the icon, the bounded diffusers requirement."""

from __future__ import annotations

import os
import re

from conftest import ROOT


def test_registry_fields_parse_complete():
    from comfy_cli.registry.config_parser import extract_node_configuration

    cfg = extract_node_configuration(os.path.join(ROOT, "pyproject.toml"))
    p, c = cfg.project, cfg.tool_comfy
    assert p.license.file == "LICENSE" and "Apache License" in open(os.path.join(ROOT, "LICENSE")).read()
    assert p.supported_comfyui_version.startswith(">=")  # a bound the validator accepted
    assert p.supported_os and p.supported_accelerators
    assert c.publisher_id and c.display_name
    icon = c.icon.rsplit("/", 1)[-1]
    assert c.icon.startswith("https://") and os.path.getsize(os.path.join(ROOT, icon)) > 1000
    diffusers = [d for d in p.dependencies if d.startswith("diffusers")]
    assert diffusers and "<" in diffusers[0], "diffusers needs an upper bound: its internals are used"
    with open(os.path.join(ROOT, "requirements.txt")) as fh:
        req = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    assert req == p.dependencies, "requirements.txt (ComfyUI-Manager) and pyproject disagree"


def test_template_folder_is_example_workflows():
    """ComfyUI's template route lists *.json directly under example_workflows/ (and, as aliases,
    workflows/ ...): only shipped UI workflows may sit there."""
    import json

    for folder in ("example_workflows", "workflows"):
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.endswith(".json"):
                assert folder == "example_workflows", f"{folder}/{name} would be listed as a template"
                with open(os.path.join(ROOT, folder, name)) as fh:
                    wf = json.load(fh)
                assert "nodes" in wf and "links" in wf, f"{name} is not a UI workflow"
                assert re.fullmatch(r"[a-z0-9_]+\.json", name)
