"""Stand-in for composition_interfaces.srv: only what importing launch_ros.actions needs.

Calling a composable-node action with it fails loudly: the types carry no fields.
"""


class LoadNode:
    """composition_interfaces/srv/LoadNode (names only; not a working service type)."""

    class Request:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError('composition_interfaces is a test stand-in here; '
                                      'composable nodes are not supported in these tests')

    class Response:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError('composition_interfaces is a test stand-in here')
