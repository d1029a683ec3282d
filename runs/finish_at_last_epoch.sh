#!/usr/bin/env bash
# Ends a running stage of NAME at its last finished epoch and publishes that epoch's weights: stops the
# process, reads the epoch count K from the stage's checkpoint and reruns the command with
# --epochs K --resume, which trains nothing more and writes NAME.safetensors and summary.json.
# Only for stages whose schedule does not depend on the epoch count (constant learning rate: TSSL-BP
# fp32, every CBP stage), so the result is what `--epochs K` gives from the start
# (tests/test_resume.py checks this).
# Usage: bash runs/finish_at_last_epoch.sh DATA OUT NAME STAGE [the run's other flags...]
set -euo pipefail
device=${DEVICE:-cuda}  # DEVICE=cpu for a dry run
data=$1 out=$2 name=$3 stage=$4
shift 4
script=scripts/quantize_cbp.py
case $stage in stbp_fp32|tssl_fp32|calib_ann) script=scripts/train_fp32.py ;; esac
pattern="python.* $script $name "
if pkill -f "$pattern"; then
  while pgrep -f "$pattern" > /dev/null; do sleep 1; done
fi
epochs=$(python -c "import sys; from qsnn_zoo.train.checkpoint import load_checkpoint; print(load_checkpoint(sys.argv[1])['epoch'])" \
  "$out/$name/$stage/checkpoint.pt")
echo "$name: finishing at epoch $epochs"
python $script "$name" "$@" --epochs "$epochs" --data "$data" --out "$out" --device "$device" --no-progress --resume
