#!/usr/bin/env bash
# How vgg16_cifar10_fp32_calib was published from the outputs of runs/vgg16_cifar10_gpu.sh
# (OUT=/tmp/wd on the GPU machine, fetched here as RES) and CPU evaluations: bash publish.sh RES DATA
set -euo pipefail
RES=$1 DATA=$2  # the fetched run outputs, and the CIFAR-10 directory
P=vgg16_cifar10_fp32_calib
[ -f runs/$P/eval_cpu_lossless_rows.json ] || python -m qsnn_zoo.cli eval $P --data "$DATA" --limit 1017 --device cpu --json > runs/$P/eval_cpu_lossless_rows.json
[ -f runs/$P/eval_ann_cpu.json ] || python scripts/evaluate.py $P --weights "$RES/$P/$P.fp16.safetensors" --ann --device cpu --json > runs/$P/eval_ann_cpu.json
python scripts/publish.py $P --weights "$RES/$P/$P.fp16.safetensors" --eval "$RES/eval_${P}_fp16.json" \
  --run-dir "$RES/$P" --extra-metric top1_ann=runs/$P/eval_ann_cpu.json \
  --extra-metric top1_fp32_weights="$RES/eval_fp32_weights.json" \
  --extra-metric top1_cpu=runs/$P/eval_cpu_lossless_rows.json \
  --recipe "python scripts/train_fp32.py $P --epochs 40 --use-bn --lr 0.1 --weight-decay 5e-4 --data DATA --out OUT && python scripts/half_weights.py $P OUT/$P/$P.safetensors $P.safetensors" \
  --note "40 ANN epochs instead of SPEC's 300 (cosine schedule over the 40), to fit this project's GPU time; runs/vgg16_cifar10_gpu.sh is the whole run." \
  --note "The ANN was trained with BatchNorm (SPEC E.2's with-BN option: lr 0.1, weight decay 5e-4), since without BN it learned too slowly for 40 epochs; BN is folded into the convs before conversion, so the published network has the BN-free layout and no BN tensors." \
  --note "Conversion as SPEC E.3 with light calibration at T=32 (trial 0, seed 1000); the last epoch is kept (no model selection)." \
  --note "Published in float16 (29.5 MB instead of 58.9 MB); the effect on accuracy is the top1_fp32_weights row above."
python scripts/make_cards.py
