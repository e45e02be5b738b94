"""Where the frames of one streamed run went, and how fast: end-to-end latency (image stamp ->
depth received), rates, frames lost before the node, dropped by it, lost after it, from the
viewer's replies and the node's own /diagnostics counters. No rclpy import."""
import numpy as np

# Node counters that say where an input frame went once the node took it.
DROP_COUNTERS = ('dropped_stale', 'dropped_bad_input', 'dropped_no_scale', 'processing_errors')


def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else float('nan')


def rate_hz(times_ns):
    """Events per second between the first and the last of `times_ns` (0 for < 2 events)."""
    if len(times_ns) < 2:
        return 0.0
    span = (max(times_ns) - min(times_ns)) / 1e9
    return (len(times_ns) - 1) / span if span > 0 else 0.0


def _counter_delta(after, before, key):
    if after is None or not isinstance(after.get(key), int):
        return None
    base = before.get(key, 0) if before is not None else 0
    return after[key] - (base if isinstance(base, int) else 0)


def summarize_run(client, published, before=None, after=None, expect=('depth',)):
    """Latency, rates and frame accounting of one streamed run.

    published: [(stamp_ns, index)] from `DepthClient.stream`; before / after: the node's
    diagnostics values at the start and the end (counters are differenced, so warm-up frames
    are left out of the counts; the node's timing percentiles cover its last 300 frames).
    e2e latency = depth received - image stamp; e2e_all = the last of `expect` received.
    """
    latencies, all_latencies, receive_times = [], [], []
    for stamp, _ in published:
        hit = client.reply(stamp, 'depth')
        if hit is None:
            continue
        latencies.append((hit[0] - stamp) / 1e6)
        receive_times.append(hit[0])
        arrivals = [client.reply(stamp, topic) for topic in expect]
        if all(arrivals):
            all_latencies.append((max(a[0] for a in arrivals) - stamp) / 1e6)
    sent = len(published)
    received = len(latencies)
    frames_in = _counter_delta(after, before, 'frames_in')
    frames_out = _counter_delta(after, before, 'frames_out')
    dropped = [_counter_delta(after, before, key) for key in DROP_COUNTERS]
    dropped_by_node = None if None in dropped else sum(dropped)
    summary = {
        'frames_sent': sent,
        'depth_received': received,
        'camera_rate_hz': rate_hz([stamp for stamp, _ in published]),
        'output_rate_hz': rate_hz(receive_times),
        'e2e_ms_p50': percentile(latencies, 50),
        'e2e_ms_p95': percentile(latencies, 95),
        'e2e_ms_max': max(latencies) if latencies else float('nan'),
        'e2e_all_outputs_ms_p50': percentile(all_latencies, 50),
        'e2e_all_outputs_ms_p95': percentile(all_latencies, 95),
        'all_outputs_received': len(all_latencies),
        'frames_in_node': frames_in,
        'frames_out_node': frames_out,
        'dropped_by_node': dropped_by_node,
        'dropped_stale': dropped[0],
        'lost_before_node': None if frames_in is None else sent - frames_in,
        'lost_after_node': None if frames_out is None else frames_out - received,
        'frames_lost': None if dropped_by_node is None else sent - received - dropped_by_node,
        'latencies_ms': latencies,
    }
    for key in ('inference_ms_p50', 'inference_ms_p95', 'queue_ms_p50', 'queue_ms_p95',
                'processing_ms_p50', 'processing_ms_p95', 'overhead_ms_p50',
                'overhead_ms_p95'):
        value = after.get(key) if after is not None else None
        summary[f'node_{key}'] = float(value) if isinstance(value, (int, float)) else float(
            'nan')
    return summary
