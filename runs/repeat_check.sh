#!/usr/bin/env bash
# Same seed, same command, same weights: runs one CBP command twice into separate output folders and
# prints the sha256 of both weights files (equal when the run is reproducible on this device).
# Usage: bash runs/repeat_check.sh DATA OUT NAME [quantize_cbp.py flags: a short recipe, device, ...]
set -euo pipefail
data=$1 out=$2 name=$3
shift 3
for rep in 1 2; do
  python scripts/quantize_cbp.py "$name" "$@" --data "$data" --out "$out/run$rep" --no-progress
done
sha256sum "$out"/run*/"$name/$name.safetensors"
