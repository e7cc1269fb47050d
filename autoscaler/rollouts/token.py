"""The controller's write token: made by ``sluice up``, kept in 0600 files, read by the CLI.

Reads of the controller API are open on loopback; writes (starting a rollout, promote, abort,
pause, resume) need ``Authorization: Bearer <token>`` as well, so another local user or a
browser page cannot move traffic. ``sluice up`` writes a fresh token to its run directory and to
a per-user place keyed by the controller's port, where ``sluice rollout`` finds it:
``$XDG_RUNTIME_DIR/sluice/controller-<port>.token``, else
``~/.cache/sluice/run/controller-<port>.token``. The token is never logged.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

ENV = "SLUICE_CONTROLLER_TOKEN"
FILE_NAME = "controller.token"
MAX_TOKEN_BYTES = 4096


class TokenNotFound(Exception):
    """No token where the CLI looked; the message says where that was."""


def new() -> str:
    return secrets.token_urlsafe(32)


def runtime_dir(env: Mapping[str, str] = os.environ) -> Path:
    """This user's directory for what running stacks leave for the CLI and for each other (tokens,
    port locks): ``$XDG_RUNTIME_DIR/sluice``, else ``~/.cache/sluice/run``."""
    runtime = env.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "sluice" if runtime else Path.home() / ".cache" / "sluice" / "run"


def well_known_path(listen: str, env: Mapping[str, str] = os.environ) -> Path:
    """Where the token of the controller listening on `listen` (host:port) is kept."""
    return runtime_dir(env) / f"controller-{listen.rpartition(':')[2]}.token"


def write(token: str, paths: Iterable[Path]) -> None:
    """Write the token to each path, readable by this user only (directories 0700). Each file
    is written whole under a temporary name and renamed, so no reader sees half a token and an
    existing file's looser mode is never kept."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(token + "\n")
        os.chmod(partial, 0o600)  # O_CREAT's mode does not apply to a file left behind
        partial.replace(path)


def remove(token: str, paths: Iterable[Path]) -> None:
    """Delete the files that still hold this token (a newer stack's token is left alone)."""
    for path in paths:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == token:
                path.unlink()


def find(listen: str, token_file: Path | None = None,
         env: Mapping[str, str] = os.environ) -> str:
    """The token for the controller at `listen`: from `token_file`, else $SLUICE_CONTROLLER_TOKEN,
    else the well-known file. Raises TokenNotFound."""
    if token_file is None and env.get(ENV):
        return env[ENV].strip()
    path = token_file or well_known_path(listen, env)
    try:
        with path.open("rb") as file:
            token = file.read(MAX_TOKEN_BYTES).decode(errors="replace").strip()
    except OSError as error:
        raise TokenNotFound(
            f"no controller token at {path} ({error.strerror or error}); is `sluice up` "
            f"running with its controller on {listen}? Or pass --token-file, or set {ENV}"
        ) from None
    if not token:
        raise TokenNotFound(f"{path} is empty")
    return token
