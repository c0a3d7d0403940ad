#!/usr/bin/env bash
# The GPU path measured in one go, on a machine with Python 3.12, torch (CUDA) and no network.
#
#   bash bench/gpu_check.sh [--dry-run] OUT
#
# Steps (all within about 8 minutes; their output goes to OUT/gpu_check.log):
#   1. install   the wheels in bench/wheels/ (made by bench/fetch_gpu_wheels.sh) into a venv
#                that sees the machine's torch; check the imports and CUDA;
#   2. tests     the CUDA tests (pytest -k cuda: engines, pipeline, postprocess);
#   3. bench     bench/bench_inference.py: forward (ERFNet 512x256 and 1024x512, batch 1, fp32,
#                fp16, bf16), pipeline, node end to end 2048x1024 at 30 Hz;
#   4. engines   bench/bench_engines.py: none / channels_last / cuda_graphs at 1024x512 in fp32,
#                fp16 and bf16, batch 1 and 8 (8 cameras);
#   5. engines-erfnet  bench/bench_engines.py with ERFNet (models/erfnet_synth.pt; steps 3-4
#                run the default model, ESPNetv2 s=2.0): none / channels_last / cuda_graphs at
#                1024x512 in fp32 and fp16, batch 1;
#   6. bench-8cams  bench_inference.py again, the node with 8 cameras at 30 Hz;
#   7. engines-compile  torch.compile at 1024x512 fp16 (compiling takes a minute or more);
# and writes OUT/gpu_check.json: the device, each step's command, exit status and seconds. The
# results are OUT/engines/*.json (3), OUT/bench/*.json and OUT/bench-8cams/*.json: seven files in
# all, none deeper than one folder. The venv goes to $GPU_CHECK_WORK (default
# /tmp/seg_gpu_check), not into OUT.
#
# --dry-run (automatic when torch sees no CUDA) runs every step on the CPU, quickly and small:
# the wheel folder is checked for CPython 3.12 instead of installed, the tests run (the CUDA ones
# skip), and the benchmarks run with a few iterations. A failed step does not stop the others;
# the exit status is that of the first failed step (0 when all passed).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
OUT=""
INSTALL_STEP=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --install-step) INSTALL_STEP=1 ;;  # internal: step 1 alone, run by the steps below
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $arg" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done
[ -n "$OUT" ] || { echo "usage: bash bench/gpu_check.sh [--dry-run] OUT" >&2; exit 2; }
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${GPU_CHECK_WORK:-/tmp/seg_gpu_check}"
LOG="$OUT/gpu_check.log"
mkdir -p "$WORK"
[ "$INSTALL_STEP" = 1 ] || : > "$LOG"
WHEELS="$ROOT/bench/wheels"
PYTHON="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-460}"  # steps that would end later are cut short or left out
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}" ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA PYTHONUNBUFFERED=1
cd "$ROOT" || exit 2

if [ "$DRY" = 0 ] && [ "$INSTALL_STEP" = 0 ] && ! "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' \
    2>/dev/null; then
  echo "gpu_check: $PYTHON has no torch with CUDA here: dry run"
  DRY=1
fi
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp
          --abi cp312 --abi abi3 --abi none
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux_2_28_x86_64 --platform any)

STEPS_JSON=""
FIRST_RC=0
# run NAME BUDGET_S COMMAND...: run a step with a time limit, log it, record it.
run() {
  local name="$1" budget="$2"
  shift 2
  local now left rc t0
  now=$(date +%s)
  left=$(( BUDGET_S - (now - START) ))
  [ "$budget" -gt "$left" ] && budget=$left
  if [ "$budget" -lt 15 ]; then
    echo "gpu_check: $name left out (time budget of ${BUDGET_S} s spent)"
    rc=124
    STEPS_JSON+="{\"step\": \"$name\", \"rc\": null, \"skipped\": \"time budget spent\"},"
  else
    echo "gpu_check: $name (at most ${budget} s): $*"
    t0=$(date +%s%N)
    echo "=== $name: $*" >> "$LOG"
    timeout --signal=INT --kill-after=20 "$budget" "$@" > "$WORK/step.log" 2>&1
    rc=$?
    cat "$WORK/step.log" >> "$LOG"
    local ms secs
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    secs=$(printf '%d.%03d' $(( ms / 1000 )) $(( ms % 1000 )))
    tail -n 4 "$WORK/step.log" | sed 's/^/    /'
    echo "gpu_check: $name exit $rc after ${secs} s"
    local cmd
    cmd=$(printf '%s ' "$@" | sed 's/\\/\\\\/g; s/"/\\"/g')
    STEPS_JSON+="{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $secs, \"command\": \"${cmd% }\"},"
  fi
  if [ "$rc" != 0 ] && [ "$FIRST_RC" = 0 ]; then FIRST_RC=$rc; fi
  return 0
}

