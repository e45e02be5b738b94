#!/usr/bin/env bash
# Recipe of the real-camera default model (issue 10), on the CPU of a 2-core machine. Every
# stage resumes from its last checkpoint: re-run the script after an interruption (or in the
# next session) and it continues where it stopped.
#
#   bash scripts/train_real.sh                     # all stages
#   STAGES="pretrain" bash scripts/train_real.sh   # one stage
#
# 1. pretrain: flow on real uncalibrated dashcam clips (crops for dashboards, A-pillars and
#    time stamps; repeated frames dropped; 25-60 fps thinned to ~10 Hz) + the KITTI clips + the
#    synthetic world (fog held out), random crops at every training aspect, bf16, starting from
#    the shipped model's flow path.
# 2. finetune: self-supervised depth on the Udacity clip (undistorted with the camera_info
#    written by `structflow calibrate`) and the KITTI clips (their calibration), jointly with
#    supervised synthetic depth (streets and indoor rooms) and the flow loss (the Y shape
#    adaptation needs), and the two-view geometry teacher's labels on all the real video (scale-
#    invariant, `structflow finetune --teacher`).
# teacher (before finetune): `structflow teacher` labels every real clip once (dashcams
#    self-calibrated, Udacity and KITTI with their calibrations) into $TEACHER_CACHE; a clip
#    already cached is skipped, so the stage resumes too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/real}
SHARED=${STRUCTFLOW_SHARED_DATA:-../shared/data}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-4000}
FINETUNE_STEPS=${FINETUNE_STEPS:-2000}
ROOM_FRAMES=${ROOM_FRAMES:-60}
THREADS=${THREADS:-2}
SEED=${SEED:-0}
# Finetuning starts from the pretraining unless FINETUNE_INIT names another checkpoint.
FINETUNE_INIT=${FINETUNE_INIT:-$RUN/pretrain/last.pt}
# Decay of the weight average written to finetune/ema.pt (0: none).
EMA=${EMA:-0}
# Weight of the log-depth gradient matching term of the supervised depth loss (0: silog alone).
DEPTH_GRADIENT=${DEPTH_GRADIENT:-0}
# 1: real-camera artefacts (vignetting, blur, noise, tone curve, JPEG) on half the synthetic
# finetuning frames (finetune --camera-artefacts); 0: clean renders.
CAMERA_ARTEFACTS=${CAMERA_ARTEFACTS:-0}
ARTEFACT_FLAG=""
[ "$CAMERA_ARTEFACTS" = 1 ] && ARTEFACT_FLAG=--camera-artefacts
# 1: real photographs (crops of the pretraining clips above, never evaluation frames) on half
# the rooms' objects and a quarter of their walls (finetune --photo-textures); 0: procedural
# materials only.
PHOTO_TEXTURES=${PHOTO_TEXTURES:-0}
STAGES=${STAGES:-pretrain teacher finetune export}
# The teacher's label cache (shared by runs: the labels do not depend on the model) and the
# weight of its loss in the finetuning (0: the finetuning without the teacher).
TEACHER_CACHE=${TEACHER_CACHE:-runs/teacher}
TEACHER_WEIGHT=${TEACHER_WEIGHT:-1}
TEACHER_FLAG=""
[ "$TEACHER_WEIGHT" != 0 ] && TEACHER_FLAG="--teacher $TEACHER_CACHE --teacher-weight $TEACHER_WEIGHT"
U=$SHARED/udacity_calibrated_video
# Pretraining starts from the first default model's flow path (synthetic + KITTI, made by
# scripts/train_default.sh / `make train-first`); by default the file as committed in 6e7db80.
FIRST_MODEL=${FIRST_MODEL:-$RUN/first_default.pt}

# Per-clip preparation (crops, stride) lives in scripts/real_video_specs.txt.
REAL_VIDEO=$(grep -v '^#' scripts/real_video_specs.txt | sed "s|^|$SHARED/|")
KITTI="$SHARED/kitti_odometry_clips/KITTI_sequence_1/image_l $SHARED/kitti_odometry_clips/KITTI_sequence_2/image_l"
# Indoor rooms (data/synthetic/room.py): 20 seeds, each shared out over the 6 training sizes
# (a room of its own per size), so 120 rooms; without them the model loses to a constant depth
# on real indoor cameras.
ROOM_SEEDS=${ROOM_SEEDS:-$(seq 31 50)}
# room: furniture as solid blocks; cluttered_room: the same rooms made irregular (open shelves,
# people, office chairs, partitions, piles; data/synthetic/room.py, measured in
# docs/real_camera.md).
ROOM_DOMAIN=${ROOM_DOMAIN:-room}
ROOMS=$(for seed in $ROOM_SEEDS; do
  printf 'synthetic:%s:%s:%s ' "$ROOM_DOMAIN" "$ROOM_FRAMES" "$seed"; done)
