#!/usr/bin/env bash
# The float16 copy of a trained fp32 parent (the file that is published and that CBP starts from), and
# the test accuracy of both files, so the card can state what float16 storage costs.
# Usage: bash runs/halve_and_evaluate.sh DATA OUT NAME
set -euo pipefail
device=${DEVICE:-cuda}  # DEVICE=cpu for a dry run
data=$1 out=$2 name=$3
python scripts/half_weights.py "$name" "$out/$name/$name.safetensors" "$out/$name/$name.fp16.safetensors"
for kind in fp32:"$name.safetensors" fp16:"$name.fp16.safetensors"; do
  python -m qsnn_zoo.cli eval "$name" --weights "$out/$name/${kind#*:}" --data "$data" --device "$device" --json \
    > "$out/eval_${name}_${kind%%:*}.json"
done
