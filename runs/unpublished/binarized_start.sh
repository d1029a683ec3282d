#!/usr/bin/env bash
# Where CBP starts: the fp32 parent quantized with one scale per layer (s = mean|W|, SPEC B.1) before any
# training step, made by the real pipeline (`quantize_cbp.py --epochs 0`), then evaluated with firing rates
# per layer on the first 64 (lossless) test rows, CPU. Compares the VGG16 parents (BN-trained, published;
# BN-free, unpublished) with the AlexNet parent, whose CBP children trained well.
# Usage: bash runs/unpublished/binarized_start.sh DATA OUT VGG_BN_FREE_PARENT   (writes OUT/start_*.json)
set -euo pipefail
data=$1 out=$2 vgg_bn_free=$3
rows=64
mkdir -p "$out"
start() {  # TAG CHILD PARENT_WEIGHTS
  python scripts/quantize_cbp.py "$2" --epochs 0 --parent-weights "$3" --data "$data" --out "$out/$1" \
    --limit-test $rows --device cpu --no-progress > /dev/null
  python -m qsnn_zoo.cli eval "$2" --weights "$out/$1/$2/$2.safetensors" --data "$data" --limit $rows --device cpu \
    --json > "$out/start_$1.json"
}
parent_eval() {  # TAG NAME WEIGHTS
  python -m qsnn_zoo.cli eval "$2" --weights "$3" --data "$data" --limit $rows --device cpu --json > "$out/start_$1.json"
}
parent_eval vgg_bn_fp32 vgg16_cifar10_fp32_calib checkpoints/vgg16_cifar10_fp32_calib.safetensors
parent_eval vgg_nobn_fp32 vgg16_cifar10_fp32_calib "$vgg_bn_free"
for q in bin ter; do
  start vgg_bn_$q vgg16_cifar10_${q}_calib checkpoints/vgg16_cifar10_fp32_calib.safetensors
  start vgg_nobn_$q vgg16_cifar10_${q}_calib "$vgg_bn_free"
done
parent_eval alexnet_fp32 alexnet_cifar10_fp32_tsslbp checkpoints/alexnet_cifar10_fp32_tsslbp.safetensors
start alexnet_bin alexnet_cifar10_bin_tsslbp checkpoints/alexnet_cifar10_fp32_tsslbp.safetensors
python - "$out" <<'PY'
import json, sys
from pathlib import Path
rows = []
for f in sorted(Path(sys.argv[1]).glob("start_*.json")):
    d = json.loads(f.read_text())
    rates = d["activity"]["firing_rates"]
    order = sorted(rates, key=lambda k: [int(p) if p.isdigit() else p for p in k.replace(".", " ").split()])
    rows.append((f.stem[6:], d["accuracy"]["lossless"]["top1"], [round(rates[k], 4) for k in order]))
for tag, acc, rates in rows:
    print(f"{tag:<14} top-1 {acc:6.2f} %  firing rate per spiking layer: {rates}")
PY
