#!/usr/bin/env bash
# Session 1's GPU run of the STBP CIFAR-10 trio (7-conv-3-FC LIF network + CBP).
# SPEC's schedule (fp32 100 epochs, CBP 100 epochs per child) does not fit this project's GPU time,
# so every stage runs the SPEC recipe with fewer epochs; the cards state it and give both commands.
# Usage: bash runs/cnn7_cifar10_gpu.sh DATA_DIR OUT_DIR FP32_EPOCHS CBP_EPOCHS
# Session 1 ran: bash runs/cnn7_cifar10_gpu.sh /tmp/cifar10 /tmp/wd 12 3 (not published: runs/unpublished/README.md);
# session 4 replaced it with runs/cnn7_cifar10_h200.sh.
set -euo pipefail
data=$1 out=$2 fp32_epochs=$3 cbp_epochs=$4
common=(--data "$data" --out "$out" --device cuda --no-progress --resume)
parent=cnn7_cifar10_fp32_stbp

python scripts/train_fp32.py $parent --epochs "$fp32_epochs" "${common[@]}"
for quant in bin ter; do
  python scripts/quantize_cbp.py $parent --quant $quant --epochs "$cbp_epochs" \
    --parent-weights "$out/$parent/$parent.safetensors" "${common[@]}"
done
