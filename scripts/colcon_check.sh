#!/usr/bin/env bash
# Build and test structflow as a package of a throw-away colcon workspace, inside .venv.
# Proves that `colcon build` installs the ament resources and `colcon test` finds the tests.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
. "$repo/.venv/bin/activate"
ws="$(mktemp -d "${TMPDIR:-/tmp}/structflow_ws.XXXXXX")"
trap 'rm -rf "$ws"' EXIT
mkdir -p "$ws/src"
ln -s "$repo" "$ws/src/structflow"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOG_DIR="$ws/roslog"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-61}"
cd "$ws"
colcon build --packages-select structflow --build-base "$ws/build" --install-base "$ws/install" \
  --event-handlers console_cohesion-
# The install must carry what `ros2 launch` / `ros2 run` resolve on a robot.
share="$ws/install/structflow/share/structflow"
for f in package.xml launch/depth.launch.py config/structflow.yaml; do
  test -e "$share/$f" || { echo "colcon install lacks share/structflow/$f" >&2; exit 1; }
done
test -e "$ws/install/structflow/share/ament_index/resource_index/packages/structflow"
ls "$ws/install/structflow/lib/structflow/depth_node" >/dev/null
# The tests of `make test` but the long ones: CI runs `make test` first, and a long test
# (marked `slow`) runs once (test/conftest.py reads this; STRUCTFLOW_SKIP_SLOW=0 runs them).
export STRUCTFLOW_SKIP_SLOW="${STRUCTFLOW_SKIP_SLOW-1}"
colcon test --packages-select structflow --build-base "$ws/build" --install-base "$ws/install" \
  --event-handlers console_direct+
colcon test-result --test-result-base "$ws/build" --verbose
