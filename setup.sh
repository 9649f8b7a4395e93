#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with projhead and everything its
# encoders, evaluation and tests use. Safe to run again (pip skips what is installed).
#
# torch/torchvision are pinned together: open_clip imports torchvision, and a torchvision
# built for another torch fails to import ("operator torchvision::nms does not exist") and
# then breaks sentence-transformers too. 2.14.1 + 0.29.1 is a pair that works.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# (this machine's pip config names local package folders that may be absent: hide that noise)
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[encoders,eval,export,parquet,scale,dev]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/python -c "import projhead, sentence_transformers, open_clip, bm25s, onnxruntime; print('projhead', projhead.__version__, 'ready in .venv')"
