#!/usr/bin/env bash
# Session 2, GPU machine 2 of 2: CBP for the binary and ternary children of the VGG16 and AlexNet
# parents made on machine 1 (runs/cifar10_parents_gpu.sh), four runs side by side on one H100, each
# with its SPEC recipe (E.4: 100 epochs; C.5: 200 epochs). CBP's learning rate is constant and its g
# schedule does not count epochs, so when the machine's time is up every run is ended at its last
# finished epoch (runs/finish_at_last_epoch.sh) and is exactly the run of that many epochs.
# VGG16 trains under bf16 autocast (--amp, 1.45x faster per step on the H100, benchmarks/README.md);
# AlexNet in fp32 (bf16 was no faster for it).
# Beside them: the "same seed, same weights" check, one short binary VGG16 CBP run (6,400 images,
# 1 epoch) twice with the default algorithms and twice with --deterministic.
# Usage: bash runs/cifar10_children_gpu.sh DATA OUT VGG_PARENT ALEXNET_PARENT
set -uo pipefail
device=${DEVICE:-cuda}  # DEVICE=cpu for a dry run
data=$1 out=$2 vgg_parent=$3 alexnet_parent=$4
common=(--data "$data" --out "$out" --device "$device" --no-progress --resume)
mkdir -p "$out"

short=(vgg16_cifar10_bin_calib --amp --epochs 1 --limit-train 6400 --test-every 0 --parent-weights "$vgg_parent" --device "$device")
{
  bash runs/repeat_check.sh "$data" "$out/repeat_default" "${short[@]}"
  bash runs/repeat_check.sh "$data" "$out/repeat_deterministic" "${short[@]}" --deterministic
} > "$out/repeat.log" 2>&1 &

for quant in bin ter; do
  python scripts/quantize_cbp.py vgg16_cifar10_${quant}_calib --amp --parent-weights "$vgg_parent" "${common[@]}" \
    > "$out/vgg16_$quant.log" 2>&1 &
  python scripts/quantize_cbp.py alexnet_cifar10_${quant}_tsslbp --parent-weights "$alexnet_parent" "${common[@]}" \
    > "$out/alexnet_$quant.log" 2>&1 &
done
wait
