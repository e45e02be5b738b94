#!/usr/bin/env bash
# Recipe of models/structflow_default.pt, on the CPU of a 2-core machine (see models/MODEL_CARD.md
# for what it took). Every stage resumes from its last checkpoint: re-run the script after an
# interruption and it continues.
#
#   make train-default                      # or: bash scripts/train_default.sh
#   PRETRAIN_STEPS=6000 FINETUNE_STEPS=3000 RUN=runs/default bash scripts/train_default.sh
#
# Held-out domain: `fog` (synthetic) is never trained on; it is kept for the on-robot adaptation
# experiments, together with the real KITTI/NYU/TUM frames.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/default}
SHARED=${STRUCTFLOW_SHARED_DATA:-../shared/data}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-2000}
FINETUNE_STEPS=${FINETUNE_STEPS:-1500}
THREADS=${THREADS:-2}
OUT_MODEL=${OUT_MODEL:-models/structflow_default.pt}

# Synthetic training domains (fog held out) at the model size, plus the real KITTI clips.
SYNTHETIC="synthetic:day:300:11 synthetic:dusk:300:12 synthetic:overcast:300:13 synthetic:day:300:14"
REAL=""
for clip in "$SHARED"/kitti_odometry_clips/KITTI_sequence_*/image_l; do
  [ -d "$clip" ] && REAL="$REAL $clip"
done
[ -n "$REAL" ] || echo "note: $SHARED/kitti_odometry_clips not found; pretraining on synthetic only"
HELD_OUT="synthetic:fog:24:100"

start=$(date +%s)
$PY -m structflow_ros.cli pretrain --data $SYNTHETIC $REAL --eval $HELD_OUT \
  --steps "$PRETRAIN_STEPS" --lr 2e-4 --eval-every 500 --threads "$THREADS" --out "$RUN/pretrain" --resume
$PY -m structflow_ros.cli finetune --init "$RUN/pretrain/last.pt" \
  --data synthetic:day:200:21 synthetic:dusk:200:22 synthetic:overcast:200:23 \
  --supervised --eval $HELD_OUT --steps "$FINETUNE_STEPS" --eval-every 500 \
  --threads "$THREADS" --out "$RUN/finetune" --resume
$PY -m structflow_ros.cli export --weights "$RUN/finetune/last.pt" --out "$OUT_MODEL" \
  --note "recipe=scripts/train_default.sh" --note "wall_time_s=$(( $(date +%s) - start ))" \
  --note "held_out_domain=fog"
$PY -m structflow_ros.cli evaluate --weights "$OUT_MODEL" --synthetic fog:24:100 \
  $( [ -d "$SHARED" ] && echo --real ) --out "$RUN/evaluate"
$PY scripts/write_model_card.py --run "$RUN" --model "$OUT_MODEL" --out "$RUN/MODEL_CARD.md"
