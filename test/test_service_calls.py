"""SlowCalls (online/service_calls.py): total, one call per kind at a time, a bounded wait.
ROS-free; the node's handlers over these are tested in test_node_services.py."""
import threading
import time

from structflow_ros.online.service_calls import SlowCalls


def test_an_exception_in_the_work_becomes_a_failed_reply():
    calls = SlowCalls()

    def broken():
        raise KeyError('state_dict')
    ok, message = calls.run('save', 'a save', broken, timeout=5)
    assert not ok and message == "a save failed: KeyError: 'state_dict'"
    assert calls.busy('save') == ''  # a failure frees the kind
    assert calls.run('save', 'a save', lambda: (True, 'saved version 3'), 5) == (
        True, 'saved version 3')


def test_a_second_call_of_a_running_kind_is_answered_busy_at_once():
    calls = SlowCalls()
    release = threading.Event()
    started = threading.Event()

    def slow():
        started.set()
        release.wait(30)
        return True, 'saved'
    first = {}
    runner = threading.Thread(target=lambda: first.update(r=calls.run('save', 'a save', slow, 30)))
    runner.start()
    assert started.wait(10)
    begin = time.monotonic()
    replies = [calls.run('save', 'a save', slow, 30) for _ in range(20)]
    assert time.monotonic() - begin < 2.0  # 20 answers, none queued behind the running save
    assert all(not ok and message.startswith('busy: a save is in progress, started')
               for ok, message in replies)
    assert 'a save is in progress' in calls.busy('save')
    # Another kind is not blocked by a running save.
    assert calls.run('weights', 'a reload', lambda: (True, 'reloaded'), 5) == (True, 'reloaded')
    release.set()
    runner.join(30)
    assert first['r'] == (True, 'saved') and calls.busy('save') == ''


def test_the_caller_waits_at_most_the_timeout_and_the_late_result_is_logged():
    logged = []
    calls = SlowCalls(log=lambda level, text: logged.append((level, text)))
    release = threading.Event()

    def stuck():
        release.wait(30)
        return False, 'disk full'
    begin = time.monotonic()
    ok, message = calls.run('save', 'a save', stuck, timeout=0.3)
    assert time.monotonic() - begin < 5.0
    assert not ok and 'still running after 0 s' in message and 'logged' in message
    assert calls.run('save', 'a save', stuck, 5)[1].startswith('busy: a save')
    release.set()
    deadline = time.monotonic() + 10
    while not logged and time.monotonic() < deadline:
        time.sleep(0.02)
    assert logged == [('error', 'a save finished after its caller stopped waiting: disk full')]
    assert calls.busy('save') == ''
