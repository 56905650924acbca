"""Reliability: every pack node's numeric and combo inputs probed with bad values through a real
ComfyUI server (``fdd.testing.fuzz``); counts to ``bench/results/reliability.json``.

    .venv/bin/python bench/reliability.py

Targets: silent successes 0, crashes 0, unclear errors 0 (every probe refused or failed with an
error that names the input). ``tests/test_fuzz_nodes.py`` runs the same probes in CI.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import common  # noqa: F401  (puts the repo root on sys.path)


def main() -> int:
    from fdd.testing.comfy_server import ComfyServer, prepare_demo_inputs
    from fdd.testing.fuzz import fuzz, reliability_json
    from fdd.testing.models_tree import write_models_tree

    models = os.path.join(common.models_root(), "reliability")
    write_models_tree(models)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as work, ComfyServer(work, models) as srv:
        prepare_demo_inputs(srv)
        result = fuzz(srv)
    doc = reliability_json(result, common.machine_info("cpu"))
    doc["seconds"] = round(time.time() - t0, 1)
    path = common.write_text_atomic(os.path.join(common.RESULTS_DIR, "reliability.json"),
                                    json.dumps(common.json_safe(doc), indent=1) + "\n")
    print(doc["counts"], f"{doc['probes']} probes in {doc['seconds']} s ->", path)
    bad = [r for r in result["rows"] if r["outcome"] in ("silent", "unclear", "crash")]
    for r in bad[:40]:
        print(" ", r["outcome"], r["workflow"], r["class_type"], r["input"], r["value"], r["message"][:160])
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
