# Shell helpers that the publish_*.sh records source: bash runs/publish_X.sh, from the repository root.

cpu_eval() {  # NAME WEIGHTS DEST: the file on the CPU (reference backend), lossless rows 0-1016, unless DEST exists
  mkdir -p "$(dirname "$3")"
  [ -f "$3" ] || python -m qsnn_zoo.cli eval "$1" --weights "$2" --data "$DATA" --limit 1017 --device cpu --json > "$3"
}

lossless() {  # EVAL_JSON: its lossless-row top-1, two decimals
  python -c "import json, sys; print(f\"{json.load(open(sys.argv[1]))['accuracy']['lossless']['top1']:.2f}\")" "$1"
}

recipe_epochs() {  # SUMMARY_JSON: the epochs of the recipe a run recorded
  python -c "import json, sys; print(json.load(open(sys.argv[1]))['recipe']['epochs'])" "$1"
}
