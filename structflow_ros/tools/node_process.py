"""The depth node as a child process (what `ros2 run structflow depth_node` starts), with the
environment every DDS process here gets: localhost discovery, its own ROS_LOG_DIR, a domain id
picked on purpose. No rclpy import: used by the demo, the node benchmark and tests."""
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import yaml

NODE_MODULE = 'structflow_ros.ros.depth_node'
# Random domain ids come from here: clear of 0 (everyone's default) and of the ids the tests
# spread over (1..101 is the valid range on Linux for every RMW).
RANDOM_DOMAIN_RANGE = (30, 99)


class NodeStartError(RuntimeError):
    """The node process exited or never matched our topics; the message has its log tail."""


# ----------------------------------------------------------------------------------------------
# Environment and the node process
# ----------------------------------------------------------------------------------------------
def pick_domain_id(requested=None, environ=None):
    """(domain_id, how): `requested`, else $ROS_DOMAIN_ID, else random in 30..99."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        return int(requested), 'from --ros-domain-id'
    value = environ.get('ROS_DOMAIN_ID', '').strip()
    if value:
        if not value.isdigit() or not 0 <= int(value) <= 232:
            raise ValueError(f"ROS_DOMAIN_ID '{value}' is not a domain id (an integer 0..232, "
                             '0..101 portable)')
        return int(value), 'from ROS_DOMAIN_ID'
    return random.randint(*RANDOM_DOMAIN_RANGE), 'random; set ROS_DOMAIN_ID to choose'


def ros_env(domain_id, log_dir, base=None):
    """Environment for a ROS process: local-only discovery, its own log dir and domain.

    Children start with `sys.executable` and this (the parent's) environment: the ROS wheels
    re-execute Python with LD_LIBRARY_PATH set (toolchain.md).
    """
    env = dict(os.environ if base is None else base)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_LOG_DIR=str(log_dir),
               ROS_DOMAIN_ID=str(int(domain_id)), PYTHONUNBUFFERED='1')
    source_root = str(Path(__file__).resolve().parents[2])  # runs from a checkout too
    paths = [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    if source_root not in paths:
        env['PYTHONPATH'] = os.pathsep.join([source_root] + paths)
    return env


def write_params_file(path, parameters, base_file=None):
    """A --params-file for the node: `base_file`'s parameters (if any) updated with ours.

    A YAML file (not `-p name:=value`) keeps any path or string exactly as given.
    """
    values = {}
    if base_file:
        loaded = yaml.safe_load(Path(base_file).read_text()) or {}
        for section in loaded.values():  # '/**', 'depth_node', '/ns/depth_node', ...
            if isinstance(section, dict):
                values.update(section.get('ros__parameters', {}) or {})
    values.update(parameters)
    Path(path).write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    return Path(path)


def params_file_value(path, name, default=None):
    """One parameter of a file written by write_params_file (what the node will use)."""
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    return loaded.get('/**', {}).get('ros__parameters', {}).get(name, default)


def _parent_death_signal():
    """preexec_fn: SIGINT the child when this process dies (Linux), so no node outlives us."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_signal():
        prctl(pr_set_pdeathsig, int(signal.SIGINT))
    return set_signal if sys.platform.startswith('linux') else None


class NodeProcess:
    """The depth node as a child process, output in a log file; stop() = SIGINT, wait, kill.

    The child gets a session of its own, so a Ctrl-C in the terminal reaches only the parent,
    which then stops the node in order; it also gets SIGINT if the parent dies.
    """

    def __init__(self, ros_args, env, log_path, module=NODE_MODULE):
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, 'wb')
        self.command = [sys.executable, '-m', module, '--ros-args', *map(str, ros_args)]
        try:
            self.popen = subprocess.Popen(self.command, stdout=self._log,
                                          stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True,
                                          preexec_fn=_parent_death_signal())
        except BaseException:
            self._log.close()
            raise

    @property
    def alive(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def log_tail(self, chars=3000):
        try:
            return self.log_path.read_text(errors='replace')[-chars:]
        except OSError:
            return ''

    def stop(self, timeout=15.0):
        """SIGINT, wait up to `timeout` s, then SIGKILL; idempotent; returns the exit code."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGINT)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(10)
        finally:
            if not self._log.closed:
                self._log.close()
        return self.popen.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def node_ros_args(params_file, namespace):
    """--ros-args for the node: our parameters and a namespace of its own."""
    return ['--params-file', str(params_file), '-r', f'__ns:={namespace}']
