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
    # The video demo: clips whose label is the motion. Pretrain a small V-JEPA on the clips and, for the
    # single-frame baseline, an image I-JEPA of the same width, depth and patch for the same steps on the
    # middle frame of every clip; then probe the pretrained video encoder, the same video encoder at random
    # init, and the image encoder (pretrained and at random init) on the middle frames of the held-out clips.
    shift
    recipe=recipes/video_demo.yaml
    image_recipe=recipes/video_demo_image_baseline.yaml
    run=runs/video_demo
    image_run=runs/video_demo_image_baseline
    data=data/video_demo
    frames=$data/middle_frames
    [ -f $data/train/manifest.json ] && [ -f $data/val/manifest.json ] || jepa demo-data $data --modality video
    for split in train val; do
        [ -f $frames/$split/manifest.json ] || python tools/video_middle_frames.py "$recipe" $data/$split $frames/$split
    done
    jepa train "$recipe" "$@"
    jepa train "$image_recipe" "$@"
    trained=$(date +%s)
    echo "== linear, k-NN and attentive probes on frozen features: video pretrained vs random init vs middle frame =="
    probes=(--protocol linear,knn,attentive)
    jepa eval "$run" --train-shards $data/train --val-shards $data/val "${probes[@]}" --json "$run/eval_pretrained.json"
    jepa eval "random:$recipe" --train-shards $data/train --val-shards $data/val "${probes[@]}" \
        --json "$run/eval_random_init.json"
    jepa eval "$image_run" --train-shards $frames/train --val-shards $frames/val "${probes[@]}" \
        --json "$run/eval_middle_frame_pretrained.json"
    jepa eval "random:$image_recipe" --train-shards $frames/train --val-shards $frames/val "${probes[@]}" \
        --json "$run/eval_middle_frame_random_init.json"
    end=$(date +%s)
    echo "video demo done: data and training $((trained - start)) s, evaluation $((end - trained)) s; results in $run/"
    exit 0
fi

recipe=recipes/image_demo.yaml
run=runs/image_demo

# Data (and a run trained on it) from an older demo generator are moved aside, not deleted, and made again.
generator=$(python -c 'from jepa.modalities.image.demo_data import GENERATOR; print(GENERATOR)')
if [ -d data/demo ] && [ "$(cat data/demo/generator.txt 2>/dev/null)" != "$generator" ]; then
    old=$(date +%Y%m%d-%H%M%S)-$$  # the process id keeps two moves in one second apart
    echo "data/demo was made by an older demo generator: moving it to data/demo.old-$old and generating it again"
    mv data/demo "data/demo.old-$old"
    if [ -d "$run" ]; then
        echo "moving $run (trained on the old data) to $run.old-$old"
        mv "$run" "$run.old-$old"
    fi
fi
[ -f data/demo/train/manifest.json ] && [ -f data/demo/val/manifest.json ] || jepa demo-data data/demo
jepa train "$recipe" "$@"
trained=$(date +%s)

echo "== linear probe and k-NN on frozen features: pretrained vs random init =="
jepa eval "$run" --train-shards data/demo/train --val-shards data/demo/val --json "$run/eval_pretrained.json"
jepa eval "random:$recipe" --train-shards data/demo/train --val-shards data/demo/val --json "$run/eval_random_init.json"
end=$(date +%s)
echo "demo done: training $((trained - start)) s, evaluation $((end - trained)) s; results in $run/"
