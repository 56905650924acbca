"""Bad-input probes of every pack node through a real ComfyUI server (the reliability suite).

For each shipped API workflow and each pack node in it, every numeric widget input is set to
NaN, +inf, -inf, below its minimum and above its maximum, and every combo input to a value not
in its list; each variant is queued. A probe ends in one of:

- ``refused``: ComfyUI's own validation refused it when queued, naming the node and the input;
- ``error``: the node raised an error whose message names the input;
- ``unclear``: it failed, but nothing names the input;
- ``silent``: it ran to success with the bad value (the failure this suite exists to catch);
- ``crash``: the server stopped answering.

Nothing here imports ComfyUI: the server is driven over HTTP (:mod:`fdd.testing.comfy_server`).
"""

from __future__ import annotations

import copy
import glob
import json
import math
import os
from collections import Counter
from typing import Any, Iterator

from .comfy_server import REPO_ROOT, ComfyServer

BAD_COMBO = "__not_an_option__"


def probes_for(spec) -> list:
    kind = spec[0] if isinstance(spec[0], str) else "COMBO"
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if kind in ("INT", "FLOAT"):
        out = [math.nan, math.inf, -math.inf]
        if opts.get("min") is not None:
            out.append(opts["min"] - 1)
        if opts.get("max") is not None:
            out.append(opts["max"] + 1)
        return out
    if kind == "COMBO":
        return [BAD_COMBO]
    return []


def iter_probes(workflows: dict[str, dict], object_info: dict, prefix: str = "FDD_") -> Iterator[tuple]:
    """(workflow name, node id, class type, input, bad value, prompt) for every probe."""
    for wf_name, wf in sorted(workflows.items()):
        for nid, node in sorted(wf.items(), key=lambda kv: int(kv[0])):
            ct = node["class_type"]
            if not ct.startswith(prefix):
                continue
            info = object_info[ct]["input"]
            specs = {**info.get("required", {}), **info.get("optional", {})}
            for name, value in node["inputs"].items():
                if isinstance(value, list) or name not in specs:
                    continue  # a link, or not a schema input
                for bad in probes_for(specs[name]):
                    prompt = copy.deepcopy(wf)
                    prompt[nid]["inputs"][name] = bad
                    yield wf_name, nid, ct, name, bad, prompt


def _names_input(text: str, name: str) -> bool:
    return f"'{name}'" in text or f"{name}:" in text or f"{name} " in text


def run_probe(server: ComfyServer, nid: str, name: str, prompt: dict, timeout: float = 300) -> tuple[str, str]:
    """Queue one probe; returns (outcome, the message that decided it)."""
    try:
        status, body = server.post("/prompt", {"prompt": prompt, "client_id": server.client_id}, timeout=60)
    except OSError as exc:
        return "crash", f"POST /prompt failed: {exc}"
    if status != 200 or (isinstance(body, dict) and nid in (body.get("node_errors") or {})):
        errs = body.get("node_errors", {}).get(nid, {}) if isinstance(body, dict) else {}
        named = any(e.get("extra_info", {}).get("input_name") == name
                    or str(e.get("details", "")).split(",")[0].strip() == name
                    for e in errs.get("errors", []))
        return ("refused" if named else "unclear"), json.dumps(errs or body)[:400]
    try:
        entry = server.wait(body["prompt_id"], timeout=timeout)
    except (RuntimeError, TimeoutError, OSError) as exc:
        return "crash", str(exc)[:400]
    st = entry.get("status", {})
    if st.get("status_str") == "success":
        return "silent", f"ran to success with {name} = {prompt[nid]['inputs'][name]!r}"
    errs = [m[1] for m in st.get("messages", []) if m[0] == "execution_error"]
    msg = errs[0].get("exception_message", "") if errs else json.dumps(st)[:400]
    ok = bool(errs) and errs[0].get("node_id") == nid and _names_input(msg, name)
    return ("error" if ok else "unclear"), msg[:400]


def fuzz(server: ComfyServer, workflows: dict[str, dict] | None = None) -> dict[str, Any]:
    """Run every probe; returns counts and the rows (bench-schema comparisons included)."""
    if workflows is None:
        workflows = {}
        for p in sorted(glob.glob(os.path.join(REPO_ROOT, "workflows", "api", "*.json"))):
            with open(p) as fh:
                workflows[os.path.basename(p)[:-5]] = json.load(fh)
    info = server.get("/object_info")
    rows = []
    for wf_name, nid, ct, name, bad, prompt in iter_probes(workflows, info):
        outcome, message = run_probe(server, nid, name, prompt)
        rows.append({"workflow": wf_name, "node": nid, "class_type": ct, "input": name,
                     "value": repr(bad), "outcome": outcome, "message": message})
        if outcome == "crash":
            break
    counts = Counter(r["outcome"] for r in rows)
    alive = True
    try:
        server.get("/system_stats", timeout=10)
    except OSError:
        alive = False
    covered = sorted({r["class_type"] for r in rows})
    return {"probes": len(rows), "counts": {k: counts.get(k, 0) for k in ("refused", "error", "unclear",
                                                                          "silent", "crash")},
            "server_alive": alive, "node_types_covered": covered, "rows": rows}


def reliability_json(result: dict, machine: dict) -> dict:
    """The bench-schema document of a fuzz run (``bench/results/reliability.json``)."""
    c = result["counts"]
    comps = [{"name": f"{k}_probes", "ours": c[k], "baseline": result["probes"], "unit": "probes",
              "ratio": c[k] / max(1, result["probes"]), "target": 0.0, "meets": c[k] == 0, "repeats": 1,
              "spread": 0.0} for k in ("silent", "crash", "unclear")]
    clear = c["refused"] + c["error"]
    comps.append({"name": "clear_errors", "ours": clear, "baseline": result["probes"], "unit": "probes",
                  "ratio": clear / max(1, result["probes"]), "target": 1.0, "meets": clear == result["probes"],
                  "repeats": 1, "spread": 0.0})
    per_input: dict[str, dict[str, int]] = {}
    for r in result["rows"]:
        d = per_input.setdefault(f"{r['class_type']}.{r['input']}", {})
        d[r["outcome"]] = d.get(r["outcome"], 0) + 1
    return {"bench": "reliability", "machine": machine, "comparisons": comps,
            "counts": c, "probes": result["probes"], "server_alive": result["server_alive"],
            "node_types_covered": result["node_types_covered"], "outcomes_per_input": per_input,
            "not_clear": [r for r in result["rows"] if r["outcome"] not in ("refused", "error")]}
