"""An informer: a local cache of one kind of object, kept current by list + watch.

``Informer.run()`` lists the objects (one namespace or all, filtered by label and field
selectors), calls its handlers with ADDED for each, sets ``synced``, then watches from the
list's resourceVersion with bookmarks, applying each change to the cache and calling the
handlers. It runs until cancelled:

- a watch that ends (the apiserver's timeoutSeconds) is resumed from the last resourceVersion
  seen, a bookmark's included, so nothing is listed twice;
- a watch answered 410 Gone (that version is older than the apiserver's watch cache or etcd's
  compaction) is followed by a fresh list, diffed against the cache: what vanished meanwhile
  is reported DELETED (with its last known state), what appeared ADDED, what changed MODIFIED;
- any other failure (refused, reset, timed out, 5xx, 403), a watch that ends or is Gone
  before delivering anything, is retried after a bounded exponential back-off with jitter,
  reset by the next event received; the cache and ``synced`` stay as they were meanwhile, so
  a controller keeps its last view while the apiserver is away (``last_error`` says so).

Handlers are plain callables run on the informer's task, in order; they must not block (put
work on a queue). One that raises is logged and the others still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random as random_module
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.kube import client

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name); namespace "" for cluster-scoped objects."""


class ChangeType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Change:
    type: ChangeType
    object: Any
    """The new state; for DELETED the last state (the watch's, or the cache's after a re-list)."""
    old: Any = None
    """The previous state for MODIFIED; None otherwise."""


Handler = Callable[[Change], None]


@dataclass(frozen=True)
class InformerSettings:
    watch_timeout_s: float = 300.0
    """Seconds each watch asks the apiserver to run (timeoutSeconds), stretched by a random
    factor in [1, 2) so that many informers do not reconnect together. Default 300: client-go's
    reflector's minimum; a resumed watch costs one request and lists nothing."""
    backoff_initial_s: float = 0.5
    """Seconds before the first retry after a failure. Default 0.5: a blip costs little."""
    backoff_max_s: float = 30.0
    """Longest wait between retries, jitter included. Default 30: client-go's cap; a returning
    apiserver is noticed within it and an absent one is asked twice a minute."""
    backoff_factor: float = 2.0
    """Each consecutive failure multiplies the wait by this."""
    backoff_jitter: float = 0.5
    """The wait is stretched by up to this fraction at random, so that informers (and
    controller replicas) do not retry in lockstep."""


class Backoff:
    """Bounded exponential backoff with injected randomness. ``next_delay()`` after each
    failure, ``reset()`` after a success."""

    def __init__(self, settings: InformerSettings, random: Callable[[], float]) -> None:
        self._settings = settings
        self._random = random
        self.failures = 0

    def next_delay(self) -> float:
        settings = self._settings
        base = settings.backoff_initial_s * settings.backoff_factor ** min(self.failures, 64)
        self.failures += 1
        stretched = base * (1 + settings.backoff_jitter * self._random())
        return min(settings.backoff_max_s, stretched)

    def reset(self) -> None:
        self.failures = 0


