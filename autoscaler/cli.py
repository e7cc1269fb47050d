"""``sluice``: one command, one subcommand per part.

Subcommands are resolved by module path when they run, so ``sluice router`` starts the data
plane without this package importing it: router and autoscaler stay independent layers, and
the local stack runs the router as a separate process anyway.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "up": ("autoscaler.local.up:up", "run router + autoscaler + replicas locally from one file"),
    "status": ("autoscaler.local.status:main",
               "show each revision's replicas, load and conditions"),
    "rollout": ("autoscaler.rollouts.cli:main",
                "start, watch, promote, abort, pause or resume a canary rollout"),
    "controller": ("autoscaler.kube.controller:main",
                   "run the controller on a Kubernetes cluster (kubeconfig or in-cluster)"),
    "router": ("router.main:main", "run the data plane proxy and its admin API"),
    "simulate": ("autoscaler.sim.cli:main", "replay a traffic trace against a scaling policy"),
    "loadtest": ("loadtests.loadtest:main", "run a load scenario, judge it, write a report"),
    "manifests": ("autoscaler.manifests:main",
                  "generate Kubernetes manifests: the CRDs, a router beside an InferenceService"),
}


CLUSTER_FLAGS = ("--kubeconfig", "--context", "-n", "--namespace")
"""Given to ``sluice rollout``, these mean a cluster's Rollouts, not a local controller."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        print(f"sluice: unknown command {argv[0]!r}; one of: {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(name) for name in SUBCOMMANDS)
        print("usage: sluice <command> [options]\n\ncommands:")
        for name, (_, help_) in SUBCOMMANDS.items():
            print(f"  {name:<{width}}  {help_}")
        return 0 if argv else 2
    target, _ = SUBCOMMANDS[argv[0]]
    if argv[0] == "rollout" and any(a.split("=")[0] in CLUSTER_FLAGS for a in argv[1:]):
        target = "autoscaler.kube.rollout_cli:main"
    module, _, function = target.partition(":")
    entry = getattr(importlib.import_module(module), function or "main")
    return int(entry(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
