"""The demo's parts by role: inputs (what the camera shows, with ground truth when there is
any) and the report (metrics, latency, video, sheet). The run itself (node process, DDS client)
is in cli/demo.py and ros/depth_client.py."""
