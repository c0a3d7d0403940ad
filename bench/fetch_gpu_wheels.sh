#!/usr/bin/env bash
# Fill bench/wheels/ (git-ignored) with the wheels bench/gpu_check.sh installs on a GPU machine
# that has Python 3.12, torch and no network: the ROS 2 Python wheels of requirements-ros.txt
# (less the lint tools) and rosbags, for CPython 3.12 on manylinux x86_64, with their
# dependencies. torch is never fetched. Packages published only as source (empy, lark-parser)
# are built into wheels here. The GPU machines lent to this project come with numpy, OpenCV,
# PyYAML, tqdm, pytest, pytest-timeout and onnxruntime; --also fetches any of them for a
# machine without (e.g. --also numpy,opencv-python-headless,pytest: versions as pinned in
# requirements.txt).
#
#   bash bench/fetch_gpu_wheels.sh [--also PKG[,PKG...]] [--without PKG[,PKG...]] [--budget-mib N]
#
# --without (default: numpy,PyYAML,setuptools,typing-extensions, less what --also names) drops
# packages the machine has even where another one depends on them. The total is checked against
# --budget-mib (default: 64 MiB, all that travels to the GPU machine, less the tracked files of
# the tree); over it, the script names the largest wheels and exits 3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/bench/wheels"
PYTHON="${PYTHON:-python3}"
WITHOUT="numpy,PyYAML,setuptools,typing-extensions"
ALSO=""
BUDGET_MIB=""
while [ $# -gt 0 ]; do
  case "$1" in
    --without) WITHOUT="$2"; shift 2 ;;
    --also) ALSO="$2"; shift 2 ;;
    --budget-mib) BUDGET_MIB="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "fetch_gpu_wheels: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "$BUDGET_MIB" ]; then
  tree=$(git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 du -cb) | tail -n1 | cut -f1)
  BUDGET_MIB=$(( 64 - (tree + 1048575) / 1048576 ))
fi
for pkg in ${ALSO//,/ }; do  # asked for: not left out
  WITHOUT=$(echo ",$WITHOUT," | sed "s/,${pkg},/,/I; s/^,//; s/,$//")
done

# What the GPU check needs besides torch (versions pinned as in requirements*.txt).
pin() { grep -iE "^$1==" "$ROOT/requirements.txt" | head -n1; }
REQS="$(mktemp)"
trap 'rm -f "$REQS"' EXIT
grep -vE '^\s*(#|$)' "$ROOT/requirements-ros.txt" | grep -vE 'ament-flake8|ament-pep257' > "$REQS"
for pkg in rosbags ${ALSO//,/ }; do
  line="$(pin "$pkg")"
  [ -n "$line" ] || { echo "fetch_gpu_wheels: $pkg is not pinned in requirements.txt" >&2; exit 2; }
  echo "$line" >> "$REQS"
done

rm -rf "$DEST"
mkdir -p "$DEST"
# Source-only packages the ROS wheels depend on: pure Python, built once into wheels here.
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$DEST" empy==4.2.1 lark-parser==0.12.0
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp
          --abi cp312 --abi abi3 --abi none
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux_2_28_x86_64 --platform any)
"$PYTHON" -m pip download --quiet "${PLATFORM[@]}" --find-links "$DEST" --dest "$DEST" \
  -r "$REQS"
# Left out: their pins go (the machine's own versions count) and so do their wheels, also
# where another package depends on them.
for pkg in ${WITHOUT//,/ }; do
  sed -i "/^${pkg}==/Id" "$REQS"
  find "$DEST" -maxdepth 1 -iname "${pkg//-/_}-*.whl" -delete
done
if ls "$DEST" | grep -qiE '^(torch|nvidia|triton)[-_]'; then
  echo "fetch_gpu_wheels: a dependency pulled in torch or CUDA wheels; check $DEST" >&2
  exit 4
fi
cp "$REQS" "$DEST/requirements-gpu.txt"

total=$(du -cb "$DEST"/*.whl | tail -n1 | cut -f1)
mib=$(( (total + 1048575) / 1048576 ))
echo "fetch_gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, ${mib} MiB in $DEST" \
  "(budget ${BUDGET_MIB} MiB)"
if [ "$mib" -gt "$BUDGET_MIB" ]; then
  echo "fetch_gpu_wheels: over the ${BUDGET_MIB} MiB budget; largest:" >&2
  ls -S -s --block-size=M "$DEST"/*.whl | head -n 4 >&2
  echo "  leave out what the GPU machine has with --without (e.g. numpy,opencv-python-headless)" >&2
  exit 3
fi
