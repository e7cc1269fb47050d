"""``sluice rollout --kubeconfig … -n NS``: the same commands as on ``sluice up``, on a cluster.

::

    sluice rollout -n prod start -f rollout.yaml        # creates the Rollout (or restarts it)
    sluice rollout -n prod status [SERVICE] [--json]     # from the Rollouts' status
    sluice rollout -n prod promote|abort|pause|resume|restore SERVICE

On a cluster a rollout is a Rollout resource and the controller drives it; a command is the
annotation ``sluice.dev/command`` on it (what ``kubectl annotate`` would set), which the
controller applies and takes off: this waits for that, then shows the rollout. ``sluice``
chooses this over the local controller whenever ``--kubeconfig``, ``--context`` or ``-n`` is
given. A file that is not a valid rollout exits 2 naming the field; the apiserver refusing
exits 2 with its reason; anything else that fails exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from autoscaler.kube import client
from autoscaler.rollouts import cli as local_cli
from policies import resources, rollout, validation

APPLIED_WAIT_S = 30.0
"""Seconds a command waits for the controller to take it (it answers within an interval)."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluice rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: $KUBECONFIG or "
                        "~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: its current one)")
    parser.add_argument("-n", "--namespace", help="the Rollouts' namespace (default: the "
                        "context's)")
    commands = parser.add_subparsers(dest="action", required=True)
    start = commands.add_parser("start", help="create a Rollout from a file")
    start.add_argument("-f", "--file", type=Path, required=True, help="rollout YAML or JSON")
    status = commands.add_parser("status", help="show rollouts and their last verdicts")
    status.add_argument("service", nargs="?")
    status.add_argument("--json", action="store_true", help="print the Rollouts as JSON")
    for command in (*(c.value for c in rollout.Command), rollout.RESTORE):
        steer = commands.add_parser(command, help=f"{command} a service's rollout")
        steer.add_argument("service")
    args = parser.parse_args(argv)
    if args.action == "start":
        try:
            document = _resource(args.file)
        except validation.Invalid as error:
            print(f"sluice rollout: invalid {args.file}:", file=sys.stderr)
            for problem in error.problems:
                print(f"  {problem['field']}: {problem['reason']}", file=sys.stderr)
            return 2
    else:
        document = None
    try:
        return asyncio.run(_run(args, document))
    except client.ConfigError as error:
        print(f"sluice rollout: {error}", file=sys.stderr)
        return 1


def _resource(path: Path) -> dict[str, Any]:
    """The file as a Rollout resource (a bare RolloutPolicy is wrapped, named
    <service>-<canary>), checked before anything is sent."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise validation.Invalid.field("(file)", str(error)) from None
    except yaml.YAMLError as error:
        raise validation.Invalid.field("(file)", f"not YAML: {error}") from None
    policy = rollout.parse_document(data)
    if isinstance(data, dict) and data.get("kind") == resources.ROLLOUT.kind:
        return data
    return {"apiVersion": resources.API_VERSION, "kind": resources.ROLLOUT.kind,
            "metadata": {"name": f"{policy.service}-{policy.canary_revision}"}, "spec": data}


async def _run(args: argparse.Namespace, document: dict[str, Any] | None) -> int:
    api = await client.connect(client.ClientSettings(kubeconfig=args.kubeconfig,
                                                     context=args.context))
    namespace = args.namespace or api.namespace
    try:
        if args.action == "start":
            assert document is not None
            shown = await _start(api, namespace, document)
        elif args.action == "status":
            return await _status(api, namespace, args)
        else:
            shown = await _command(api, namespace, args.service, args.action)
    except client.ApiError as error:
        print(f"sluice rollout: refused: {error.message}", file=sys.stderr)
        return 2 if error.status in (400, 409, 422) else 1
    except (client.KubeError, LookupError, TimeoutError) as error:
        print(f"sluice rollout: {error}", file=sys.stderr)
        return 1
    finally:
        await api.close()
    print(local_cli.render([shown], verdicts=3))
    return 0


async def _start(api: client.KubeApi, namespace: str, document: dict[str, Any]) -> dict[str, Any]:
    name = document["metadata"]["name"]
    try:
        created = await api.create(client.ROLLOUTS, namespace, document)
    except client.Conflict:  # there is one: its new spec starts it over (a new generation)
        created = await api.patch(client.ROLLOUTS, namespace, name, {"spec": document["spec"]})
    return shown(created)


async def _find(api: client.KubeApi, namespace: str, service: str) -> dict[str, Any]:
    listing = await api.list(client.ROLLOUTS, namespace=namespace)
    found = [r for r in listing.items if (r.get("spec") or {}).get("service") == service]
    if not found:
        raise LookupError(f"no Rollout of service {service!r} in namespace {namespace}")
    return max(found, key=lambda r: r["metadata"].get("creationTimestamp", ""))


async def _command(api: client.KubeApi, namespace: str, service: str,
                   command: str) -> dict[str, Any]:
    name = (await _find(api, namespace, service))["metadata"]["name"]
    await api.patch(client.ROLLOUTS, namespace, name, {"metadata": {"annotations": {
        resources.COMMAND_ANNOTATION: command}}})
    deadline = time.monotonic() + APPLIED_WAIT_S
    while True:  # the controller takes the annotation off once it applied the command
        current = await api.get(client.ROLLOUTS, namespace, name)
        annotations = current["metadata"].get("annotations") or {}
        if resources.COMMAND_ANNOTATION not in annotations:
            return shown(current)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the controller did not take the {command} from Rollout "
                               f"{name} within {APPLIED_WAIT_S:g} s: is it running?")
        await asyncio.sleep(0.2)


async def _status(api: client.KubeApi, namespace: str, args: argparse.Namespace) -> int:
    if args.service:
        items = [await _find(api, namespace, args.service)]
    else:
        items = (await api.list(client.ROLLOUTS, namespace=namespace)).items
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        print(local_cli.render([shown(r) for r in items]) if items else "no rollouts")
    return 0


def shown(obj: dict[str, Any]) -> dict[str, Any]:
    """A Rollout resource as the local rollout API shows one (what ``render`` reads)."""
    spec, recorded = obj.get("spec") or {}, obj.get("status") or {}
    weight = int(recorded.get("weight") or 0)
    verdicts = [{"at": _seconds(v["time"]), "elapsed_s": 0.0,
                 "step": int(recorded.get("step") or 0) + 1, "canary_weight": weight,
                 "outcome": v["outcome"], "reason": f"{v['metric']}: {v['reason']}"}
                for v in recorded.get("lastVerdicts") or []]
    created = _seconds(obj["metadata"].get("creationTimestamp"))
    return {
        "service": spec.get("service"), "stable_revision": spec.get("stableRevision"),
        "canary_revision": spec.get("canaryRevision"),
        "phase": recorded.get("phase") or "Pending",
        "step": int(recorded.get("step") or 0) + 1 if recorded.get("phase") else 0,
        "steps": len(spec.get("steps") or []), "canary_weight": weight,
        "stable_weight": rollout.FULL_WEIGHT - weight, "reason": recorded.get("message") or "",
        "elapsed_s": max(0.0, time.time() - created) if created else 0.0,
        "verdicts": verdicts,
    }


def _seconds(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    import datetime
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
