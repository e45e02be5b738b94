"""What the node's services do, without ROS: reload the weights, and pause, reset or save
adaptation. Each call returns (ok, message); the node's handlers only copy it into the reply.

The slow ones (reload and reset change the served weights: one kind; save) run through
SlowCalls (online/service_calls.py): off the caller's thread, one per kind at a time, a second
request answered 'busy' at once, any exception a failed reply.
"""
from structflow_ros.core.checkpoint import CheckpointError
from structflow_ros.online.server import read_serving_checkpoint
from structflow_ros.online.service_calls import SlowCalls

# How long a reload or a reset waits for the serving thread to serve the new version.
SWAP_TIMEOUT_S = 10.0
# How long a caller waits for its slow call before it is answered 'still running' (the
# call's result is then logged).
SERVICE_WAIT_S = 30.0


class ServingControl:
    """Reload and adaptation controls over one stack (online/stack.py)."""

    def __init__(self, stack, serving_alive, log=None):
        self.stack = stack
        self._alive = serving_alive  # whether the serving thread runs (a dead one never swaps)
        self._log = log or (lambda level, text: None)
        self.calls = SlowCalls(log=self._log)

    @property
    def served_version(self):
        return self.stack.server.served.version

    def reload(self, path):
        """Serve the checkpoint at `path` (adaptation goes on from it); (ok, message)."""
        return self.calls.run('weights', 'a reload', lambda: self._reload(path),
                              SERVICE_WAIT_S)

    def _reload(self, path):
        serving = self.served_version
        adapter = self.stack.adapter
        try:
            state_dict, meta = read_serving_checkpoint(path)
            if adapter is not None:
                # Adaptation continues from the new weights (and resets its anchor to them).
                version = adapter.rebase(state_dict, meta)
            else:
                version = self.stack.store.publish(state_dict, meta)
        except (CheckpointError, ValueError, RuntimeError) as error:
            return False, f'reload refused, still serving version {serving}: {error}'
        del state_dict
        served, reason = self.stack.server.wait_until_serving(version, SWAP_TIMEOUT_S,
                                                              alive=self._alive)
        if not served:
            return False, (f'version {version} ({path}) published but not served: {reason}; '
                           f'still serving version {self.served_version}')
        message = f'serving {path} as version {version}'
        self._log('info', message)
        return True, message

    def adaptation_off(self):
        refused = self.stack.adaptation_refused
        return False, 'adaptation is off' + (f': {refused}' if refused
                                             else ' (start the node with adapt:=true)')

    def enable(self, enabled):
        if self.stack.adapter is None:
            return self.adaptation_off()
        message = self.stack.adapter.set_enabled(enabled)
        self._log('info', message)
        return True, message

    def reset(self):
        """Back to the base weights, served, and the saved state removed; (ok, message)."""
        if self.stack.adapter is None:
            return self.adaptation_off()
        return self.calls.run('weights', 'an adaptation reset', self._reset, SERVICE_WAIT_S)

    def _reset(self):
        adapter = self.stack.adapter
        removed, message = adapter.reset()
        served, reason = self.stack.server.wait_until_serving(adapter.served_version,
                                                              SWAP_TIMEOUT_S, alive=self._alive)
        if not served:
            message += f'; not served yet: {reason}'
        return served and removed, message

    def save(self):
        if self.stack.adapter is None:
            return self.adaptation_off()
        return self.calls.run('save', 'a save', self.stack.adapter.save, SERVICE_WAIT_S)
