#!/bin/bash
# Usage: bash runs/unpublished/vgg16_cbp_diagnosis/run_all.sh   (from the repository root; ~40 min on 1 CPU thread)
# Runs the experiments of README.md one after another (never two at once) and writes D/*.json, D/*.log.
set -e
D=runs/unpublished/vgg16_cbp_diagnosis
P="python $D/diagnose.py"
[ -f $D/start.json ] || $P start --out $D/start.json --batch 32 > $D/start.log 2>&1
run() { local tag=$1; shift; [ -f $D/train_$tag.json ] || $P train --out $D/train_$tag.json "$@" > $D/train_$tag.log 2>&1; }
S="--T 8 --batch 32 --subset 256 --steps 30"
run T8_lr1e-2          $S --lr 1e-2
run T8_lr1e-3          $S --lr 1e-3
run T8_lr1e-4          $S --lr 1e-4
run T8_lr1e-2_nodrop   $S --lr 1e-2 --no-dropout
run T8_lr1e-2_meanT    $S --lr 1e-2 --loss-mean-over-t
run T8_lr1e-3_nodrop   $S --lr 1e-3 --no-dropout
run T32_lr1e-2_b16     --T 32 --batch 16 --subset 256 --steps 16 --lr 1e-2
run T32_lr1e-4_b16     --T 32 --batch 16 --subset 256 --steps 16 --lr 1e-4
[ -f $D/alexnet.json ] || $P alexnet --out $D/alexnet.json --batch 50 --subset 250 --steps 10 > $D/alexnet.log 2>&1
