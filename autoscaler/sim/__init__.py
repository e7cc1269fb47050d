"""The simulation driver: `sluice simulate` runs the core on a simulated clock and replicas."""
