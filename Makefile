# structflow: one-command setup. Every target creates .venv on first use from requirements.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.structflow-installed
# Keep DDS on this machine for every target that may touch it.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: venv test test-fast colcon-test demo bench render train-default clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra test

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m 'not slow' test

# The ROS workspace path: colcon build + colcon test of this package inside the venv.
colcon-test: $(STAMP)
	bash scripts/colcon_check.sh

# The real node on a synthetic fog drive (held out of training), or DEMO_SOURCE=<video/folder/bag>;
# DEMO_DOMAIN=<domain>; DEMO_ARGS='--rate 15 --frames 200'. Report: reports/demo-<time>/.
demo: $(STAMP)
	$(PY) -m structflow_ros.cli demo $(DEMO_ARGS)

clean:
	rm -rf build install log .pytest_cache

# Recipe of the shipped default weights (CPU, resumable; see models/MODEL_CARD.md).
train-default: $(STAMP)
	bash scripts/train_default.sh

# Scratch vs flow-pretrained encoders, several seeds (docs/replication.md).
replicate: $(STAMP)
	$(PY) scripts/replicate_paper.py

# Serving backends, training precision and the node over DDS, one report (docs/benchmarks.md).
bench: $(STAMP)
	$(PY) -m structflow_ros.cli bench all --markdown docs/benchmarks.md
