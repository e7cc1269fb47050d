"""Load tests that validate a policy, Locust users, and the benchmark harness.

Public API:

- ``sluice loadtest SCENARIO`` (loadtest.py): a scenario's load, the system observed meanwhile,
  its expectations judged (exit 1 if one fails), one HTML report.
- Scenario files (scenario.py documents every field; bundled ones in scenarios/).
- The Locust users (locustfile.py): KServe V1, Open Inference Protocol V2 and streamed SSE
  generate requests with per-revision statistics; ``SLUICE_SCENARIO=<file> locust -f
  loadtests/locustfile.py`` runs a scenario from Locust's web UI.
- The `observe.Observer` seam, with the local (observe.py) and Kubernetes (kube_observer.py)
  implementations.

Locust runs in its own process (it patches the one that imports it with gevent); nothing here
is imported by the router or the autoscaler, and nothing here imports them: the system under
test is reached through its HTTP APIs and resources only (an import contract checks it; the
benchmark harness, bench.py, is the exception).
"""
