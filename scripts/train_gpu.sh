#!/usr/bin/env bash
# Train all five networks on CamVid at full resolution on one GPU in about 9 minutes (an H100),
# then benchmark on CUDA. Everything lands in OUT_DIR: <network>/{best.pt,last.pt,log.jsonl,...},
# train_<network>.log, bench.json and bench.md.
#
#   scripts/train_gpu.sh OUT_DIR [MINUTES]        MINUTES: training budget for all five (default 8)
#
# It needs torch (a CUDA build), numpy, OpenCV, PyYAML, tqdm and matplotlib, no ROS: it runs the
# ROS-free core from this checkout (PYTHONPATH), so nothing is installed. CamVid is read from
# $CAMVID (default ../shared/data/camvid, or .carry/camvid where a checkout travelled without
# ../shared). The split is decoded into GPU memory and augmented there per batch; the precision
# (bf16 where the GPU has it, else fp16 with a gradient scaler, or fp32 if faster) and layout are
# measured per network by seg-train itself (train.precision=auto).
#
# Each network's epochs come from its measured step time, so that the five share the budget; a
# network's run that overruns its share is stopped by `timeout` and its last finished epoch stays
# in last.pt (resumable with seg-train --resume).
#
# Tested on a CPU with a tiny budget (test/test_train_gpu_script.py):
#   TRAIN_GPU_DEVICE=cpu TRAIN_GPU_NETWORKS=enet TRAIN_GPU_SIZE=96x64 TRAIN_GPU_EPOCHS=1 \
#   TRAIN_GPU_BENCH="--sections training --train-size 96x64 --train-iterations 1 --train-batch 2" \
#   scripts/train_gpu.sh /tmp/out
set -euo pipefail
OUT=${1:?usage: scripts/train_gpu.sh OUT_DIR [MINUTES]}
MINUTES=${2:-8}
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
DEVICE=${TRAIN_GPU_DEVICE:-cuda}
NETWORKS=${TRAIN_GPU_NETWORKS:-enet erfnet dsnet segfast segfast_basic}
SIZE=${TRAIN_GPU_SIZE:-480x360}   # WIDTHxHEIGHT
BATCH=${TRAIN_GPU_BATCH:-16}
CAMVID=${CAMVID:-}
if [[ -z $CAMVID ]]; then
    for candidate in ../shared/data/camvid .carry/camvid; do
        [[ -f $candidate/train.txt ]] && CAMVID=$(cd "$candidate" && pwd) && break
    done
fi
[[ -n $CAMVID && -f $CAMVID/train.txt ]] || { echo "train_gpu.sh: CamVid not found (set CAMVID=DIR)" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/machine.txt"

count=$(wc -w <<< "$NETWORKS")
share_s=$(( MINUTES * 60 / count ))
for network in $NETWORKS; do
    # Epochs that fit this network's share: 367 frames per epoch at the measured images/s, with a
    # quarter of the share kept for validation, start-up and the step timing itself.
    epochs=${TRAIN_GPU_EPOCHS:-$("$PY" - "$network" "$DEVICE" "$BATCH" "$SIZE" "$share_s" <<'EOF'
import sys
from seg_ros.inference.segmenter import resolve_device
from seg_ros.models import build_model
from seg_ros.training.speed import choose_step_settings, fastest_of, step_timer
from seg_ros.vocabulary import parse_size
network, device, batch, crop, share = (sys.argv[1], resolve_device(sys.argv[2]), int(sys.argv[3]),
                                       parse_size(sys.argv[4]), int(sys.argv[5]))
net = build_model(network, 11)
choice = choose_step_settings(net, device, batch=batch, crop=crop, num_classes=11)
timings = choice.timings or fastest_of({'step': step_timer(net, choice.settings, device, batch=batch, crop=crop,
                                                           num_classes=11)}, device)
print(max(1, int(0.75 * share * batch / min(timings.values()) / 367)))
EOF
)}
    loss='{name: balanced_ce, c: 1.02}'
    [[ $network == erfnet ]] && loss='{name: balanced_ce, c: 1.10}'   # 001's class weighting
    overrides=(data.root="$CAMVID" output.dir="$OUT/$network" train.device="$DEVICE" "stages=[]"
               train.epochs="$epochs" train.batch_size="$BATCH" train.val_every="$(( epochs > 20 ? 10 : 1 ))"
               augment.crop_size="$SIZE" "augment.scale_range=[0.5, 1.5]" augment.hflip=true
               "optimizer={name: adamw, lr: 0.002, weight_decay: 0.0001}" "scheduler={name: onecycle}"
               train.schedule_metric=val_miou data.num_workers=auto data.cache=auto)
    overrides+=("loss=$loss")
    # DSNet learns with balanced CE in a short run: OWFL + SEL from scratch starves the thin classes
    # (docs/STUDIES.md, "DSNet audit"); its SEL context head is then not needed.
    [[ $network == dsnet ]] && overrides+=("model.options={context_head: false}")
    echo "== $network: $epochs epochs (share ${share_s} s)"
    printf '%q ' seg-train "${network}_camvid" "${overrides[@]}" > "$OUT/command_$network.txt"
    status=0
    timeout --signal=INT $(( share_s + 60 )) "$PY" -c \
        'import sys; from seg_ros.training.cli import train_main; sys.exit(train_main(sys.argv[1:]))' \
        "${network}_camvid" "${overrides[@]}" > "$OUT/train_$network.log" 2>&1 || status=$?
    tail -n 3 "$OUT/train_$network.log"
    [[ $status == 0 ]] || echo "== $network: seg-train exited with $status (see train_$network.log)"
done

echo "== seg-bench on $DEVICE"
# shellcheck disable=SC2086  # TRAIN_GPU_BENCH is a list of arguments
"$PY" -c 'import sys; from seg_ros.bench.cli import main; sys.exit(main(sys.argv[1:]))' --device "$DEVICE" \
    --json "$OUT/bench.json" ${TRAIN_GPU_BENCH:---sections forward training} > "$OUT/bench.md" 2> "$OUT/bench.log" \
    || echo "== seg-bench failed (see bench.log)"
tail -n 5 "$OUT/bench.md"
