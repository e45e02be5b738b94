"""QoS chosen on purpose: sensor-data (best effort) input by default, configurable, and loud.

A best-effort subscription matches best-effort and reliable camera drivers alike; a reliable one
gets nothing from a best-effort camera, which users see as a silent node. A reliable publisher
serves both kinds of subscriber (RViz's Image display asks for reliable by default), which is why
outputs default to reliable. Any mismatch is logged once per topic, naming the policy.
"""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

try:  # Iron and newer
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks
try:
    from rclpy.qos import qos_policy_name_from_kind
except ImportError:  # an rclpy without it: the enum name is as good
    def qos_policy_name_from_kind(kind):
        return getattr(kind, 'name', str(kind))

RELIABILITY_CHOICES = ('best_effort', 'reliable')


def make_qos(reliability='best_effort', depth=5):
    """Keep-last, volatile profile with the given reliability (sensor data when best_effort)."""
    if reliability not in RELIABILITY_CHOICES:
        raise ValueError(f"unknown QoS reliability '{reliability}'; choose from "
                         f"{', '.join(RELIABILITY_CHOICES)}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=int(depth),
        reliability=(ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
                     else ReliabilityPolicy.RELIABLE),
        durability=DurabilityPolicy.VOLATILE)


def policy_name(kind):
    try:
        return qos_policy_name_from_kind(kind)
    except Exception:  # noqa: BLE001 - an unknown kind must not break the warning itself
        return str(kind)


class IncompatibleQosWarner:
    """Event callbacks that warn once per topic when a peer's QoS cannot match ours."""

    def __init__(self, logger):
        self._logger = logger
        self.warned = set()

    def _warn(self, key, text):
        if key not in self.warned:
            self.warned.add(key)
            self._logger.warning(text)

    def subscription(self, topic, reliability, parameter='qos_reliability'):
        def on_incompatible(event):
            policy = policy_name(event.last_policy_kind)
            self._warn(('sub', topic), (
                f"a publisher on '{topic}' offers QoS incompatible with this subscription "
                f'(policy {policy}; we request {reliability}): no messages will arrive from it. '
                f'Set {parameter}:=best_effort (matches any publisher) or match the publisher.'))
        return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)

    def publisher(self, topic, reliability, parameter='output_qos_reliability'):
        def on_incompatible(event):
            policy = policy_name(event.last_policy_kind)
            self._warn(('pub', topic), (
                f"a subscriber of '{topic}' requests QoS this publisher does not offer "
                f'(policy {policy}; we offer {reliability}): it will receive nothing. '
                f'Set {parameter}:=reliable (serves any subscriber) or change the subscriber.'))
        return PublisherEventCallbacks(incompatible_qos=on_incompatible)
