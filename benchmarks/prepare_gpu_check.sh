#!/usr/bin/env bash
# Prepare, on the development machine, what the prepared GPU call carries (see
# benchmarks/GPU_CHECK.md): the Fashion-MNIST IDX files and the reference weights in
# .gpucheck/ (ignored by git, named in the call's `carry`), and the committed reference
# digests benchmarks/gpu_check_digests.json (rewritten only if they changed: then commit it).
# Then a quick check that the carried data loads and that the tree fits the 64 MiB limit.
#
#   benchmarks/prepare_gpu_check.sh            # PYTHON=... to choose the interpreter
#   DEVICE_TORCH=2.11.0 benchmarks/prepare_gpu_check.sh   # also the device's torch version
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SRC=${FASHION_MNIST_SRC:-/usr/share/datasets/fashion-mnist}
DEST=.gpucheck/fashion-mnist
mkdir -p "$DEST"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ -f "$SRC/$f.gz" ]; then
    cp "$SRC/$f.gz" "$DEST/$f.gz"
  elif [ -f "$SRC/$f" ]; then
    gzip -c "$SRC/$f" > "$DEST/$f.gz"
  else
    echo "prepare_gpu_check: $SRC has no $f(.gz); set FASHION_MNIST_SRC to a folder with the IDX files" >&2
    exit 1
  fi
done

echo "== reference digests (pinned CPU environment, this machine; a minute or two)"
PYTHONPATH=$ROOT "$PYTHON" benchmarks/gpu_check.py --write-reference

# The device's torch differs from the project's pin; with DEVICE_TORCH=2.11.0 (the device's,
# see the device notes) the digests are also computed here with that torch, so that the
# device's comparison separates "another machine" from "another torch". Its wheel (about
# 530 MB) goes to $TMPDIR, not into the tree; it borrows the venv's CUDA libraries to import
# (only the CPU is used).
if [ -n "${DEVICE_TORCH:-}" ]; then
  site=${TMPDIR:-/tmp}/gpucheck-torch-$DEVICE_TORCH
  if [ ! -d "$site/torch" ]; then
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "torch==$DEVICE_TORCH" -d "$site.dl"
    "$PYTHON" -m pip install -q --no-deps --no-compile --target "$site" "$site.dl"/torch-*.whl
    nv=$("$PYTHON" -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
    if [ -n "$nv" ]; then ln -sfn "$nv" "$site/nvidia"; fi
  fi
  echo "== reference digests with torch $DEVICE_TORCH"
  PYTHONPATH=$site:$ROOT "$PYTHON" benchmarks/gpu_check.py --write-reference
fi

echo "== the carried data loads"
RMPM_FASHION_MNIST_DIR=$ROOT/$DEST PYTHONPATH=$ROOT "$PYTHON" - <<'PY'
import os
from rmpm.pipeline import data
for split in ("train", "test"):
    d = data.load("fashion_mnist", split, download=False)
    print(f"fashion_mnist {split}: {d.n} images {tuple(d.x.shape[1:])} from {os.environ['RMPM_FASHION_MNIST_DIR']}")
PY

echo "== size of what travels (limit 64 MiB: tracked + untracked-not-ignored files + .gpucheck)"
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carried=$(du -sb .gpucheck | cut -f1)
total=$((tree + carried))
awk -v t="$tree" -v c="$carried" 'BEGIN { printf "tree %.1f MiB + .gpucheck %.1f MiB = %.1f MiB\n", t/2^20, c/2^20, (t+c)/2^20 }'
if [ "$total" -ge $((64 * 1048576)) ]; then
  echo "prepare_gpu_check: over the 64 MiB limit" >&2
  exit 1
fi
echo "ready: run the call in benchmarks/GPU_CHECK.md"
