"""The balancer syncer's side of the cluster: the agents' API, watched and written to.

:class:`ClusterSide` is the part of :class:`.syncer.Balancer` that talks to the agents: the two
long polls of ``GET /v1/watch`` (the second on another agent than the first one's, so that a
cut-off agent does not hold up the view), the URL file re-read, the KV writes and stale reads
that :class:`.reports.DrainReports` uses, and the registration refresh. The API client blocks:
every call runs in a daemon thread of its own (:func:`in_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..apiclient import APIClient, APIError
from ..keys import REGISTRATION_REFRESH_S
from .inputs import EXIT_USAGE, APIURLFile, BalancerError, Options
from .metrics import SyncerMetrics
from .reports import DrainReports

log = logging.getLogger("hafleet.balancer")

WATCH_WAIT_S = 10
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a daemon thread of its own, awaited: the API client blocks.

    Not the loop's default executor: a long poll still waiting when the syncer stops would
    hold up the process's exit (``asyncio.run`` joins the executor's threads) for up to
    ``WATCH_WAIT_S``; a daemon thread is simply left behind.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():  # cancelled meanwhile
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def run() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            ok, value = False, exc
        else:
            ok, value = True, result
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=run, name=f"balancer-api-{fn.__name__}", daemon=True).start()
    return await fut


class ClusterSide:
    """The agents' side of :class:`.syncer.Balancer` (which sets these attributes up)."""

    opts: Options
    api: APIClient
    api2: APIClient
    url_file: APIURLFile | None
    file_urls: list[str]
    view: dict[str, Any] | None
    view_index: int
    wake: asyncio.Event
    stop: asyncio.Event
    reports: DrainReports
    metrics: SyncerMetrics

    def _given(self) -> list[str]:
        return self.opts.api_urls + [u for u in self.file_urls if u not in self.opts.api_urls]

    def reread_url_file(self) -> None:
        """Take the URL file's new list when it changed; keep the old one (and say why) when
        the new one cannot be used. The URL in use stays in use if it is still listed."""
        if self.url_file is None or not self.url_file.changed():
            return
        try:
            urls = self.url_file.read()
        except BalancerError as exc:
            log.warning("%s; still using %s", exc, ", ".join(self.api.given))
            return
        if urls == self.file_urls:
            return
        self.file_urls = urls
        for api in (self.api, self.api2):
            current = api.base_url
            api.given = self._given()
            listed = api.urls
            api.current = listed.index(current) if current in listed else 0
        log.info("agent APIs from %s: %s", self.opts.api_file, ", ".join(urls))

    async def watch(self, second: bool = False) -> None:
        """Long-poll ``/v1/watch`` and take every newer view. ``second``: the second watch,
        on another agent than the first one's (idle while only one agent is known)."""
        failures = 0
        api = self.api2 if second else self.api
        while not self.stop.is_set():
            if second:
                if len(self.api.urls) < 2:
                    await self._sleep(1.0)
                    continue
                if api.urls != self.api.urls:  # the first watch's list (given and learned)
                    api.given, api.learned = list(self.api.given), list(self.api.learned)
                if api.base_url == self.api.base_url:
                    api.current = (self.api.current + 1) % len(api.urls)
            else:
                self.reread_url_file()
            try:
                body = await in_thread(
                    api.watch,
                    self.view_index,
                    WATCH_WAIT_S,
                    timeout=WATCH_WAIT_S + 10,
                    failover=False,  # this loop fails over itself, also on a useless answer
                )
                why = ""
            except APIError as exc:
                if exc.status == 401:
                    raise self._token_refused() from None
                body, why = None, f"{exc.status} {exc.message}" if exc.status else exc.message
            if not isinstance(body, dict) or "members" not in body:
                failures += 1
                why = why or f"unexpected answer {body!r}"
                api.fail_over(f"watch failed ({why[:200]})")
                if failures % max(1, len(api.urls)) == 0:
                    # A round of every URL without a view (a failover alone logs only when
                    # there is another URL: one agent whose certificate does not verify
                    # would go unsaid).
                    delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(failures, 5))
                    log.warning("no agent gave a view (%s); retrying in %.1fs", why[:300], delay)
                    await self._sleep(delay)
                continue
            failures = 0
            self.metrics.heard()  # (the syncer's /metrics: view age)
            index = int(body.get("index") or 0)
            if body.get("leader_id") is None:
                # Cut off from its leader (or in an election), its view may be stale: use
                # it only if it is news, and ask another member next.
                api.fail_over("it knows no leader")
                if index <= self.view_index:
                    await self._sleep(0.2)
                    continue
            if index < self.view_index:
                continue  # an agent behind the one we used: wait for it to catch up
            if not body["members"]:
                # A fresh agent that belongs to no cluster yet: its empty view must not
                # take every server out.
                api.fail_over("it knows no member (not in a cluster yet?)")
                await self._sleep(0.5)
                continue
            api.learn(body["members"])
            # A draining member is about to leave: a drain report written through it could
            # commit and remove it before its answer comes back (the syncer would not know
            # its report took). Talk to a member that stays.
            api.avoid(
                [m for m in body["members"] if isinstance(m, dict) and m.get("draining")],
                "it is draining (leaving the group)",
            )
            if self.view is None or index > self.view_index or body.get("changed"):
                self.view = body
                self.view_index = index
                self.wake.set()

    def _token_refused(self, status: int = 401) -> BalancerError:
        if status == 403:
            return BalancerError(
                f"the agent at {self.api.base_url} answered 403: the token of --token-file may "
                "only read, and the balancer writes (its registration, drain reports); give it "
                "the admin token",
                EXIT_USAGE,
            )
        return BalancerError(
            f"the agent at {self.api.base_url} refused the API token (401): check --token-file",
            EXIT_USAGE,
        )

    async def write(self, key: str, value: Any = None, delete: bool = False) -> bool:
        """A KV write through any member (followers forward to the leader; the client fails
        over while nothing was sent or there is no leader). False when it did not take (the
        caller retries on a later round: the writes are whole values, safe to repeat)."""
        what = f"{'DELETE' if delete else 'PUT'} {key}"
        try:
            if delete:
                await in_thread(self.api.kv_delete, key)
            else:
                await in_thread(self.api.kv_put, key, value)
            return True
        except APIError as exc:
            if exc.status in (401, 403):
                raise self._token_refused(exc.status) from None
            log.warning("%s via %s: %s", what, self.api.base_url, exc)
            if exc.status not in (None, 503, 504):
                self.api.fail_over(f"{what} answered {exc.status}")
            return False

    async def get_stale(self, key: str) -> Any:
        """A key's item from the local copy of one member; None when absent or unknown."""
        try:
            item = await in_thread(self.api.kv_get, key, stale=True)
        except APIError:
            return None
        return item if isinstance(item, dict) else None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def registration_loop(self) -> None:
        """Keep our registration live (balancer/registered/<id>, docs/balancer.md)."""
        while not self.stop.is_set():
            await self._sleep(REGISTRATION_REFRESH_S)
            await self.reports.refresh()
