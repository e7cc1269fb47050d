"""sluice's Kubernetes drivers: the API client seam, informers, and the plain data the pure
policies read from Nodes and Pods. See autoscaler/kube/client.py for the interface."""
