#!/usr/bin/env bash
# Session 3, one H200: CBP for the binary and ternary children of the published VGG16 parent, side by
# side, with the calib_cbp recipe at lr 1e-4 (qsnn_zoo/train/config.py says why not SPEC's 1e-2), bf16
# autocast and the step replayed from a CUDA graph. When SECONDS have passed, each run is ended at its
# last finished epoch (runs/finish_at_last_epoch.sh: the learning rate is constant and g stayed at 1,
# so the weights are those of `--epochs K`) and its file is evaluated on the GPU.
# Usage: bash runs/vgg16_cifar10_children_h200.sh DATA OUT PARENT SECONDS
# Session 3 called it twice on the same OUT (runs/README.md): SECONDS 290, then 150, the second call
# resuming from the checkpoints the first left; the first call began with the same-seed check
#   bash runs/repeat_check.sh DATA OUT/repeat vgg16_cifar10_bin_calib --lr 1e-4 --amp --cuda-graph \
#     --parent-weights PARENT --deterministic --epochs 1 --limit-train 6400 --test-every 0 --device cuda
# Session 6 (the published runs) called it twice on a fresh OUT: SECONDS 1350, its sleep ended early
# after epoch 30 (runs/README.md), then 240.
set -uo pipefail
data=$1 out=$2 parent=$3 seconds=$4
flags=(--lr 1e-4 --amp --cuda-graph --parent-weights "$parent")
mkdir -p "$out"
for q in bin ter; do
  setsid nohup python3 scripts/quantize_cbp.py vgg16_cifar10_${q}_calib "${flags[@]}" --data "$data" --out "$out" \
    --device cuda --no-progress --resume > "$out/vgg16_$q.log" 2>&1 < /dev/null &
done
sleep "$seconds"
for q in bin ter; do
  name=vgg16_cifar10_${q}_calib
  bash runs/finish_at_last_epoch.sh "$data" "$out" $name calib_cbp "${flags[@]}" >> "$out/vgg16_$q.log" 2>&1
  python3 -m qsnn_zoo.cli eval $name --weights "$out/$name/$name.safetensors" --data "$data" --device cuda --json \
    > "$out/eval_$name.json"
done
