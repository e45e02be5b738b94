"""Slow service calls (reload, reset, save) run off the executor, one at a time per kind.

ROS-free: the node's service handlers hand the work to `SlowCalls.run` and copy the
(ok, message) it returns into their response. Three guarantees, each tested without DDS:

- **Total.** Any exception in the work becomes (False, '<what> failed: <Type>: <reason>'); the
  caller never sees it, so a handler can never take the node down.
- **Bounded.** One call of a kind runs at a time, on that kind's own worker thread. A request
  that arrives while one of its kind runs is answered at once ("busy: a save is in progress,
  started 1.2 s ago") instead of queueing behind it: 80 concurrent calls cost at most one run
  per kind, not 80 runs in a row.
- **A bounded wait.** The caller waits at most `timeout` for the work; past that it is answered
  (False, 'still running ...') and the work's own result is still logged when it finishes, so an
  executor thread is never held longer than the timeout (a save to a stuck network disk, say).
"""
import threading
import time


class SlowCalls:
    """One worker per kind of call; `run` is safe to call from any number of threads."""

    def __init__(self, log=None, clock=time.monotonic):
        self._log = log or (lambda level, text: None)
        self._clock = clock
        self._lock = threading.Lock()
        self._running = {}  # kind -> (what, started)

    def busy(self, kind):
        """'what, started N s ago' while a call of `kind` runs, else ''."""
        with self._lock:
            running = self._running.get(kind)
        if running is None:
            return ''
        what, started = running
        return f'{what} is in progress, started {self._clock() - started:.1f} s ago'

    def run(self, kind, what, work, timeout):
        """Run `work()` (returning (ok, message)) as the only `kind` call; returns (ok, message).

        `what` names the call in messages ('a save', 'a reload').
        """
        with self._lock:
            if kind in self._running:
                running, started = self._running[kind]
                return False, (f'busy: {running} is in progress, started '
                               f'{self._clock() - started:.1f} s ago; try again when it is done')
            self._running[kind] = (what, self._clock())
        outcome = {}
        done = threading.Event()

        def target():
            try:
                outcome['result'] = _checked(work(), what)
            except Exception as error:  # noqa: BLE001 - total: every failure becomes a reply
                outcome['result'] = (False, f'{what} failed: {type(error).__name__}: {error}')
            finally:
                with self._lock:
                    self._running.pop(kind, None)
                done.set()
                if outcome.get('abandoned'):
                    ok, message = outcome['result']
                    self._log('info' if ok else 'error',
                              f'{what} finished after its caller stopped waiting: {message}')

        worker = threading.Thread(target=target, name=f'structflow-service-{kind}', daemon=True)
        worker.start()
        if done.wait(timeout):
            return outcome['result']
        outcome['abandoned'] = True
        if done.is_set():  # finished between the wait and the flag: its log line was not written
            return outcome['result']
        return False, (f'{what} is still running after {timeout:.0f} s; its result will be '
                       'logged when it finishes')


def _checked(result, what):
    ok, message = result
    return bool(ok), str(message) if message else f'{what} {"done" if ok else "failed"}'
