#!/usr/bin/env bash
# The pack at real SD 1.5 size on a GPU machine (issue 25, GPU part): see bench/scale.py.
# Run from the repository root with $OUT set (results: $OUT/scale_gpu.json, log: $OUT/scale_gpu.log).
# Needs .whl/ (diffusers 0.42.1, kornia 0.9.0, kornia_rs 0.2.0 wheels for cp312 manylinux) carried
# along; fixtures (~4.6 GB of random SD 1.5-size weights) go to /tmp, never into the repository.
# Sections stop being started after 300 s; the whole Python run is cut at 400 s (the JSON is
# rewritten after every section, so a cut leaves the finished sections).
set -o pipefail; mkdir -p "$OUT" && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && timeout 400 python3 bench/scale.py --device cuda --size full --models /tmp/fdd_scale_models --out "$OUT/scale_gpu.json" --budget-s 300 2>&1 | tee "$OUT/scale_gpu.log"
