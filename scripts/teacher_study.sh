#!/usr/bin/env bash
# Does the two-view geometry teacher make the image matter on real cameras? (issue 25)
# The same continued finetuning of the shipped model (scripts/train_real.sh's finetune stage,
# FINETUNE_STEPS steps), with the teacher's labels (TEACHER_WEIGHT=1) and without (0), for
# each seed; then `structflow evaluate --real` of every run (model, constant floor, the model's
# own image-independent prior floor, image gain). Each run resumes from its last checkpoint:
# re-run the script after an interruption. Needs the teacher cache (STAGES=teacher of
# train_real.sh, or it is built here first).
#
#   bash scripts/teacher_study.sh                      # 3 seeds x 2 arms
#   SEEDS="0" ARMS="teacher" bash scripts/teacher_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STUDY=${STUDY:-runs/study}
SEEDS=${SEEDS:-0 1 2}
ARMS=${ARMS:-teacher control}
STEPS=${STEPS:-800}
INIT=${INIT:-models/structflow_default.pt}
export TEACHER_CACHE=${TEACHER_CACHE:-runs/teacher}

if ! ls "$TEACHER_CACHE"/*.teacher.npz >/dev/null 2>&1; then
  RUN=$STUDY STAGES=teacher bash scripts/train_real.sh
fi
for seed in $SEEDS; do
  for arm in $ARMS; do
    run=$STUDY/${arm}_$seed
    weight=1
    [ "$arm" = control ] && weight=0
    if [ ! -f "$run/finetune/summary.json" ] || \
        ! grep -q "\"steps\": $STEPS," "$run/finetune/summary.json"; then
      mkdir -p "$run"
      cp -n "$STUDY/udacity_camera.yaml" "$run/" 2>/dev/null || true
      RUN=$run STAGES=finetune SEED=$seed FINETUNE_STEPS=$STEPS FINETUNE_INIT=$INIT \
        TEACHER_WEIGHT=$weight bash scripts/train_real.sh
    fi
    # --aspect keep: as the node serves the exported weights (train_real.sh's export notes
    # serving=keep_aspect; a training checkpoint without the note would be judged squashed).
    [ -f "$run/evaluate/metrics.json" ] || $PY -m structflow_ros.cli evaluate \
      --weights "$run/finetune/last.pt" --real --no-flow --aspect keep --out "$run/evaluate"
  done
done
# The starting point, measured the same way.
[ -f "$STUDY/shipped/evaluate/metrics.json" ] || $PY -m structflow_ros.cli evaluate \
  --weights "$INIT" --real --no-flow --aspect keep --out "$STUDY/shipped/evaluate"
$PY scripts/teacher_study_table.py "$STUDY" --json "$STUDY/table.json"
