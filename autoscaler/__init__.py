"""The control plane: collects, decides, acts and publishes routes."""