SYNTHETIC="synthetic:day:300:11 synthetic:dusk:300:12 synthetic:overcast:300:13 synthetic:day:300:14"
# Supervised synthetic streets of the finetuning (STREETS="" leaves them out: the indoor-only
# finetuning measured in docs/real_camera.md, worse indoors than with them).
STREETS=${STREETS-synthetic:day:600:21 synthetic:dusk:600:22 synthetic:overcast:600:23}
HELD_OUT="synthetic:fog:24:100"
TEXTURE_FLAG=""
[ "$PHOTO_TEXTURES" = 1 ] && TEXTURE_FLAG="--photo-textures $REAL_VIDEO"

# The Udacity camera's intrinsics and distortion, from its chessboards.
udacity_calibration() {
  [ -f "$RUN/udacity_camera.yaml" ] || $PY -m structflow_ros.cli calibrate \
    "$U/camera_cal" --pattern 9x6 --camera-name udacity --out "$RUN/udacity_camera.yaml"
}

for stage in $STAGES; do
  case $stage in
    pretrain)
      mkdir -p "$RUN"
      [ -f "$FIRST_MODEL" ] || git show 6e7db80:models/structflow_default.pt > "$FIRST_MODEL"
      $PY -m structflow_ros.cli pretrain --data $REAL_VIDEO $KITTI $SYNTHETIC --random-crops \
        --init "$FIRST_MODEL" --strides 1,2 --eval $HELD_OUT \
        --steps "$PRETRAIN_STEPS" --lr 2e-4 --eval-every 500 --checkpoint-every 100 \
        --threads "$THREADS" --out "$RUN/pretrain" --resume ;;
    teacher)
      udacity_calibration
      CAL="calib=$RUN/udacity_camera.yaml,crop=0:0.06:0:0,stride=3"
      CLIPS=$(grep -v '^#' scripts/real_video_specs.txt | grep -v udacity_calibrated | \
        sed "s|^|$SHARED/|")
      for clip in chenwade__short_project_video hortovanyi__project_video_shadow \
          hortovanyi__project_video_short; do
        CLIPS="$CLIPS $U/fork_subclips/$clip.mp4#$CAL"
      done
      for clip in 1 2; do
        KC=$SHARED/kitti_odometry_clips/KITTI_sequence_$clip
        CLIPS="$CLIPS $KC/image_l#calib=$KC/calib.txt"
      done
      $PY -m structflow_ros.cli teacher $CLIPS --out "$TEACHER_CACHE" --sheet ;;
    finetune)
      udacity_calibration
      CAL="calib=$RUN/udacity_camera.yaml,crop=0:0.06:0:0"
      VIDEO="$U/fork_subclips/chenwade__short_project_video.mp4#$CAL
$U/fork_subclips/hortovanyi__project_video_shadow.mp4#$CAL
$U/fork_subclips/hortovanyi__project_video_short.mp4#$CAL"
      for clip in 1 2; do
        KC=$SHARED/kitti_odometry_clips/KITTI_sequence_$clip
        VIDEO="$VIDEO $KC/image_l#calib=$KC/calib.txt"
      done
      $PY -m structflow_ros.cli finetune --init "$FINETUNE_INIT" \
        --data $STREETS $ROOMS \
        --video $VIDEO --supervised --self-supervised --depth-gradient-weight "$DEPTH_GRADIENT" \
        --random-crops --color-jitter $ARTEFACT_FLAG $TEXTURE_FLAG $TEACHER_FLAG \
        --input-norm per_image --eval $HELD_OUT \
        --steps "$FINETUNE_STEPS" --lr 1e-4 --eval-every 500 --checkpoint-every 100 \
        --threads "$THREADS" --seed "$SEED" --ema "$EMA" --out "$RUN/finetune" --resume ;;
    export)
      $PY -m structflow_ros.cli export --weights "$RUN/finetune/last.pt" --out "$RUN/structflow_real.pt" \
        --note "recipe=scripts/train_real.sh" --note "held_out_domain=fog" --note "serving=keep_aspect"
      $PY -m structflow_ros.cli evaluate --weights "$RUN/structflow_real.pt" --real --aspect both \
        --out "$RUN/evaluate" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
