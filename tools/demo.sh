#!/usr/bin/env bash
# The demo: set up (or reuse) .venv, generate labelled demo shards, pretrain a small I-JEPA on CPU
# without labels, then measure linear-probe and k-NN accuracy of the pretrained target encoder
# against the same architecture at random initialisation.
# Re-running continues the run from its newest checkpoint. Extra arguments go to `jepa train`
# (e.g. --set optim.epochs=8).
set -euo pipefail
source "$(dirname "$0")/env.sh" || exit 1
set -euo pipefail
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
recipe=recipes/image_demo.yaml
run=runs/image_demo
start=$(date +%s)

[ -f data/demo/train/manifest.json ] && [ -f data/demo/val/manifest.json ] || jepa demo-data data/demo
jepa train "$recipe" "$@"
trained=$(date +%s)

echo "== linear probe and k-NN on frozen features: pretrained vs random init =="
jepa eval "$run" --train-shards data/demo/train --val-shards data/demo/val --json "$run/eval_pretrained.json"
jepa eval "random:$recipe" --train-shards data/demo/train --val-shards data/demo/val --json "$run/eval_random_init.json"
end=$(date +%s)
echo "demo done: training $((trained - start)) s, evaluation $((end - trained)) s; results in $run/"