# --- 1. install ----------------------------------------------------------------------------
install_wheels() {
  [ -f "$WHEELS/requirements-gpu.txt" ] || {
    echo "no $WHEELS/requirements-gpu.txt: run bash bench/fetch_gpu_wheels.sh first"; return 3; }
  local mib
  mib=$(( ($(du -cb "$WHEELS"/*.whl | tail -n1 | cut -f1) + 1048575) / 1048576 ))
  echo "$(ls "$WHEELS"/*.whl | wc -l) wheels, $mib MiB"
  if ls "$WHEELS" | grep -qiE '^(torch|nvidia|triton)[-_]'; then
    echo "torch or CUDA wheels in $WHEELS: the machine's own torch must be used"; return 3
  fi
  if [ "$DRY" = 1 ]; then
    # Every wheel and every requirement must suit CPython 3.12 on manylinux x86_64.
    "$PYTHON" -m pip install --dry-run --quiet --ignore-installed --no-deps --no-index \
      --find-links "$WHEELS" "${PLATFORM[@]}" -r "$WHEELS/requirements-gpu.txt" || return 1
    "$PYTHON" -m pip install --dry-run --quiet --ignore-installed --no-deps --no-index \
      "${PLATFORM[@]}" "$WHEELS"/*.whl || return 1
    echo "dry run: the wheels suit CPython 3.12 manylinux x86_64; nothing installed"
  else
    # A venv of our own that also sees the machine's environment (torch, numpy, OpenCV, pip,
    # pytest: $PYTHON may itself be a venv, which --system-site-packages would not reach) through
    # a .pth file; the wheels go into the venv's own site-packages (the ROS wheels find their
    # libraries there), never over the machine's packages.
    rm -rf "$WORK/venv"
    "$PYTHON" -m venv --without-pip "$WORK/venv" || return 1
    local site
    site=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' \
      > "$site/machine-env.pth" || return 1
    "$WORK/venv/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" \
      -r "$WHEELS/requirements-gpu.txt" || return 1
  fi
  "$PY" - <<'EOF'
import importlib, sys
missing = []
for name in ('numpy', 'cv2', 'yaml', 'tqdm', 'pytest', 'rclpy', 'sensor_msgs.msg',
             'diagnostic_msgs.msg', 'torch'):
    try:
        importlib.import_module(name)
    except ImportError as e:
        missing.append(f'{name} ({e})')
import torch
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
      torch.cuda.is_available() and torch.cuda.get_device_name(0))
if missing:
    sys.exit('missing after the install: ' + ', '.join(missing))
EOF
}
PY="$PYTHON"
[ "$DRY" = 0 ] && PY="$WORK/venv/bin/python"
if [ "$INSTALL_STEP" = 1 ]; then
  install_wheels
  exit $?
fi
run install 120 bash "$0" --install-step $([ "$DRY" = 1 ] && echo --dry-run) "$OUT"
if [ "$DRY" = 0 ] && [ ! -x "$WORK/venv/bin/python" ]; then PY="$PYTHON"; fi

# --- 2. tests ------------------------------------------------------------------------------
run tests 120 "$PY" -m pytest -q -p no:cacheprovider -k cuda test/pipeline/test_engines.py \
  test/pipeline/test_pipeline.py test/pipeline/test_postprocess.py

# --- 3-7. benchmarks, most wanted first (a step that would end past the budget is cut) ------
if [ "$DRY" = 1 ]; then
  # The small model: the dry run checks that every step runs, not how fast.
  QUICK=(--device cpu --quick --iterations 1 --warmup 0 --duration 3 --rate 2
         --model models/erfnet_synth.pt)
  run bench 300 "$PY" bench/bench_inference.py --output "$OUT/bench" "${QUICK[@]}"
  run engines 240 "$PY" bench/bench_engines.py --device cpu --output "$OUT/engines" --quick \
    --engines none,channels_last,onnxruntime --sizes 64x32 --frame 256x128 --batches 1,2 \
    --iterations 2
  run engines-erfnet 240 "$PY" bench/bench_engines.py --device cpu --output "$OUT/engines" \
    --quick --model models/erfnet_synth.pt --engines none,channels_last --sizes 64x32 \
    --frame 256x128 --batches 1 --iterations 2 --tag erfnet
  run bench-8cams 300 "$PY" bench/bench_inference.py --output "$OUT/bench-8cams" "${QUICK[@]}" \
    --cameras 2
  run engines-compile 240 "$PY" bench/bench_engines.py --device cpu --output "$OUT/engines" \
    --quick --engines compile --sizes 64x32 --frame 256x128 --parts forward --iterations 2 \
    --tag compile
else
  run bench 130 "$PY" bench/bench_inference.py --output "$OUT/bench" --device cuda --rate 30 \
    --duration 15 --iterations 100
  run engines 90 "$PY" bench/bench_engines.py --device cuda --output "$OUT/engines" \
    --engines none,channels_last,cuda_graphs --precisions fp32,fp16,bf16 --sizes 1024x512 \
    --batches 1,8 --iterations 50
  run engines-erfnet 60 "$PY" bench/bench_engines.py --device cuda --output "$OUT/engines" \
    --model models/erfnet_synth.pt --engines none,channels_last,cuda_graphs \
    --precisions fp32,fp16 --sizes 1024x512 --batches 1 --iterations 30 --tag erfnet
  run bench-8cams 120 "$PY" bench/bench_inference.py --output "$OUT/bench-8cams" --device cuda \
    --rate 30 --duration 15 --iterations 20 --cameras 8
  run engines-compile 100 "$PY" bench/bench_engines.py --device cuda --output "$OUT/engines" \
    --engines compile --precisions fp16 --sizes 1024x512 --batches 1 --iterations 50 \
    --tag compile
fi

# --- summary -------------------------------------------------------------------------------
GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
  | head -n1 | sed 's/"/\\"/g')"
cat > "$OUT/gpu_check.json" <<EOF
{"dry_run": $([ "$DRY" = 1 ] && echo true || echo false),
 "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "seconds": $(( $(date +%s) - START )),
 "gpu": "${GPU:-none}", "python": "$("$PY" -c 'import sys; print(sys.version.split()[0])')",
 "torch": "$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)",
 "load_average": "$(cut -d' ' -f1-3 /proc/loadavg)",
 "steps": [${STEPS_JSON%,}]}
EOF
echo "gpu_check: $(( $(date +%s) - START )) s; results in $OUT (gpu_check.json, gpu_check.log," \
  "engines/, bench/, bench-8cams/); exit $FIRST_RC"
exit "$FIRST_RC"
