"""The ingest routes without the framework's per-request machinery.

FastAPI routes every request through its exception and exit-stack middleware, the router's
pattern matching, a request wrapper and its dependency solver, even for an endpoint that takes
the bare `Request`: on `PUT /SendEvent` that was about half of the API's CPU per request.
`IngestFastPath` sits inside the metrics middleware and hands the two ingest routes straight to
their endpoints (the same functions FastAPI documents and would call), with the app's own
exception handlers. Any other method or path, including a 405 on an ingest path, goes through
FastAPI as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


class IngestFastPath:
    """ASGI middleware answering `routes` (paths of the app's routes) directly."""

    def __init__(
        self,
        app: ASGIApp,
        routes: list[APIRoute],
        handlers: Mapping[type[Exception], ExceptionHandler],
    ) -> None:
        self.app = app
        self.routes = {(method, route.path): route for route in routes for method in route.methods}
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # as the router sets it: the metrics' label, the handlers' path
        request = Request(scope, receive, send)
        try:
            response: Response = await route.endpoint(request)
        except Exception as exc:
            response = await self._handler(exc)(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> ExceptionHandler:
        """The handler registered for the nearest class of `exc`, as Starlette picks it."""
        for cls in type(exc).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        raise exc  # not an Exception subclass handler: cannot happen, Exception is registered
