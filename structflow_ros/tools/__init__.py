"""ROS-free helpers of the demo and the benchmarks: starting a node process, summarising a run."""
