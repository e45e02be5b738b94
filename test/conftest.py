"""Test-wide setup: DDS stays on this machine, every test gets its own ROS domain and log dir.

The environment is set here, not in the developer's shell, so `make test`, `colcon test` and a
bare `pytest` all behave the same. Child processes inherit it (start them with
`sys.executable` and `os.environ`, see toolchain notes on the ROS wheels' re-exec).
"""
import itertools
import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARED_DATA = Path(os.environ.get('STRUCTFLOW_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))

# A background job of a non-interactive shell (`make test &`, `(cmd &)`) starts with SIGINT
# ignored, and an ignored signal stays ignored across fork and exec: every child process would
# then ignore the Ctrl-C that the tests send it, and those tests fail for the shell's reason.
# A handled signal is reset to the default in children, so handle it here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_LOG_DIR', tempfile.mkdtemp(prefix='structflow_roslog_'))
# Small thread pools: the test machine has 2 cores and tests start several processes.
os.environ.setdefault('OMP_NUM_THREADS', '2')

# Domain ids 1..101 are valid on Linux for every RMW. Spread sessions by pid so that two test
# sessions on one machine (make test and colcon test, say) do not share a domain.
_DOMAIN_BASE = 1 + (os.getpid() % 5) * 20
_domain_ids = itertools.cycle(range(_DOMAIN_BASE, _DOMAIN_BASE + 20))
os.environ['ROS_DOMAIN_ID'] = str(next(_domain_ids))


def pytest_collection_modifyitems(config, items):
    """STRUCTFLOW_SKIP_SLOW=1 leaves out the long tests (`slow`): CI's second pass (colcon test,
    scripts/colcon_check.sh) sets it, since `make test` ran them already. An environment
    variable, not `-m`: colcon sets PYTEST_ADDOPTS itself and quoting through its
    --pytest-args is fragile."""
    if os.environ.get('STRUCTFLOW_SKIP_SLOW') != '1':
        return
    slow = [item for item in items if item.get_closest_marker('slow') is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker('slow') is None]


@pytest.fixture
def ros_env(monkeypatch, tmp_path):
    """Give this test a fresh ROS domain and log dir; returns the environment for children."""
    monkeypatch.setenv('ROS_DOMAIN_ID', str(next(_domain_ids)))
    monkeypatch.setenv('ROS_LOG_DIR', str(tmp_path / 'roslog'))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    return dict(os.environ)


@pytest.fixture
def shared_data():
    """Path of ../shared/data; skips the test, naming the folder, when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'real sample data folder {SHARED_DATA} is absent (CI has ../shared/data)')
    return SHARED_DATA