class Informer:
    """A cache of one kind's objects, kept current from the apiserver. Start ``run()`` as a
    task; ``synced`` is set once the first list is in."""

    def __init__(
        self,
        api: client.KubeApi,
        kind: client.Kind,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        settings: InformerSettings = InformerSettings(),
        random: Callable[[], float] = random_module.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self._api = api
        self._settings = settings
        self._random = random
        self._sleep = sleep
        self._backoff = Backoff(settings, random)
        self._handlers: list[Handler] = []
        self._cache: dict[Key, Any] = {}
        self.synced = asyncio.Event()
        """Set once the first list is in the cache; stays set through outages."""
        self.resource_version: str | None = None
        """The last resourceVersion seen (list, event or bookmark); None before the first list."""
        self.relists = 0
        """Lists made after the first, each for a 410 Gone."""
        self.last_error: client.KubeError | None = None
        """Why the last list or watch failed; None once one succeeds again. While set, the
        cache may be behind the apiserver: a controller should not act on absences."""

    # reading the cache

    def get(self, namespace: str | None, name: str) -> Any:
        """The cached object, or None."""
        return self._cache.get((namespace or "", name))

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._cache.values()))

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def objects(self) -> Mapping[Key, Any]:
        """A read-only view of the cache by (namespace, name)."""
        return types.MappingProxyType(self._cache)

    def add_handler(self, handler: Handler) -> None:
        """Calls ``handler`` for every change from now on; for objects already cached too, as
        ADDED, so a late subscriber starts from the same state as an early one."""
        self._handlers.append(handler)
        for obj in list(self._cache.values()):
            self._call(handler, Change(ChangeType.ADDED, obj))

    # running

    async def run(self) -> None:
        """Lists, then watches, until cancelled. Never returns otherwise."""
        needs_list = True
        while True:
            if needs_list:
                if not await self._list():
                    await self._sleep(self._backoff.next_delay())
                    continue
                needs_list = False
            try:
                needs_list = await self._watch()
            except client.KubeError as error:
                log.warning("%s: watch failed, retrying: %s", self._describe(), error)
                self.last_error = error
                await self._sleep(self._backoff.next_delay())

    async def _list(self) -> bool:
        try:
            listing = await self._api.list(
                self.kind, namespace=self.namespace, label_selector=self.label_selector,
                field_selector=self.field_selector,
            )
        except client.KubeError as error:
            log.warning("%s: list failed, retrying: %s", self._describe(), error)
            self.last_error = error
            return False
        self.last_error = None
        if self.synced.is_set():
            self.relists += 1
        self._replace(listing.items)
        self.resource_version = listing.resource_version
        self.synced.set()
        return True

    async def _watch(self) -> bool:
        """One watch until it ends; True when the informer must list again (410 Gone)."""
        assert self.resource_version is not None
        timeout_s = int(self._settings.watch_timeout_s * (1 + self._random()))
        events = self._api.watch(
            self.kind, resource_version=self.resource_version, namespace=self.namespace,
            label_selector=self.label_selector, field_selector=self.field_selector,
            timeout_s=timeout_s,
        )
        received = False
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    received = True
                    self.last_error = None
                    self._backoff.reset()
                    self._apply(event)
        except client.Gone as error:
            log.info("%s: resourceVersion %s expired, listing again: %s", self._describe(),
                     self.resource_version, error)
            if not received:
                # Gone at once: back off, so that an apiserver answering 410 to every watch
                # (a watch cache still filling) is not listed in a tight loop.
                await self._sleep(self._backoff.next_delay())
            return True
        if not received:
            # Ended at once with nothing, not even a bookmark: do not spin on it.
            await self._sleep(self._backoff.next_delay())
        return False

    # changing the cache

    def _apply(self, event: client.WatchEvent) -> None:
        if event.resource_version:
            self.resource_version = event.resource_version
        if event.type == "BOOKMARK":
            return
        key = _key(event.object)
        old = self._cache.get(key)
        if event.type == "DELETED":
            if self._cache.pop(key, None) is not None:
                self._emit(Change(ChangeType.DELETED, event.object))
            return
        self._cache[key] = event.object
        if old is None:
            self._emit(Change(ChangeType.ADDED, event.object))
        elif _version(old) != _version(event.object):
            self._emit(Change(ChangeType.MODIFIED, event.object, old))

    def _replace(self, items: Iterable[Any]) -> None:
        """The cache becomes ``items``; the differences are emitted as changes."""
        fresh = {_key(item): item for item in items}
        previous, self._cache = self._cache, fresh
        for key, old in previous.items():
            if key not in fresh:
                self._emit(Change(ChangeType.DELETED, old))
        for key, new in fresh.items():
            old = previous.get(key)
            if old is None:
                self._emit(Change(ChangeType.ADDED, new))
            elif _version(old) != _version(new):
                self._emit(Change(ChangeType.MODIFIED, new, old))

    def _emit(self, change: Change) -> None:
        for handler in self._handlers:
            self._call(handler, change)

    def _call(self, handler: Handler, change: Change) -> None:
        try:
            handler(change)
        except Exception:
            log.exception("%s: handler %r failed on %s", self._describe(), handler, change.type)

    def _describe(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace else "all namespaces"
        selectors = ", ".join(filter(None, (self.label_selector, self.field_selector)))
        return f"{self.kind.plural} in {where}" + (f" ({selectors})" if selectors else "")


def metadata(obj: Any) -> tuple[str, str, str]:
    """(namespace, name, resourceVersion) of a model or a dict; namespace "" if cluster-scoped."""
    if isinstance(obj, Mapping):
        meta = obj.get("metadata") or {}
        return meta.get("namespace") or "", meta["name"], meta.get("resourceVersion") or ""
    meta = obj.metadata
    return meta.namespace or "", meta.name, meta.resource_version or ""


def _key(obj: Any) -> Key:
    namespace, name, _ = metadata(obj)
    return (namespace, name)


def _version(obj: Any) -> str:
    return metadata(obj)[2]

