#!/usr/bin/env bash
# Rebuild the shipped starter model (models/starter/) from the Air Jordan photos.
#
#   bash scripts/build-starter-model.sh            # audit labels, fine-tune, copy into models/starter
#   DATA=/path/to/air-jordan bash scripts/build-starter-model.sh
#
# About 1-1.5 h on a 2-core CPU (EfficientNet-Lite0, blocks 8-15 + head fine-tuned at 160 px,
# 9 epochs). Every epoch is checkpointed: if the run is interrupted, run this script again
# (or the resume command below) and it continues where it stopped:
#
#   .venv/bin/sneakerbot train ../shared/datasets/air-jordan --mode finetune --out var/starter-train --resume \
#       --threads 2 --no-progress >> var/starter-train.log 2>&1
#
# The resume reads the run's saved config from var/starter-train/checkpoints/last.pt; when all
# epochs are done it only (re)writes the finished model directory.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${DATA:-../shared/datasets/air-jordan}"
RUN="${RUN:-var/starter-train}"
AUDIT="${AUDIT:-var/audit/flagged.csv}"
OUT="models/starter"
SB=".venv/bin/sneakerbot"
THREADS="${THREADS:-2}"
mkdir -p var

if [ -f "$RUN/model.json" ] && [ "$RUN/model.json" -nt "$RUN/checkpoints/last.pt" ]; then
    echo "$RUN is finished: shipping it"
elif [ -f "$RUN/checkpoints/last.pt" ]; then
    echo "resuming $RUN"
    "$SB" train "$DATA" --mode finetune --out "$RUN" --resume --threads "$THREADS" --no-progress
else
    # 1. label audit: out-of-fold predictions on frozen features flag likely wrong labels (left out of train only)
    [ -f "$AUDIT" ] || "$SB" audit "$DATA" --image-size 160 --out "$AUDIT" --threads "$THREADS"
    # 2. fine-tune: one model over all classes
    "$SB" train "$DATA" --mode finetune --backbone efficientnet_lite0 --epochs 9 --image-size 160 \
        --trainable-stages 9 --exclude "$AUDIT" --threads "$THREADS" --out "$RUN" --no-progress
fi

# 3. ship: the model directory without checkpoints (ONNX is rebuilt on first load when it would not fit 25 MB)
rm -rf "$OUT.new"
mkdir -p "$OUT.new"
cp -r "$RUN"/model.json "$RUN"/head.pt "$RUN"/README.md "$RUN"/plots "$OUT.new"/
for optional in backbone.pt model.onnx audit.csv; do
    if [ -f "$RUN/$optional" ]; then cp "$RUN/$optional" "$OUT.new"/; fi
done
cat >> "$OUT.new/README.md" <<'MD'
## How to rebuild

`make starter-model` runs `scripts/build-starter-model.sh`: a label audit (`sneakerbot audit`: out-of-fold
predictions of a linear head on frozen EfficientNet-Lite0 features flag images whose folder label is probably
wrong; they are left out of *train* only, `audit.csv`), then `sneakerbot train --mode finetune` (stem and
blocks 0-7 frozen and shared; blocks 8-15 + head conv fine-tuned; a frozen pretrained copy of blocks 8-15 +
the ImageNet head kept in the same graph for the footwear score), then this directory is copied from
`var/starter-train/` without checkpoints. Weights ship as fp16 (`backbone.pt`, metrics above are measured
with exactly these weights); `model.onnx` is built on first load into the cache directory because the fp32
graph would take this directory over 25 MB. No images are included.
MD
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
du -sh "$OUT"
