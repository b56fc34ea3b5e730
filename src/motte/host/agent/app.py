"""The host agent's HTTP API on aiohttp: its routes, and the JSON form of every answer.

    GET    /v1/info                  version, the backends this host can run, the limits
    POST   /v1/keeps                 launch an empty keep: 201 and its record
    GET    /v1/keeps                 every record
    GET    /v1/keeps/{id}            one record
    DELETE /v1/keeps/{id}            stop the keep, forget it, answer with its final record
    GET    /v1/keeps/{id}/session    a websocket: one tenant connection to the keep

Errors are ``{"error": "one line", "code": "stable_code"}``; ``docs/deploy.md`` lists them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from motte import __version__
from motte.host.agent.auth import token_middleware
from motte.host.agent.keeps import AgentLimits, AgentTap, KeepRegistry, Log, ManagedKeep
from motte.host.agent.relay import TENANT_LOST, SessionRelay
from motte.host.backends.base import Backend, BackendReport
from motte.outside.agent_api import HEARTBEAT, MAX_MESSAGE, KeepRequest
from motte.outside.http_errors import ApiError, json_errors
from motte.shared.errors import MotteError

API_VERSION = 1
MAX_BODY = 16 << 10  # a launch request is a few fields
#: seconds a running keep whose last session closed gets to end by itself before it is stopped
EXIT_GRACE = 2.0
#: the strongest isolation first: the default backend is the first this host can run
STRENGTH = ("kvm", "nil")


def stderr_log(text: str) -> None:
    sys.stderr.write(f"motte host: {text}\n")
    sys.stderr.flush()


class HostAgent:
    """The service: the keeps it launched and the API over them. Run it with
    :func:`motte.host.agent.server.serve`, which calls :meth:`close` when it stops."""

    def __init__(self, backends: Mapping[str, Backend], *, limits: AgentLimits | None = None,
                 token: str | None = None, log: Log = stderr_log, tap: AgentTap | None = None):
        self.limits = limits or AgentLimits()
        self.token = token
        self.log = log
        self._tap = tap
        self.keeps = KeepRegistry(backends, self.limits, log=log, tap=tap)
        self.reports: dict[str, BackendReport] = {}

    async def start(self) -> None:
        """Check what this host can run (the cheap checks only: no probe boot), once, off the event
        loop; then launch the warm keeps of the backends it can."""
        reports = await asyncio.to_thread(lambda: [b.report(probe=False) for b in self.keeps.backends.values()])
        self.reports = {report.name: report for report in reports}
        self.keeps.start_pools(name for name, report in self.reports.items() if report.supported)

    @property
    def default_backend(self) -> str | None:
        names = [name for name, report in self.reports.items() if report.supported]
        ranked = sorted(names, key=lambda name: STRENGTH.index(name) if name in STRENGTH else len(STRENGTH))
        return ranked[0] if ranked else None

    def app(self) -> web.Application:
        middlewares: list[Middleware] = [json_errors(self.log)]
        if self.token is not None:
            middlewares.append(token_middleware(self.token))
        app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
        app.router.add_get("/v1/info", self.info)
        app.router.add_post("/v1/keeps", self.create)
        app.router.add_get("/v1/keeps", self.list)
        app.router.add_get("/v1/keeps/{id}", self.status)
        app.router.add_delete("/v1/keeps/{id}", self.delete)
        app.router.add_get("/v1/keeps/{id}/session", self.session)
        return app

    async def close(self) -> None:
        await self.keeps.close()

    # ---- the routes ----

    async def info(self, request: web.Request) -> web.Response:
        limits = self.limits
        return web.json_response({
            "service": "motte host agent",
            "version": __version__,
            "api": API_VERSION,
            "backends": {name: {"supported": r.supported, "summary": r.summary} for name, r in self.reports.items()},
            "default_backend": self.default_backend,
            "limits": {"max_keeps": limits.max_keeps, "max_memory": limits.max_memory,
                       "max_sessions": limits.max_sessions, "max_message": MAX_MESSAGE},
            "keeps": len(self.keeps.live()),
            "warm": {name: {"size": pool.size, "ready": pool.ready, "memory": pool.memory}
                     for name, pool in self.keeps.pools.items()},
        })

    async def create(self, request: web.Request) -> web.Response:
        keep_request = KeepRequest.from_json(await _json_body(request))
        backend = keep_request.backend or self.default_backend
        if backend is None or backend not in self.reports:
            offered = ", ".join(self.reports) or "none"
            raise ApiError(400, "unknown_backend", f'unknown backend "{backend}": this agent runs {offered}')
        report = self.reports[backend]
        if not report.supported:
            raise ApiError(400, "backend_unavailable", f"this host cannot run {backend} keeps: {report.summary}")
        memory = self.limits.default_memory if keep_request.memory is None else keep_request.memory
        if memory > self.limits.max_memory:
            raise ApiError(400, "bad_field", f"memory must be at most {self.limits.max_memory} bytes on this agent")
        keep = self.keeps.create(keep_request, backend, memory)
        return web.json_response(keep.record.to_json(), status=201)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"keeps": [record.to_json() for record in self.keeps.records()]})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.keeps.get(request.match_info["id"]).record.to_json())

    async def delete(self, request: web.Request) -> web.Response:
        record = await self.keeps.delete(request.match_info["id"])
        return web.json_response(record.to_json())

    async def session(self, request: web.Request) -> web.StreamResponse:
        keep = self.keeps.get(request.match_info["id"])
        await keep.launched.wait()  # a VM keep may still be booting
        record = keep.record
        if not record.live or keep.provisioned is None:
            why = f": {record.error}" if record.error else ""
            raise ApiError(409, "keep_ended", f"keep {record.id} has {record.state}{why}")
        if len(keep.sessions) >= self.limits.max_sessions:
            raise ApiError(429, "too_many_sessions",
                           f"keep {record.id} has {len(keep.sessions)} sessions open, the most this agent allows")
        try:
            session = keep.provisioned.open_session()
        except MotteError:
            raise ApiError(409, "keep_ended", f"keep {record.id} has ended") from None
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE + 1, heartbeat=HEARTBEAT)  # (aiohttp: < max_msg_size)
        tap = None if self._tap is None else functools.partial(self._tap, record.id)
        relay = SessionRelay(ws, session, tap=tap)
        self._sessions_changed(keep, relay, opened=True)  # (counted at once: the limit holds)
        try:
            try:
                await ws.prepare(request)
            except BaseException:
                session.close(TENANT_LOST)
                raise
            code = await relay.run()
        finally:
            self._sessions_changed(keep, relay, opened=False)
        self.log(f"keep {record.id}: session {session.stream} closed (websocket code {code})")
        if not keep.record.detach and not keep.sessions and keep.record.live:
            self.log(f"keep {record.id}: its last session closed and it is not detached")
            # A running keep whose tenant has its exit is about to report it to the host: a moment for that
            self.keeps.stop_soon(keep, grace=EXIT_GRACE if keep.record.state == "running" else 0.0)
        return ws

    def _sessions_changed(self, keep: ManagedKeep, relay: SessionRelay, *, opened: bool) -> None:
        if opened:
            keep.sessions.add(relay)
            self.log(f"keep {keep.record.id}: session {relay.session.stream} opened")
        else:
            keep.sessions.discard(relay)
        self.keeps.update(keep, sessions=len(keep.sessions))


async def _json_body(request: web.Request) -> Any:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body_too_large", f"the body is larger than {MAX_BODY} bytes") from None
    if not body:
        return {}
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None
