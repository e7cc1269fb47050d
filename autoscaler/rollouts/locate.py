"""Where the CLI's clients (``sluice status``, ``sluice rollout``) find the controller.

In order: the address given (``--url`` / ``--controller``: ``host:port`` or a base URL such as
``http://127.0.0.1:8082``, with or without a trailing ``/`` or ``/status``), else the stack
file's ``controller.listen`` (``-f``), else ``$SLUICE_CONTROLLER``, else 127.0.0.1:8082. Only
that field of the stack file is read, so the clients stay light; ``sluice up`` validates the
whole file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import yaml

DEFAULT_CONTROLLER = "127.0.0.1:8082"
"""The controller's address when a stack file does not set controller.listen."""
ENV = "SLUICE_CONTROLLER"
MAX_STACK_BYTES = 1 << 20


class NotFound(Exception):
    """The address given or the stack file does not say where a controller is; the message
    says why."""


def controller(address: str | None = None, stack_file: Path | None = None,
               env: Mapping[str, str] = os.environ) -> str:
    """The controller's base URL, ``http://host:port``."""
    if address:
        return base_url(address)
    if stack_file is not None:
        return base_url(from_stack(stack_file))
    return base_url(env.get(ENV) or DEFAULT_CONTROLLER)


def base_url(address: str) -> str:
    """``http://host:port`` from ``host:port`` or a URL of the controller."""
    parts = urlsplit(address if "//" in address else f"http://{address}")
    if parts.scheme != "http" or not parts.hostname or parts.path.rstrip("/") not in ("",
                                                                                     "/status"):
        raise NotFound(f"{address!r} is not a controller address (host:port or "
                       "http://host:port)")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise NotFound(f"{address!r} has no valid port")
    return f"http://{parts.netloc}"


def listen_of(url: str) -> str:
    """The ``host:port`` of a base URL: what the controller's token file is keyed by."""
    return urlsplit(url).netloc


def from_stack(path: Path) -> str:
    """``controller.listen`` from a stack file, or the default it implies."""
    try:
        with path.open("rb") as file:
            data = yaml.safe_load(file.read(MAX_STACK_BYTES))
    except OSError as error:
        raise NotFound(f"cannot read {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise NotFound(f"{path} is not YAML: {error}") from None
    controller = data.get("controller") if isinstance(data, dict) else None
    listen = controller.get("listen") if isinstance(controller, dict) else None
    if listen is None:
        return DEFAULT_CONTROLLER
    if not isinstance(listen, str) or not re.fullmatch(r"[^:]+:\d+", listen):
        raise NotFound(f"{path}: controller.listen must be host:port, not {listen!r}")
    return listen
