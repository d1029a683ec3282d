#!/usr/bin/env bash
# Session 2, GPU machine 1 of 2: the fp32 parents of the VGG16 (SNN-Calibration) and AlexNet (TSSL-BP)
# families, side by side on one H100. Both steps are launch-bound, so the two processes fill each
# other's idle time on the GPU.
#   VGG16: SPEC E.2's BN-free ANN (lr 0.01, wd 1e-4, Dropout 0.25) for ANN_EPOCHS of SPEC's 300, cosine
#          over those epochs, then conversion (E.3, light calibration, T=32).
#   AlexNet: SPEC C.5 with its 150 epochs (constant lr); when the machine's time is up it is ended at its
#          last finished epoch with runs/finish_at_last_epoch.sh DATA OUT alexnet_cifar10_fp32_tsslbp tssl_fp32
# Each parent is then re-saved in float16 (the published file) and both files are evaluated.
# Usage: bash runs/cifar10_parents_gpu.sh DATA OUT ANN_EPOCHS
set -uo pipefail
device=${DEVICE:-cuda}  # DEVICE=cpu for a dry run
data=$1 out=$2 ann_epochs=$3
common=(--data "$data" --out "$out" --device "$device" --no-progress --resume)
mkdir -p "$out"

python scripts/train_fp32.py vgg16_cifar10_fp32_calib --epochs "$ann_epochs" "${common[@]}" > "$out/vgg16_fp32.log" 2>&1 \
  && bash runs/halve_and_evaluate.sh "$data" "$out" vgg16_cifar10_fp32_calib >> "$out/vgg16_fp32.log" 2>&1 &
python scripts/train_fp32.py alexnet_cifar10_fp32_tsslbp "${common[@]}" > "$out/alexnet_fp32.log" 2>&1 &
wait
