"""Where the controller reads load and metrics: the routers and Prometheus."""
