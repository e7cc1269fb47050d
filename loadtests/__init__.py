"""Load scenarios (locust) and the benchmark harness; run as separate processes, never imported
by the router or the autoscaler."""
