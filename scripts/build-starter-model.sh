#!/usr/bin/env bash
# Rebuild the shipped starter model (models/starter/) from the Air Jordan photos.
#
#   bash scripts/build-starter-model.sh            # audit labels, fine-tune four times, add the open set, ship
#   DATA=/path/to/air-jordan NEGATIVES=/path/to/other-footwear bash scripts/build-starter-model.sh
#
# About 3 h on a 2-core CPU, in five steps: a label audit; a fine-tune of EfficientNet-Lite0
# blocks 8-15 + head at 160 px (9 epochs); the same blocks at 192 px for 5 epochs, warm started
# from the first run (`--init-from`: the model already knows the sneakers, the larger input
# adds detail; cheaper than a whole run at 192 px); then 4 epochs with stronger augmentation
# (random-resized crops, random erasing), warm started again, because the model had come to
# fit its train set (99% train, 84% val); then 5 epochs of the same at 224 px, the backbone's
# own input size, warm started from that, with the frozen ImageNet head's answer kept as a
# regulariser (`--distill-imagenet 1`); last, the head learns the open set (`sneakerbot openset`: two
# more outputs for other sneakers and other footwear from the negatives folder, a few minutes; the
# backbone stays as it is). Every epoch is checkpointed: if the
# script is interrupted, run it again and it continues where it stopped (each run resumes
# from its own checkpoints/last.pt; a finished run is only shipped).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${DATA:-../shared/datasets/air-jordan}"
STAGE1="${STAGE1:-var/starter-train}"
STAGE2="${STAGE2:-var/train-192}"
STAGE3="${STAGE3:-var/train-192-strong}"
RUN="${RUN:-var/train-224-distill}"
NEGATIVES="${NEGATIVES:-../shared/datasets/other-footwear}"
OPEN="${OPEN:-var/train-224-openset}"
AUDIT="${AUDIT:-var/audit/flagged.csv}"
OUT="models/starter"
SB=".venv/bin/sneakerbot"
THREADS="${THREADS:-2}"
mkdir -p var

# One fine-tuning step into DIR: skipped when finished, resumed from its checkpoint when interrupted,
# started with the given options otherwise.
step() {
    local dir="$1"; shift
    if [ -f "$dir/model.json" ] && [ "$dir/model.json" -nt "$dir/checkpoints/last.pt" ]; then
        echo "$dir is finished"
    elif [ -f "$dir/checkpoints/last.pt" ]; then
        "$SB" train "$DATA" --mode finetune --out "$dir" --resume --threads "$THREADS" --no-progress
    else
        "$SB" train "$DATA" --mode finetune --backbone efficientnet_lite0 --trainable-stages 9 \
            --exclude "$AUDIT" --threads "$THREADS" --out "$dir" --no-progress "$@"
    fi
}

# 1. label audit: out-of-fold predictions on frozen features flag likely wrong labels (set aside from every split)
[ -f "$AUDIT" ] || "$SB" audit "$DATA" --image-size 160 --out "$AUDIT" --threads "$THREADS"
# 2. fine-tune at 160 px: one model over all classes
step "$STAGE1" --epochs 9 --image-size 160
# 3. the same blocks at 192 px, warm started from step 2
step "$STAGE2" --epochs 5 --image-size 192 --lr 4e-4 --init-from "$STAGE1"
# 4. stronger augmentation, warm started from step 3
step "$STAGE3" --epochs 4 --image-size 192 --lr 3e-4 --augment strong --init-from "$STAGE2"
# 5. the same at 224 px, warm started from step 4
step "$RUN" --epochs 5 --image-size 224 --lr 3e-4 --augment strong --distill-imagenet 1 --init-from "$STAGE3"

# 6. the open set: a head with two more outputs (other sneakers, other footwear), Vans and Reebok held out
[ -f "$OPEN/model.json" ] || "$SB" openset "$RUN" --negatives "$NEGATIVES" --out "$OPEN"

# 7. ship: the model directory without checkpoints (ONNX is rebuilt on first load when it would not fit 25 MB)
rm -rf "$OUT.new"
mkdir -p "$OUT.new"
cp -r "$OPEN"/model.json "$OPEN"/head.pt "$OPEN"/README.md "$OPEN"/plots "$OUT.new"/
for optional in backbone.pt centroids.npy carried.npz model.onnx audit.csv; do
    if [ -f "$OPEN/$optional" ]; then cp "$OPEN/$optional" "$OUT.new"/; fi
done
cat >> "$OUT.new/README.md" <<'MD'
## How to rebuild

`make starter-model` runs `scripts/build-starter-model.sh`: a label audit (`sneakerbot audit`: out-of-fold
predictions of a linear head on frozen EfficientNet-Lite0 features flag images whose folder label is probably
wrong; they are set aside from train, val and test, `audit.csv`, and `plots/audit.png` shows them
next to this model's answer), then four `sneakerbot train --mode finetune` runs with
the same layout (stem and blocks 0-7 frozen and shared; blocks 8-15 + head conv fine-tuned; a frozen
pretrained copy of blocks 8-15 + the ImageNet head kept in the same graph for the footwear score), each warm
started from the one before (`--init-from`): 9 epochs at 160 px (`var/starter-train/`), 5 epochs at 192 px
(max lr 4e-4, `var/train-192/`), 4 epochs with `--augment strong` (max lr 3e-4, `var/train-192-strong/`;
val 84.2% / 90.5%), then 5 epochs at 224 px with `--augment strong --distill-imagenet 1` (max lr 3e-4,
`var/train-224-distill/`, this model; val 85.1% / 91.0%, against 85.2% / 90.3% for the same run without
`--distill-imagenet`; these val figures, from training, still counted the photos the audit sets
aside, the metrics above do not). Last, `sneakerbot openset` (`var/train-224-openset/`, this model)
retrains the head on the features the model carries plus those of `../shared/datasets/other-footwear`
(Vans and Reebok held out entirely; the rest split 65/15/20 by sha1), with two more outputs for
"another sneaker" and "another shoe", and calibrates the `open` threshold on val; the backbone is
byte for byte the 224 px run's. The directory is copied without checkpoints. Weights ship as fp16
(`backbone.pt`, metrics above are measured with exactly these weights); `centroids.npy` holds the mean
embedding per class of train (the "familiar" and "known" rules); the ONNX graph (the footwear branch
under an `If` that photos the model knows skip) is built on first load into the cache directory.
No images are included.
MD
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
du -sh "$OUT"
