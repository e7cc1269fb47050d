"""A replica command that witnesses its own SIGTERM: it runs the real replica command as its
child and, when the stack signals the replica's process group, asks the router's admin API
(the one in the stack file) whether the replica is still in the route table it serves, and
prints the answer (``sigterm while listed: yes|no``) to the replica's log. Then it waits for
the child to drain and exits as the child did.

    python sigterm_witness.py STACK_FILE PORT -- COMMAND...

The stack signals the whole group, so the child gets the same SIGTERM at the same moment.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import yaml


def listed(admin: str, endpoint: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{admin}/routes", timeout=10) as response:
        table = json.load(response)
    return any(endpoint in revision["endpoints"] for service in table["services"].values()
               for revision in service["revisions"])


def main() -> int:
    stack_file, port, separator, *command = sys.argv[1:]
    assert separator == "--", __doc__
    with open(stack_file) as file:
        admin = f"http://{yaml.safe_load(file)['router']['admin']}"
    answer: list[bool] = []

    def on_sigterm(signum: int, frame: object) -> None:
        if not answer:
            answer.append(listed(admin, f"http://127.0.0.1:{port}"))
            print(f"sigterm while listed: {'yes' if answer[0] else 'no'}", flush=True)

    signal.signal(signal.SIGTERM, on_sigterm)
    return subprocess.Popen(command).wait()  # the handler runs while this waits


if __name__ == "__main__":
    sys.exit(main())
