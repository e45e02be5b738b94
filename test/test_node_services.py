"""The depth node's service handlers are total and never queue (issue 28, defect 4).

In-process (rclpy, a real node, no executor spinning): each handler is called directly with an
exception injected into the work it does; the reply says what failed and the node keeps
serving. The over-DDS check (80 concurrent calls while streaming) is in test_adaptation_node.py.
"""
import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from rclpy.context import Context
from rclpy.parameter import Parameter
from std_srvs.srv import SetBool, Trigger

from structflow_ros.core.checkpoint import save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model
from structflow_ros.online import control
from structflow_ros.ros import depth_node

pytestmark = pytest.mark.ros


@pytest.fixture
def adapting_node(ros_env, tmp_path):
    torch.manual_seed(3)
    weights = save_checkpoint(tmp_path / 'tiny_flow.pt', build_model(ModelConfig(
        height=64, width=96, flow_branch=True, pose_branch=False)))
    context = Context()
    rclpy.init(context=context)
    node = depth_node.DepthNode(context=context, parameter_overrides=[
        Parameter('weights', value=str(weights)), Parameter('backend', value='eager'),
        Parameter('adapt', value=True), Parameter('adapt_threads', value=1),
        Parameter('adapt_state_dir', value=str(tmp_path / 'state' / '{node}'))])
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def trigger(handler):
    return handler(Trigger.Request(), Trigger.Response())


def still_serving(node):
    """The inference thread is alive and the served model computes finite depth."""
    assert node._thread.is_alive()
    depth = node.server.served.predictor.predict(np.full((64, 96, 3), 128, np.uint8))
    assert np.isfinite(depth).all()


def test_an_exception_in_any_handler_is_a_failed_reply_and_the_node_goes_on(adapting_node,
                                                                             monkeypatch):
    node = adapting_node
    assert node.adapter.state_dir.directory.name == 'depth_node'  # '{node}' was resolved

    def boom(*args, **kwargs):
        raise PermissionError(13, 'Permission denied', '/mnt/weights/model.pt')
    monkeypatch.setattr(control, 'read_serving_checkpoint', boom)
    reply = trigger(node._on_reload)
    assert not reply.success and 'PermissionError' in reply.message
    assert 'Permission denied' in reply.message
    monkeypatch.setattr(node.adapter, 'set_enabled', boom)
    reply = node._on_adapt_enable(SetBool.Request(data=False), SetBool.Response())
    assert not reply.success and 'PermissionError' in reply.message
    assert 'goes on serving version 1' in reply.message
    monkeypatch.setattr(node.adapter, 'reset', boom)
    reply = trigger(node._on_adapt_reset)
    assert not reply.success and 'an adaptation reset failed: PermissionError' in reply.message
    monkeypatch.setattr(node.adapter, 'save', boom)
    reply = trigger(node._on_adapt_save)
    assert not reply.success and 'a save failed: PermissionError' in reply.message
    still_serving(node)
    # Every service the node offers was covered above (a new one needs its case here).
    names = sorted(service.srv_name.rsplit('/', 1)[-1] for service in node.services
                   if '/adaptation/' in service.srv_name or 'reload' in service.srv_name)
    assert names == ['enable', 'reload_weights', 'reset', 'save']
    # rclpy's own parameter services are still there (a node attribute once shadowed its list).
    assert any(service.srv_name.endswith('/set_parameters') for service in node.services)
    monkeypatch.undo()
    assert trigger(node._on_adapt_save).success  # and the real calls still work


def test_a_request_while_the_same_kind_runs_is_answered_busy_at_once(adapting_node,
                                                                      monkeypatch):
    node = adapting_node
    release, started = threading.Event(), threading.Event()
    real_save = node.adapter.save

    def slow_save():
        started.set()
        release.wait(30)
        return real_save()
    monkeypatch.setattr(node.adapter, 'save', slow_save)
    first = {}
    caller = threading.Thread(target=lambda: first.update(reply=trigger(node._on_adapt_save)))
    caller.start()
    assert started.wait(10)
    begin = time.monotonic()
    replies = [trigger(node._on_adapt_save) for _ in range(20)]
    assert time.monotonic() - begin < 2.0
    assert all(not r.success and r.message.startswith('busy: a save is in progress')
               for r in replies)
    # Reload and reset share one kind (both change the served weights); a save does not
    # block them.
    assert trigger(node._on_reload).success
    release.set()
    caller.join(30)
    assert first['reply'].success and 'saved version' in first['reply'].message
    still_serving(node)
