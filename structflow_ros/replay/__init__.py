"""`structflow replay`: recorded drives through the node's per-frame pipeline, measured
against ground truth, shown, and written back as a bag (no ROS needed)."""
