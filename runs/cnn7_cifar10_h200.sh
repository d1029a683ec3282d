#!/usr/bin/env bash
# Session 4, one H200: the STBP CIFAR-10 trio (7-conv-3-FC LIF network, then its CBP children).
# SPEC's schedule (fp32 100 epochs, CBP 100 per child) does not fit 30 minutes of device time, so:
#   1. the fp32 parent runs SPEC D.3's recipe for FP32_EPOCHS epochs (its lr milestones are fractions of
#      the epochs, so the 0.3 / 0.03 / 0.003 shape is kept), its file is evaluated on the GPU and
#      described (sha256, size) for scripts/publish.py --not-committed;
#   2. each child runs SPEC D.4's CBP from that file, one after the other (side by side, two processes
#      only time-share the GPU: runs/README.md), for an equal share of the time left before DEADLINE
#      (seconds since 1970), fixed before any result is seen; then it is ended at its last finished
#      epoch (runs/finish_at_last_epoch.sh: CBP's lr is constant until g = 20), and evaluated.
# Every stage trains under bf16 autocast with the step replayed from a CUDA graph (benchmarks/h200.md:
# the STBP step needs both for issue #4's target); every evaluation is fp32.
# Usage: bash runs/cnn7_cifar10_h200.sh DATA OUT FP32_EPOCHS DEADLINE
set -uo pipefail
data=$1 out=$2 fp32_epochs=$3 deadline=$4
parent=cnn7_cifar10_fp32_stbp
fast=(--amp --cuda-graph)
cbp=("${fast[@]}" --parent-weights "$out/$parent/$parent.safetensors")
eval_seconds=40  # each child's evaluation and end, kept out of its training share
mkdir -p "$out"

evaluate() {
  python3 -m qsnn_zoo.cli eval "$1" --weights "$out/$1/$1.safetensors" --data "$data" --device cuda --json \
    > "$out/eval_$1.json"
}

python3 scripts/train_fp32.py $parent --epochs "$fp32_epochs" "${fast[@]}" --data "$data" --out "$out" \
  --device cuda --no-progress --resume > "$out/$parent.log" 2>&1 < /dev/null || exit 1
evaluate $parent
# The 248 MB parent cannot be brought back or committed: what the registry records of it is written here.
python3 -c "import json, sys; from qsnn_zoo.weights import describe_file; print(json.dumps(describe_file(sys.argv[1])))" \
  "$out/$parent/$parent.safetensors" > "$out/made_file_$parent.json"
# Nor can it be evaluated on the CPU of this repository's machine: the reference backend runs here,
# on this machine's CPU cores, while the GPU trains the children.
OMP_NUM_THREADS=8 python3 -m qsnn_zoo.cli eval $parent --weights "$out/$parent/$parent.safetensors" --data "$data" \
  --limit 1017 --device cpu --json > "$out/$parent/eval_cpu_lossless_rows.json" 2> "$out/eval_cpu_$parent.log" &
cpu_eval=$!

left=2
for q in bin ter; do
  name=cnn7_cifar10_${q}_stbp
  seconds=$(( (deadline - $(date +%s)) / left - eval_seconds ))
  left=$(( left - 1 ))
  echo "$name: CBP for $seconds s" >> "$out/$name.log"
  python3 scripts/quantize_cbp.py $name "${cbp[@]}" --data "$data" --out "$out" --device cuda --no-progress \
    --resume >> "$out/$name.log" 2>&1 < /dev/null &
  pid=$! end=$(( $(date +%s) + seconds ))
  while kill -0 $pid 2> /dev/null && [ "$(date +%s)" -lt $end ]; do sleep 2; done
  bash runs/finish_at_last_epoch.sh "$data" "$out" $name stbp_cbp "${cbp[@]}" >> "$out/$name.log" 2>&1
  evaluate $name
done
wait $cpu_eval
