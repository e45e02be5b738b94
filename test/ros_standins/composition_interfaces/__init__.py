"""Stand-in for composition_interfaces (TEST ONLY; see test/ros_standins/README.md)."""
