#!/usr/bin/env bash
# Set up .venv (idempotent) and run one job in it:
#   demo         node + sample camera over real DDS for ~20 s (README command 1)
#   test         the whole default test suite (README command 2, what CI runs)
#   reliability  the long soak / flood / fuzz / fault suite
#   lint         ruff
#   setup        only set up
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}

setup() {
    local stamp=$VENV/.seg_ros_setup
    local wanted
    # Reinstall whenever anything that gets installed changes (a plain install, not an editable
    # one: only a real install places the ament index marker, share/seg_ros and lib/seg_ros).
    wanted=$(find setup.py setup.cfg package.xml scripts/dev.sh resource seg_ros launch config models \
                 -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
        return
    fi
    echo "[setup] preparing $VENV" >&2
    if [[ ! -x $VENV/bin/python ]]; then
        # Reuse a torch the base interpreter already has (a GPU machine's CUDA build).
        if "$PY" -c 'import torch' 2>/dev/null; then
            "$PY" -m venv --system-site-packages "$VENV"
        else
            "$PY" -m venv "$VENV"
        fi
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # Only the CPU pin when no torch is importable: a bare `torch` pulls GBs of CUDA wheels.
    if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
        "$VENV/bin/python" -m pip install -q torch==2.13.0
    fi
    "$VENV/bin/python" -m pip install -q ".[ros,onnx,openvino,cluster,test]"
    echo "$wanted" > "$stamp"
}

# A private DDS domain per run, so parallel runs on one machine do not hear each other.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( ($$ % 100) + 100 ))}
# PyTorch's OpenMP threads spin while waiting by default; on a small or shared CPU that steals the
# cores the working threads need (measured: eager ENet 7.6x slower, docs/BENCHMARKS.md).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds.xml}

job=${1:-demo}
shift || true
setup
case $job in
    setup) ;;
    demo) exec "$VENV/bin/seg-demo" "$@" ;;
    test) exec "$VENV/bin/python" -m pytest "$@" ;;
    reliability) exec "$VENV/bin/python" -m pytest -m reliability --run-reliability "$@" ;;
    lint) exec "$VENV/bin/ruff" check seg_ros test launch "$@" ;;
    *) echo "unknown job '$job' (demo, test, reliability, lint, setup)" >&2; exit 2 ;;
esac
