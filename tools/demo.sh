#!/usr/bin/env bash
# The demo: set up (or reuse) .venv, generate labelled demo shards, pretrain a small encoder on CPU
# without labels (LeJEPA by default, the objective that beats random init at this budget), then
# measure linear-probe and k-NN accuracy of the pretrained encoder against the same architecture at
# random initialisation.
#   bash tools/demo.sh [video] [--objective lejepa|ijepa] [jepa train arguments...]
# `video` runs the video demo; `--objective ijepa` the I-JEPA (V-JEPA) demo of the same encoder.
# Re-running continues the run from its newest checkpoint. Other arguments go to `jepa train`
# (e.g. --set optim.epochs=8).
set -euo pipefail
source "$(dirname "$0")/env.sh" || exit 1
set -euo pipefail
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
start=$(date +%s)

pictures() {
    # pictures RUN RECIPE VAL_DATA NUM: the views (LeJEPA) or masks (I-JEPA) training draws, the token features of
    # the pretrained encoder beside its random init, and the training curves, drawn side by side into RUN.
    local run=$1 recipe=$2 val=$3 num=$4 what=masks views=() pids=() pid
    [ "$objective" = lejepa ] && { what=views; views=(--views); }
    echo "== pictures: $what, token features (pretrained vs random init), training curves =="
    OMP_NUM_THREADS=1 jepa viz masks "$recipe" --num "$num" ${views[@]+"${views[@]}"} --out "$run/viz_$what.png" & pids+=($!)
    OMP_NUM_THREADS=1 jepa viz features "$run" --compare "random:$recipe" --data "$val" --num "$num" --out "$run/viz_features.png" & pids+=($!)
    OMP_NUM_THREADS=1 jepa viz run "$run" --out "$run/viz_curves.png" & pids+=($!)
    for pid in "${pids[@]}"; do wait "$pid"; done
}

fresh_data() {
    # fresh_data DIR GENERATOR RUN...: demo data made by another generator (its generator.txt says otherwise, or
    # it has none) is moved aside with the runs trained on it, not deleted, so that it is made again.
    local dir=$1 generator=$2 old old_run
    shift 2
    if [ -d "$dir" ] && [ "$(cat "$dir/generator.txt" 2>/dev/null)" != "$generator" ]; then
        old=$(date +%Y%m%d-%H%M%S)-$$  # the process id keeps two moves in one second apart
        echo "$dir was made by another demo generator: moving it to $dir.old-$old and generating it again"
        mv "$dir" "$dir.old-$old"
        for old_run in "$@"; do
            if [ -d "$old_run" ]; then
                echo "moving $old_run (trained on the old data) to $old_run.old-$old"
                mv "$old_run" "$old_run.old-$old"
            fi
        done
    fi
}

modality=image
[ "${1:-}" = video ] && { modality=video; shift; }
objective=lejepa
if [ "${1:-}" = --objective ]; then
    objective="${2:-}"
    shift 2 || { echo "tools/demo.sh: --objective needs a value: lejepa or ijepa" >&2; exit 2; }
fi
case "$objective" in
    lejepa) suffix=_lejepa ;;
    ijepa) suffix= ;;
    *) echo "tools/demo.sh: --objective must be lejepa or ijepa (got '$objective')" >&2; exit 2 ;;
esac

if [ "$modality" = video ]; then
    # The video demo: clips of a still shape under per-frame noise and colour blobs, labelled by the shape.
    # Pretrain a small video encoder on the clips and, for the single-frame baseline, an image encoder of the
    # same width, depth, patch and objective for the same steps on the middle frame of every clip; then probe
    # the pretrained video encoder, the same video encoder at random init, and the image encoder (pretrained and
    # at random init) on the middle frames of the held-out clips.
    recipe=recipes/video_demo$suffix.yaml
    image_recipe=recipes/video_demo_image_baseline$suffix.yaml
    run=runs/video_demo$suffix
    image_run=runs/video_demo_image_baseline$suffix
    data=data/video_demo
    frames=$data/middle_frames
    generator=$(python -c 'from jepa.modalities.video.demo_shapes import GENERATOR; print(GENERATOR)')
    fresh_data $data "$generator" runs/video_demo runs/video_demo_lejepa runs/video_demo_image_baseline \
        runs/video_demo_image_baseline_lejepa
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
    pictures "$run" "$recipe" $data/val 4
    drawn=$(date +%s)
    echo "video demo done: data and training $((trained - start)) s, evaluation $((end - trained)) s, pictures" \
        "$((drawn - end)) s; results and pictures in $run/"
    exit 0
fi

recipe=recipes/image_demo$suffix.yaml
run=runs/image_demo$suffix

generator=$(python -c 'from jepa.modalities.image.demo_data import GENERATOR; print(GENERATOR)')
fresh_data data/demo "$generator" runs/image_demo runs/image_demo_lejepa
[ -f data/demo/train/manifest.json ] && [ -f data/demo/val/manifest.json ] || jepa demo-data data/demo
jepa train "$recipe" "$@"
trained=$(date +%s)

echo "== linear probe and k-NN on frozen features ($objective): pretrained vs random init =="
jepa eval "$run" --train-shards data/demo/train --val-shards data/demo/val --json "$run/eval_pretrained.json"
jepa eval "random:$recipe" --train-shards data/demo/train --val-shards data/demo/val --json "$run/eval_random_init.json"
end=$(date +%s)
pictures "$run" "$recipe" data/demo/val 6
drawn=$(date +%s)
echo "demo done: training $((trained - start)) s, evaluation $((end - trained)) s, pictures $((drawn - end)) s;" \
    "results and pictures in $run/"
