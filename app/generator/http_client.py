"""A lean HTTP/1.1 client for the generator: keep-alive connections, one request at a time each.

The generator sends one request per event (`PUT /SendEvent` takes one object), thousands a
second, so the client's CPU per request is the generator's budget. aiohttp spent about 200 µs of
CPU per request here (its request and response objects, header multidicts, cookie jar, tracing
hooks); this client writes the request's bytes, built from a prepared head, straight to an
asyncio transport and parses the answer with httptools (llhttp, in C: the API server's own
parser), for a few tens of µs.

What it keeps of a full client: connections are reused while the server keeps them alive (and
dropped when it closes them or says `Connection: close`); every request has a time-out (the
connection is then closed: its answer may still come); a refused or broken connection, a
time-out or an answer that is not HTTP raise `RequestFailed`, which the sender retries. It
speaks plain `http://` only, as the lab's API does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools


class RequestFailed(Exception):
    """No answer: the connection was refused or broken, the answer timed out or was not HTTP."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    retry_after: str  # the `Retry-After` header, "" when absent


class _Connection(asyncio.Protocol):
    """One keep-alive connection: feeds what arrives to the parser, completes `answer`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[Answer] | None = None
        self.body = bytearray()
        self.retry_after = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP transport (uvloop's too)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(RequestFailed(f"the answer is not HTTP/1.1 ({error})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RequestFailed(f"connection closed before the answer ({exc or 'by the API'})"))

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self.body.clear()
        self.retry_after = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(
                Answer(
                    self.parser.get_status_code(),
                    bytes(self.body),
                    self.retry_after.decode("latin-1"),
                )
            )
        if not self.parser.should_keep_alive():
            self.close()

    def time_out(self) -> None:
        self._fail(TimeoutError("no answer in time"))
        self.close()

    def _fail(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """Requests to one `http://host:port[/prefix]` over keep-alive connections.

    A connection carries one request at a time, so there are as many connections as requests
    in flight (the caller bounds those), reused as they come free.
    """

    def __init__(self, base_url: str, *, timeout: float) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"{base_url}: the generator sends to an http://host:port URL")
        self.host = url.hostname
        self.port = url.port or 80
        self.prefix = url.path.rstrip("/")
        self.host_header = url.netloc
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._heads: dict[tuple[str, str], bytes] = {}

    def _head(self, method: str, path: str) -> bytes:
        """The request's head up to its Content-Length value, built once per route."""
        key = (method, path)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = (
                f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                "Content-Type: application/json\r\nContent-Length: "
            ).encode()
        return head

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:  # the server may have closed it while idle
                return connection
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
        except (OSError, TimeoutError) as error:
            raise RequestFailed(f"{type(error).__name__}: {error}") from error
        return connection

    async def request(self, method: str, path: str, body: bytes) -> Answer:
        """Send one request with a JSON body; its answer, read whole."""
        connection = await self._connection()
        assert connection.transport is not None
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        connection.answer = answer
        connection.transport.write(
            b"".join((self._head(method, path), b"%d\r\n\r\n" % len(body), body))
        )
        timer = loop.call_later(self.timeout, connection.time_out)
        try:
            result = await answer
        except TimeoutError as error:
            raise RequestFailed(f"no answer within {self.timeout:g} s") from error
        except BaseException:  # broken, or cancelled: its answer would come to the next request
            connection.close()
            raise
        finally:
            timer.cancel()
            connection.answer = None
        if not connection.closed:
            self._idle.append(connection)
        return result

    def close(self) -> None:
        """Close the idle connections (those in use are closed by their requests)."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()
