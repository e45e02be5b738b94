# structflow: one-command setup. Every target creates .venv on first use from requirements.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.structflow-installed
# The real `ros2` command, launch/launch_ros, message_filters and sensor_msgs_py (not on PyPI):
# wheels beside the project when it has them (../shared/wheels); a ROS 2 install has its own.
SHARED_WHEELS ?= ../shared/wheels
ROS_TOOLS_STAMP := $(VENV)/.structflow-ros-tools
# Keep DDS on this machine for every target that may touch it.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: venv ros-tools test test-fast colcon-test demo bench render train-default train-first \
	replicate replicate-real clean

venv: $(STAMP) ros-tools

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# --no-deps: launch_ros names ament_index_python, which PyPI ships as ros-ament-index-python.
ros-tools: $(STAMP)
	@if [ -f $(ROS_TOOLS_STAMP) ]; then :; \
	elif ls $(SHARED_WHEELS)/*.whl >/dev/null 2>&1; then \
	  $(PY) -m pip install --quiet --no-deps $(SHARED_WHEELS)/*.whl && \
	  $(PY) -m pip install --quiet -r requirements-ros-tools.txt && touch $(ROS_TOOLS_STAMP); \
	else echo "note: no ROS 2 tool wheels in $(SHARED_WHEELS): tests of ros2 launch/run/topic/param/service are skipped"; fi

test: $(STAMP) ros-tools
	$(PY) -m pytest -q -ra test

test-fast: $(STAMP) ros-tools
	$(PY) -m pytest -q -ra -m 'not slow' test

# The ROS workspace path: colcon build + colcon test of this package inside the venv.
colcon-test: $(STAMP) ros-tools
	bash scripts/colcon_check.sh

# The real node on a synthetic fog drive (held out of training), or DEMO_SOURCE=<video/folder/bag>;
# DEMO_DOMAIN=<domain>; DEMO_ARGS='--rate 15 --frames 200'. Report: reports/demo-<time>/.
demo: $(STAMP)
	$(PY) -m structflow_ros.cli demo $(DEMO_ARGS)

clean:
	rm -rf build install log .pytest_cache

# Recipe of the shipped default weights (CPU, resumable; see models/MODEL_CARD.md).
# The shipped model's recipe (issue 10: real video, calibrated finetuning, every aspect); writes
# runs/real/structflow_real.pt and its evaluation. Copy it to models/ only when it is better.
train-default: $(STAMP)
	bash scripts/train_real.sh

# The first default model (synthetic + KITTI, squashed 320x96), which train-default starts from.
train-first: $(STAMP)
	OUT_MODEL=runs/default/structflow_first.pt bash scripts/train_default.sh

# Scratch vs flow-pretrained encoders, several seeds (docs/replication.md).
replicate: $(STAMP)
	$(PY) scripts/replicate_paper.py

# The same with real-video pretraining and real evaluation sets (docs/replication_real.md).
replicate-real: $(STAMP)
	$(PY) scripts/replicate_real.py

# Serving backends, training precision and the node over DDS, one report (docs/benchmarks.md).
bench: $(STAMP)
	$(PY) -m structflow_ros.cli bench all --markdown docs/benchmarks.md
