#!/usr/bin/env bash
# The demo: set up (or reuse) .venv, generate labelled demo shards, pretrain a small I-JEPA on CPU
# without labels, then measure linear-probe and k-NN accuracy of the pretrained target encoder
# against the same architecture at random initialisation.
# Re-running continues the run from its newest checkpoint. Extra arguments go to `jepa train`
# (e.g. --set optim.epochs=8). `tools/demo.sh video` runs the video (V-JEPA) demo instead.
set -euo pipefail
source "$(dirname "$0")/env.sh" || exit 1
set -euo pipefail
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
start=$(date +%s)

if [ "${1:-}" = video ]; then
    # The video demo: clips whose label is the motion; pretrained V-JEPA vs random init vs the
    # middle frame alone (the same pretrained encoder shown a static clip of the middle frame).
    shift
    recipe=recipes/video_demo.yaml
    run=runs/video_demo
    data=data/video_demo
    [ -f $data/train/manifest.json ] && [ -f $data/val/manifest.json ] || jepa demo-data $data --modality video
    jepa train "$recipe" "$@"
    trained=$(date +%s)
    echo "== attentive and linear probes on frozen features: pretrained vs random init vs middle frame =="
    probes=(--train-shards $data/train --val-shards $data/val --protocol attentive,linear)
    jepa eval "$run" "${probes[@]}" --json "$run/eval_pretrained.json"
    jepa eval "random:$recipe" "${probes[@]}" --json "$run/eval_random_init.json"
    python tools/eval_middle_frame.py "$run" "${probes[@]}" --json "$run/eval_middle_frame.json"
    end=$(date +%s)
    echo "video demo done: training $((trained - start)) s, evaluation $((end - trained)) s; results in $run/"
    exit 0
fi

recipe=recipes/image_demo.yaml
run=runs/image_demo

[ -f data/demo/train/manifest.json ] && [ -f data/demo/val/manifest.json ] || jepa demo-data data/demo
jepa train "$recipe" "$@"
trained=$(date +%s)

echo "== linear probe and k-NN on frozen features: pretrained vs random init =="
jepa eval "$run" --train-shards data/demo/train --val-shards data/demo/val --json "$run/eval_pretrained.json"
jepa eval "random:$recipe" --train-shards data/demo/train --val-shards data/demo/val --json "$run/eval_random_init.json"
end=$(date +%s)
echo "demo done: training $((trained - start)) s, evaluation $((end - trained)) s; results in $run/"
