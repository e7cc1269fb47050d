"""A leader elector as a process of its own, for test_leader.py: ``python -m tests.k8s.elector
--kubeconfig K --identity a --policy P``.

It campaigns for the controller's Lease (autoscaler/kube/leader.py, client-go's timings) with a
real ``client.Client``, and every ``--interval`` seconds tries to write ScalingPolicy P's
``status.reason`` ("<identity> #<n>") through the fenced client, leader or not: the fence
decides. Its user agent, hence its field manager, is ``sluice-elector-<identity>``, so the
object's and the Lease's managedFields say who wrote them.

It tells what happens as JSON lines on stdout: started, holder (the Lease's holder as it last
saw it, when that changes), elected (with how), lost, wrote (n, resourceVersion), refused,
error, and on SIGTERM writer-stopped and then released.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from autoscaler.kube import client, leader


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "wall": time.time(), **fields}), flush=True)


async def write_forever(fenced: leader.FencedApi, elector: leader.Elector, namespace: str,
                        policy: str, interval_s: float) -> None:
    holder, n = None, 0
    while True:
        if elector.holder != holder:
            holder = elector.holder
            emit("holder", holder=holder)
        n += 1
        try:
            written = await fenced.patch_status(client.SCALING_POLICIES, namespace, policy,
                                                {"reason": f"{elector.identity} #{n}"})
            emit("wrote", n=n, rv=written["metadata"]["resourceVersion"])
        except leader.NotLeader as refused:
            emit("refused", n=n, why=str(refused))
        except client.KubeError as error:
            emit("error", n=n, why=str(error))
        await asyncio.sleep(interval_s)


async def tell_terms(elector: leader.Elector) -> None:
    await elector.elected.wait()
    emit("elected", term=dataclasses.asdict(elector.term) if elector.term else None)
    await elector.lost.wait()
    emit("lost", holder=elector.holder)


async def run(args: argparse.Namespace) -> int:
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    api = await client.connect(client.ClientSettings(
        kubeconfig=args.kubeconfig, user_agent=f"sluice-elector-{args.identity}"))
    async with api:
        settings = leader.LeaderSettings(namespace=api.namespace, identity=args.identity)
        elector = leader.Elector(api, settings)
        fenced = leader.FencedApi(api, elector)
        emit("started", pid=os.getpid(), identity=args.identity,
             settings=dataclasses.asdict(settings))
        elector.start()
        telling = asyncio.create_task(tell_terms(elector))
        writer = asyncio.create_task(write_forever(fenced, elector, api.namespace, args.policy,
                                                   args.interval))
        await stopping.wait()
        writer.cancel()  # every writer stops before the Lease is released
        await asyncio.gather(writer, return_exceptions=True)
        emit("writer-stopped")
        released = await elector.stop()
        telling.cancel()
        emit("released", released=released)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--policy", required=True, help="the ScalingPolicy to write")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between writes")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
