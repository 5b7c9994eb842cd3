"""The upstream client: complete, stream and forward chat completions over one shared httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson

from openfusion.errors import (
    ConfigError,
    ModelNotFound,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from openfusion.masking import LineMask, SecretMasker
from openfusion.protocol import Usage, parse_usage
from openfusion.settings import HttpSettings, RetrySettings
from openfusion.upstream.encoded import request_bytes
from openfusion.upstream.failures import diagnose
from openfusion.upstream.limits import ProgressClock, Stalled, stalled
from openfusion.upstream.providers import Provider, ProviderRegistry, Route
from openfusion.upstream.reasoning import send_reasoning_as
from openfusion.upstream.retry import client_is_retrying, is_retryable, parse_retry_after, retrying
from openfusion.upstream.shape import completion_problem
from openfusion.upstream.sse_decode import SSEDecoder
from openfusion.upstream.stage import stage_ends
from openfusion.upstream.trace import CallTrace, begin_call, end_call
from openfusion.upstream.transport import (
    READ_ERRORS,
    AiohttpTransport,
    Reply,
    body_reads,
    content_type,
    read_body,
    read_error,
    wire_headers,
)

if TYPE_CHECKING:
    import aiohttp
    import yarl
    from multidict import CIMultiDict
    from tenacity import RetryCallState

log = logging.getLogger("openfusion.upstream")

_E = TypeVar("_E", bound=BaseException)

# The endpoints under a provider's base URL: chat completions, and the Responses API and Anthropic's
# Messages API where it has them.
CHAT_PATH = "/chat/completions"
RESPONSES_PATH = "/responses"
MESSAGES_PATH = "/messages"
MESSAGES_COUNT_PATH = "/messages/count_tokens"
# Anthropic's Messages API takes the provider key in its own header, not as a bearer token.
_KEY_HEADERS = {MESSAGES_PATH: "x-api-key", MESSAGES_COUNT_PATH: "x-api-key"}

# Response headers worth relaying to a pass-through client.
_RELAYED_HEADERS = ("content-type", "retry-after", "x-request-id", "openai-processing-ms", "request-id")


# A sent request's response, and its whole body when it was read at once (an error, a non-streamed answer).
_Sent = tuple[Reply, bytes]


@dataclass
class Completion:
    """One finished upstream completion."""

    model: str
    message: dict[str, Any]
    finish_reason: str | None
    usage: Usage
    usage_reported: bool = True

    @property
    def content(self) -> str:
        content = self.message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content parts: keep the text ones
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return ""


@dataclass
class Forwarded:
    """A pass-through response: status, relayable headers and the body as it arrives."""

    status_code: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]
    _response: Reply | None = field(repr=False)
    trace: CallTrace | None = None

    async def aclose(self, *, complete: bool = True) -> None:
        """Close the upstream response; `complete=False`: the body was abandoned before its end."""
        if self._response is not None:
            await self._response.aclose()
        self.answered(complete=complete)

    def answered(self, *, complete: bool = True) -> None:
        """End the call's trace (once): the answer is whole (a stream's [DONE]) or was abandoned."""
        if self.trace is not None and self.trace.ended is None:
            status = ("ok" if self.status_code < 400 else "error") if complete else "cancelled"
            end_call(self.trace, status=status, usage=self.trace.usage, upstream_status=self.status_code)


def build_http_client(settings: HttpSettings) -> httpx.AsyncClient:
    """The process-wide upstream HTTP client (aiohttp transport unless configured otherwise)."""
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.connect_timeout_s,
        pool=settings.connect_timeout_s,
    )
    limits = httpx.Limits(max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections)
    if settings.transport == "aiohttp":
        transport = AiohttpTransport(limits=limits)
        return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False, transport=transport)
    return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)


class UpstreamClient:
    """Speaks the OpenAI chat-completions protocol to whichever provider serves a model slug.

    Everything an upstream sends is masked as it arrives (`masker`; by default the registry's
    provider keys): error messages, relayed bodies and streams, answers. A provider that echoes a
    key then cannot put it in a response, the `fusion` object, the activity store or a log.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        registry: ProviderRegistry,
        retry: RetrySettings,
        *,
        masker: SecretMasker | None = None,
        call_timeout_s: float = 300.0,
    ) -> None:
        self.http = http
        self.registry = registry
        self.retry = retry
        self.call_timeout_s = call_timeout_s  # one attempt; for a stream, also the longest run of filler alone
        self.masker = masker if masker is not None else SecretMasker(registry.secrets())
        self._endpoints: dict[str, _Endpoint] = {}

    def prepare(self, models: Iterable[str]) -> None:
        """At start-up, inside the event loop that will serve: route these models and make their providers' chat
        endpoints (URL parsed, headers built, the aiohttp session opened), so the first calls do only their own work.

        A model no provider serves is passed over: a request for it fails as it would have.
        """
        for model in models:
            try:
                route = self.registry.resolve(model)
            except ModelNotFound:
                continue
            endpoint = self._endpoint(route.provider)
            if endpoint.aiohttp is not None:
                endpoint.aiohttp.open()

    async def complete(self, model: str, body: Mapping[str, Any]) -> Completion:
        """A non-streamed completion, retried by the one policy."""
        route = self.registry.resolve(model)
        payload = _payload(route, body, stream=False)
        call = begin_call(model, route.provider.name)
        try:
            _, content = await self._send_retrying(route, payload, stream=False, call=call)
            data = _json(route, self.masker.bytes(content))
            choice = _first_choice(route, data, self.masker)
            if problem := completion_problem(data, key="message"):
                raise _protocol_error(route, problem)
            message = choice.get("message")
            if not isinstance(message, dict):
                raise _protocol_error(route, "the response has no message")
        except BaseException as exc:
            _failed(call, exc)
            raise
        completion = Completion(
            model=data.get("model") or model,
            message=message,
            finish_reason=choice.get("finish_reason"),
            usage=parse_usage(data.get("usage")),
            usage_reported=isinstance(data.get("usage"), dict),
        )
        call.response_model, call.finish_reason = completion.model, completion.finish_reason
        end_call(call, status="ok", usage=completion.usage if completion.usage_reported else None)
        return completion

    @contextlib.asynccontextmanager
    async def stream(self, model: str, body: Mapping[str, Any]) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """A streamed completion: yields an iterator of parsed chunks; the upstream response always closes."""
        route = self.registry.resolve(model)
        payload = _payload(route, body, stream=True)
        call = begin_call(model, route.provider.name)
        try:
            response, _ = await self._send_retrying(route, payload, stream=True, call=call)
        except BaseException as exc:
            _failed(call, exc)
            raise
        del body, payload  # sent: a stream open for minutes should not keep its request's data alive here
        try:
            yield _chunks(route, response, call, self.masker, stall_s=self.call_timeout_s)
        except BaseException as exc:
            _failed(call, exc)
            raise
        finally:
            await response.aclose()
            if call.ended is None:  # the consumer left before the end
                end_call(call, status="cancelled", usage=call.usage, error="closed before the end of the stream")

    async def forward(
        self,
        model: str,
        body: Mapping[str, Any],
        *,
        stream: bool,
        path: str = CHAT_PATH,
        headers: Mapping[str, str] | None = None,
    ) -> Forwarded:
        """Pass a request through: retried like any call, the last answer (error or not) relayed as is.

        An error status whose body is not a JSON object (a proxy's HTML page, an empty body) is raised as
        UpstreamStatusError instead: relayed, no client could read it.

        `path` is the provider's endpoint under its base URL: chat completions, or `/responses` or
        `/messages` for a provider that speaks the Responses or Messages API itself; `headers` are the
        client's own to send along.
        """
        route = self.registry.resolve(model)
        payload = {**body, "model": route.upstream_model}
        # A server that knows only max_tokens ignores max_completion_tokens: the client's bound would not hold (nor
        # the spend cap's estimate, which counts on it).
        only_max_tokens = path == CHAT_PATH and route.provider.config.max_tokens_field == "max_tokens"
        if only_max_tokens and "max_completion_tokens" in payload and "max_tokens" not in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        call = begin_call(model, route.provider.name)
        try:
            # A non-streamed answer is read whole inside the retried attempt: a body cut short is retried too.
            response, content = await self._send_retrying(
                route, payload, stream=stream, call=call, path=path, headers=headers
            )
        except UpstreamStatusError as exc:
            if exc.body is None or exc.upstream_status is None or _json_object(exc.body) is None:
                # No client could read it as the provider's error (a proxy's HTML page): raised, to be answered in
                # the client's own error shape
                _failed(call, exc)
                raise
            end_call(call, status="error", error=exc.message, upstream_status=exc.upstream_status)
            headers = self._relayable(exc.headers or {})
            return Forwarded(exc.upstream_status, headers, _once(exc.body), None, call)  # the body is masked
        except BaseException as exc:
            _failed(call, exc)
            raise
        headers = self._relayable(response.headers)
        if not stream:
            if not content.strip():  # a 200 with nothing in it is no answer to relay
                raise _failed(call, _protocol_error(route, "the response is empty"))
            if path == CHAT_PATH:  # a completion no client could parse is no answer either: the next fallback's turn
                try:
                    call.usage = _completion_usage(route, content)
                except UpstreamProtocolError:
                    said = _not_json(content, headers.get("content-type"), self.masker)
                    raise _failed(call, _unreadable(route, response.status_code, said)) from None
            return Forwarded(response.status_code, headers, _once(self.masker.bytes(content)), None, call)
        body_iter = _relayed(route, response, self.masker, stall_s=self.call_timeout_s)
        kind = headers.get("content-type", "")
        if "event-stream" not in kind and "event-stream" not in kind.lower():
            body_iter = await self._unlabelled_stream(route, call, response, body_iter, headers)
        return Forwarded(response.status_code, headers, body_iter, response, call)

    async def _unlabelled_stream(
        self, route: Route, call: CallTrace, response: Reply, body: AsyncIterator[bytes], headers: dict[str, str]
    ) -> AsyncIterator[bytes]:
        """A stream not labelled `text/event-stream`, judged by its first bytes before any reaches the client.

        Events (a server that labels its stream `text/plain`, or not at all) are relayed, as an event stream; a JSON
        body (a server that ignored `stream: true`) as it is. Anything else (a proxy's HTML page, an empty body) no
        client could read: raised, for the `models` fallbacks and then an error in the client's shape.
        """
        start = b""
        try:
            while not start.strip() and len(start) < 4096:
                block = await anext(body, None)
                if block is None:
                    break
                start += block
        except BaseException as exc:  # cut off, stalled, or the client gone
            await response.aclose()
            _failed(call, exc)
            raise
        head = start.lstrip()
        if head.startswith((b"{", b"[")):
            return _prefixed(start, body)
        if head.startswith(_SSE_FIELDS):
            headers["content-type"] = "text/event-stream"
            return _prefixed(start, body)
        await response.aclose()
        said = _not_json(start, headers.get("content-type"), self.masker, expected="an event stream")
        raise _failed(call, _unreadable(route, response.status_code, said))

    async def list_models(self, provider_name: str) -> Any:
        """A provider's `GET /models` listing as parsed JSON (for prices); raises UpstreamError on failure."""
        provider = next((p for p in self.registry.providers if p.name == provider_name), None)
        if provider is None:
            raise ConfigError(f"pricing.refresh_from names no active provider: {provider_name!r}")
        url = provider.config.base_url.rstrip("/") + "/models"
        try:
            response = await self.http.get(url, headers=provider.headers())
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise UpstreamConnectionError(
                f"{provider_name} /models failed: {type(exc).__name__}", model="", provider=provider_name
            ) from None
        return orjson.loads(response.content)

    async def _send_retrying(
        self,
        route: Route,
        payload: dict[str, Any],
        *,
        stream: bool,
        call: CallTrace,
        path: str = CHAT_PATH,
        headers: Mapping[str, str] | None = None,
    ) -> _Sent:
        # The first attempt runs outside tenacity: a controller per call costs more than the call's own
        # HTTP work on a fast upstream, and most calls succeed at once.
        deadline = asyncio.get_running_loop().time() + self.retry.deadline_s
        try:
            return await self._attempt(
                route, payload, stream=stream, call=call, path=path, headers=headers, deadline=deadline
            )
        except UpstreamError as exc:
            # A client retrying this request itself gets one attempt per call: its retries times ours would
            # multiply the calls (and the cost) of one failing request.
            if not is_retryable(exc, self.retry) or client_is_retrying():
                raise
            failures = [exc]  # a list the retries empty: this frame keeps no reference to the error
        try:
            return await self._retry(
                failures, route, payload, stream=stream, call=call, path=path, headers=headers, deadline=deadline
            )
        except UpstreamError as exc:
            # Its traceback runs through tenacity's frames, whose state holds the failure: a reference cycle that
            # would keep the call, its payload included, until the garbage collector ran. The error says what failed.
            raise exc.with_traceback(None) from None

    async def _retry(
        self,
        failures: list[UpstreamError],
        route: Route,
        payload: dict[str, Any],
        *,
        stream: bool,
        call: CallTrace,
        path: str,
        headers: Mapping[str, str] | None,
        deadline: float,
    ) -> _Sent:
        """The attempts after the first, which failed with `failures`' one error, as the retry policy allows.

        tenacity's controller is a reference cycle (its state and its bound methods), freed only by the garbage
        collector: once done, its state lets go of the last failure, so that the error and what its traceback holds
        are freed with the request.
        """
        state: RetryCallState | None = None
        try:
            async for attempt in retrying(self.retry, deadline=deadline):
                with attempt:
                    state = attempt.retry_state
                    if state.attempt_number == 1:
                        raise failures.pop()  # the policy decides the wait and the rest from the failure seen
                    call.retries = state.attempt_number - 1
                    return await self._attempt(
                        route, payload, stream=stream, call=call, path=path, headers=headers, deadline=deadline
                    )
        finally:
            if state is not None:
                state.outcome = None
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _attempt(
        self,
        route: Route,
        payload: dict[str, Any],
        *,
        stream: bool,
        call: CallTrace,
        path: str,
        deadline: float,
        headers: Mapping[str, str] | None = None,
    ) -> _Sent:
        """One attempt; when the request is traced, in its own span, whose context goes out with it.

        An attempt that fails once its request may have reached the provider, without an HTTP error (a timeout, a lost
        connection, an answer cut off), may have been billed: the call notes it, and its usage is then unknown (what
        the next attempt reports is not all it used).
        """
        observer = call.observer
        if observer is not None:
            headers = observer.attempt_started(call, headers)
        try:
            return await self._timed_attempt(
                route, payload, stream=stream, call=call, path=path, headers=headers, deadline=deadline
            )
        except BaseException as exc:
            if observer is not None:
                observer.attempt_failed(call, exc)
            # An HTTP error status is a refusal: no bill.
            if isinstance(exc, UpstreamError) and exc.sent and not isinstance(exc, UpstreamStatusError):
                call.unreported_attempts += 1
            raise

    async def _timed_attempt(
        self,
        route: Route,
        payload: dict[str, Any],
        *,
        stream: bool,
        call: CallTrace,
        path: str,
        deadline: float,
        headers: Mapping[str, str] | None = None,
    ) -> _Sent:
        """One attempt, within `http.call_timeout_s` and what is left of `retry.deadline_s`.

        httpx's timeouts are per read: an upstream that trickles a byte now and then never trips them.
        """
        now = asyncio.get_running_loop().time()
        budget = min(self.call_timeout_s, deadline - now)
        ends = stage_ends()
        if ends is not None and ends <= now + budget:  # the stage's limit ends first: it alone can fire
            return await self._send(route, payload, stream=stream, call=call, path=path, headers=headers)
        try:
            async with asyncio.timeout(budget):
                return await self._send(route, payload, stream=stream, call=call, path=path, headers=headers)
        except TimeoutError:
            limit = "http.call_timeout_s" if budget == self.call_timeout_s else "retry.deadline_s"
            what = "start its answer" if stream else "answer"
            raise UpstreamTimeout(
                f"{route.slug} ({route.provider.name}) did not {what} within {limit} ({budget:.3g} s)",
                model=route.slug,
                provider=route.provider.name,
            ) from None

    async def _send(
        self,
        route: Route,
        payload: dict[str, Any],
        *,
        stream: bool,
        call: CallTrace,
        path: str = CHAT_PATH,
        headers: Mapping[str, str] | None = None,
    ) -> _Sent:
        endpoint = self._endpoint(route.provider, path)
        content = request_bytes(payload)
        direct = endpoint.aiohttp  # the default transport: no httpx request or response is built
        if direct is not None:
            if headers:
                sent = wire_headers(_with_own(endpoint, stream, headers))
            else:
                sent = (endpoint.wire_stream_headers if stream else endpoint.wire_headers).copy()
            sent["Content-Length"] = str(len(content))
        else:
            request = _request(endpoint, stream, headers, content)
        sent_before, call.sent = call.sent, True  # from here the provider may see (and bill) the request
        try:
            if direct is not None:
                response = await direct.post(endpoint.aiohttp_url, sent, content, endpoint.aiohttp_timeout)
            else:
                response = await endpoint.transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            raise _noting_sent(call, sent_before, _transport_error(route, exc)) from None
        if response.status_code < 400:
            call.accepted = True
            if stream:
                return response, b""
        # An error body, or a whole answer: read it now.
        try:
            content = await read_body(response)
        except httpx.HTTPError as exc:
            raise _transport_error(route, exc) from None
        finally:
            await response.aclose()
        if response.status_code >= 400:
            raise _status_error(route, response, content, self.masker)
        return response, content

    def _relayable(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {
            key.lower(): self.masker.text(value) for key, value in headers.items() if key.lower() in _RELAYED_HEADERS
        }

    def _endpoint(self, provider: Provider, path: str = CHAT_PATH) -> _Endpoint:
        key = provider.name if path == CHAT_PATH else provider.name + path  # chat, the hot path: no new string
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            url = httpx.URL(provider.config.base_url.rstrip("/") + path)
            key_header = _KEY_HEADERS.get(path, "Authorization")
            headers = httpx.Headers({**provider.headers(key_header=key_header), "Content-Type": "application/json"})
            headers.setdefault("Host", url.netloc.decode("ascii"))  # what httpx would add to every request
            stream_headers = headers.copy()
            stream_headers["Accept"] = "text/event-stream"
            transport = _transport_for(self.http, url)
            direct = transport if isinstance(transport, AiohttpTransport) else None
            extensions = {"timeout": self.http.timeout.as_dict()}
            endpoint = _Endpoint(
                url=url,
                headers=headers,
                stream_headers=stream_headers,
                extensions=extensions,
                transport=transport,
                aiohttp=direct,
                wire_headers=wire_headers(headers),
                wire_stream_headers=wire_headers(stream_headers),
                aiohttp_url=direct.aiohttp_url(url) if direct is not None else None,
                aiohttp_timeout=direct.client_timeout(extensions["timeout"]) if direct is not None else None,
            )
            self._endpoints[key] = endpoint
        return endpoint


@dataclass(frozen=True)
class _Endpoint:
    """A provider's chat-completions endpoint, parsed once: URL, headers, timeouts and the transport to it.

    The headers are kept as `httpx.Headers`: a request copies them as they are, where a dict would be
    normalised again, name by name, for every call (~15% of building an `httpx.Request`).
    """

    url: httpx.URL
    headers: httpx.Headers = field(repr=False)
    stream_headers: httpx.Headers = field(repr=False)
    extensions: dict[str, Any]
    transport: httpx.AsyncBaseTransport
    aiohttp: AiohttpTransport | None  # the transport, when it is the aiohttp one: called without httpx's objects
    wire_headers: CIMultiDict[str] = field(repr=False)  # the headers as that transport takes them
    wire_stream_headers: CIMultiDict[str] = field(repr=False)
    # The URL and the time limits as that transport takes them, made once: per call they cost ~5% of its own work.
    aiohttp_url: yarl.URL | None = None
    aiohttp_timeout: aiohttp.ClientTimeout | None = None


def _with_own(endpoint: _Endpoint, stream: bool, own: Mapping[str, str] | None) -> httpx.Headers:
    """The endpoint's headers with the client's own (a native pass-through's) added, or replacing its own."""
    headers = (endpoint.stream_headers if stream else endpoint.headers).copy()
    if own:
        headers.update(own)
    return headers


def _request(endpoint: _Endpoint, stream: bool, own: Mapping[str, str] | None, content: bytes) -> httpx.Request:
    """The call as an `httpx.Request`, for a transport other than the aiohttp one (httpx's own, respx's)."""
    headers = _with_own(endpoint, stream, own)
    headers["Content-Length"] = str(len(content))
    # Built from a stream, with the headers httpx would add (Host, Content-Length) already there:
    # `content=` would have httpx work out and merge those headers again, the costliest part of a request.
    request = httpx.Request(
        "POST", endpoint.url, headers=headers, stream=httpx.ByteStream(content), extensions=endpoint.extensions
    )
    request.read()
    return request


def _transport_for(http: httpx.AsyncClient, url: httpx.URL) -> httpx.AsyncBaseTransport:
    """The transport the client would use for `url` (its mounts honoured).

    Upstream calls go to the transport directly: an API client needs none of the client's own send
    machinery (auth flows, redirects, a cookie jar fed from every response), which cost as much CPU
    per call as the transport's HTTP work. The client still owns the transport and closes it.
    """
    return http._transport_for_url(url)  # httpx has no public accessor for it


def _payload(route: Route, body: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
    """The body sent upstream for a pipeline call, translated to what the provider understands."""
    config = route.provider.config
    payload = {key: value for key, value in body.items() if value is not None}
    payload["model"] = route.upstream_model
    if config.max_tokens_field == "max_tokens" and "max_completion_tokens" in payload:
        payload["max_tokens"] = payload.pop("max_completion_tokens")
    send_reasoning_as(payload, config.reasoning_style)
    payload["stream"] = stream
    if stream and config.stream_usage:
        payload["stream_options"] = {"include_usage": True}
    else:
        payload.pop("stream_options", None)
    return payload


async def _chunks(
    route: Route, response: Reply, call: CallTrace, masker: SecretMasker, *, stall_s: float
) -> AsyncIterator[dict[str, Any]]:
    if "text/event-stream" not in content_type(response):
        raise _protocol_error(route, "the streamed response is not an event stream")
    # The reads are awaited and the decoder fed here, in this generator's own loop: a generator between the socket
    # and this loop (the body's, the decoder's) would be resumed for every token, wrapping it in an awaitable and a
    # StopIteration, ~1.2 k instructions a level.
    read = body_reads(response)
    decoder = SSEDecoder(clock=ProgressClock(stall_s))
    finished = done = False
    try:
        while not done and (block := await read()):
            for data in decoder.feed(block):
                if data == b"[DONE]":
                    finished = done = True  # the provider says the completion is whole, finish_reason or not
                    break
                if data:
                    chunk = _stream_chunk(route, data, call, masker)
                    finished = finished or _finishes(chunk, call)
                    yield chunk
        if not done:
            for data in decoder.end():
                if data == b"[DONE]":
                    finished = True
                elif data:
                    chunk = _stream_chunk(route, data, call, masker)
                    finished = finished or _finishes(chunk, call)
                    yield chunk
    except httpx.HTTPError as exc:
        raise _transport_error(route, exc, during="the stream") from None
    except READ_ERRORS as exc:
        raise _transport_error(route, read_error(exc), during="the stream") from None
    except Stalled:
        raise stalled(route, stall_s) from None
    if not finished:
        raise _protocol_error(route, "the stream ended before the completion finished")
    end_call(call, status="ok", usage=call.usage)


def _finishes(chunk: dict[str, Any], call: CallTrace) -> bool:
    """Whether a chunk ends the completion (a choice's finish_reason, noted on the call)."""
    for choice in chunk.get("choices") or ():
        if reason := choice.get("finish_reason"):
            call.finish_reason = reason
            return True
    return False


def _stream_chunk(route: Route, data: bytes, call: CallTrace, masker: SecretMasker) -> dict[str, Any]:
    """One streamed event's chunk, masked, parsed and checked; its first token's time and its usage noted."""
    chunk = _json(route, masker.bytes(data))
    # Each test asks `is not None` before `isinstance`: an isinstance that fails (of None, here on almost every
    # chunk) looks the value's `__class__` up as well, ~3 times the cost of one that succeeds; a token pays for each.
    error = chunk.get("error")
    if error is not None and isinstance(error, dict):  # a mid-stream error from the provider
        code = error.get("code")
        raise UpstreamStatusError(
            f"{route.slug} failed mid-stream: {_said(error.get('message', 'unknown error'), masker)}",
            model=route.slug,
            provider=route.provider.name,
            upstream_status=code if isinstance(code, int) and not isinstance(code, bool) else None,
        )
    if problem := completion_problem(chunk, key="delta"):
        raise _protocol_error(route, problem)
    if call.first_token is None:
        call.first_token = time.perf_counter()
        call.response_model = chunk.get("model")
    usage = chunk.get("usage")
    if usage is not None and isinstance(usage, dict):
        call.usage = parse_usage(usage)
    return chunk


async def _relayed(route: Route, response: Reply, masker: SecretMasker, *, stall_s: float) -> AsyncIterator[bytes]:
    """A pass-through body, read by read: masked line by line (an SSE event is never held back longer than its own
    last byte takes to come), cut when filler alone comes for `stall_s`, its transport failures mapped to upstream
    errors; what came of a line the stream broke off in is relayed before the error.

    One generator level for all of it, the reads awaited here: each level more (the body's reads, the guard, the
    masking, as they were) cost every relayed read a resumption, ~1.2 k instructions.
    """
    read = body_reads(response)
    clock = ProgressClock(stall_s)
    lines = LineMask(masker) if masker else None
    try:
        while block := await read():
            clock.read(block)
            if lines is None or (block := lines.feed(block)):
                yield block
    except Exception as exc:
        if lines is not None and (held := lines.end()):
            yield held
        if isinstance(exc, httpx.HTTPError):
            raise _transport_error(route, exc, during="the response body") from None
        if isinstance(exc, READ_ERRORS):
            raise _transport_error(route, read_error(exc), during="the response body") from None
        if isinstance(exc, Stalled):
            raise stalled(route, stall_s) from None
        raise
    if lines is not None and (held := lines.end()):
        yield held


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _prefixed(start: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield start
    async for block in rest:
        yield block


# The fields an event stream's first line begins with (a comment begins with a colon).
_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


def _completion_usage(route: Route, content: bytes) -> Usage | None:
    """A relayed completion's usage (None when it reports none); UpstreamProtocolError for a body that is not a JSON
    object."""
    usage = _json(route, content).get("usage")
    return parse_usage(usage) if isinstance(usage, dict) else None


def _json(route: Route, raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _protocol_error(route, "the response is not valid JSON") from None
    if not isinstance(data, dict):
        raise _protocol_error(route, "the response is not a JSON object")
    return data


def _first_choice(route: Route, data: dict[str, Any], masker: SecretMasker) -> dict[str, Any]:
    if isinstance(data.get("error"), dict):  # a 200 that carries an error object
        message = _said(data["error"].get("message", "unknown error"), masker)
        raise UpstreamStatusError(f"{route.slug} failed: {message}", model=route.slug, provider=route.provider.name)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _protocol_error(route, "the response has no choices")
    return choices[0]


def _noting_sent(call: CallTrace, sent_before: bool, error: UpstreamError) -> UpstreamError:
    """`error`, once the call notes whether its request may have reached the provider (a connection never made
    sent nothing). Errors are raised as made, not from a local: a frame holding the error it raises is a reference
    cycle with the error's traceback, kept (the call's payload with it) until the garbage collector runs."""
    call.sent = sent_before or error.sent
    return error


def _failed(call: CallTrace, exc: _E) -> _E:
    """Record how a call failed (once: the first ending wins); `exc` itself, to be raised."""
    if call.ended is not None:
        return exc
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        end_call(call, status="cancelled", usage=call.usage, error="cancelled")
    elif isinstance(exc, UpstreamError):
        end_call(call, status="error", usage=call.usage, error=exc.message, upstream_status=exc.upstream_status)
        if exc.cause is not None:  # below HTTP: the operator's network, DNS or TLS is likely at fault
            log.warning("upstream call failed: %s", exc.message, extra={"cause": exc.cause, "provider": call.provider})
    else:
        end_call(call, status="error", usage=call.usage, error=type(exc).__name__)
    return exc


def _unreadable(route: Route, status: int, said: str) -> UpstreamProtocolError:
    """A 200 no client could read, told by what it was (`said`: see `_not_json`)."""
    return UpstreamProtocolError(
        f"{route.slug} ({route.provider.name}) returned HTTP {status}{said}",
        model=route.slug,
        provider=route.provider.name,
        upstream_status=status,
    )


def _protocol_error(route: Route, what: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"{route.slug}: {what}", model=route.slug, provider=route.provider.name)


def _transport_error(route: Route, exc: httpx.HTTPError, *, during: str = "the request") -> UpstreamError:
    failure = diagnose(exc)
    kind = UpstreamTimeout if failure.timed_out else UpstreamConnectionError
    if failure.timed_out:
        what = "timed out"
    elif failure.sent:
        what = "lost its connection"
    else:
        what = "could not be reached"
    error = kind(
        f"{route.slug} ({route.provider.name}) {what} during {during}: {failure.description}",
        model=route.slug,
        provider=route.provider.name,
    )
    error.cause, error.sent = failure.cause, failure.sent
    return error


def _status_error(route: Route, response: Reply, content: bytes, masker: SecretMasker) -> UpstreamStatusError:
    # Masked before anything is cut from it: a key cut through at 1,000 characters would leave its prefix.
    raw = masker.bytes(content)
    data = _json_object(raw)
    if data is not None:
        said = f": {_error_message(data, raw, masker) or masker.text(response.reason_phrase) or 'error'}"
    else:
        said = _not_json(raw, response.headers.get("content-type"), masker)
    error = UpstreamStatusError(
        f"{route.slug} ({route.provider.name}) returned HTTP {response.status_code}{said}",
        model=route.slug,
        provider=route.provider.name,
        upstream_status=response.status_code,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )
    error.body = raw
    error.headers = dict(response.headers)
    return error


def _error_message(data: dict[str, Any], raw: bytes, masker: SecretMasker) -> str:
    """What a JSON error object says: its message, else the object itself (short)."""
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _said(error["message"], masker)
    if isinstance(error, str):
        return _said(error, masker)
    if isinstance(data.get("message"), str):
        return _said(data["message"], masker)
    return _said(raw[:4096].decode("utf-8", "replace"), masker, limit=300).strip()


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """An error body as the JSON object every API's error is; None for anything else (a proxy's HTML page)."""
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


# Markup and what it hides from a reader: scripts, styles, comments, then every tag.
_HIDDEN = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def _not_json(raw: bytes, content_type: str | None, masker: SecretMasker, *, expected: str = "a JSON object") -> str:
    """How a body that is not what was `expected` is told: its type and a short excerpt of its text, markup left out.

    An error page of a proxy may say where it runs; the excerpt is kept to the first words a reader would see.
    """
    if not raw.strip():
        return " with an empty body"
    text = _TAG.sub(" ", _HIDDEN.sub(" ", raw[:4096].decode("utf-8", "replace")))
    text = " ".join("".join(c for c in html.unescape(text) if c.isprintable() or c.isspace()).split())
    kind = masker.text(content_type.split(";")[0].strip())[:60] if content_type else "no content type"
    excerpt = _said(text, masker, limit=120)
    return f" with a body that is not {expected} ({kind})" + (f": {excerpt}" if excerpt else "")


def _said(value: Any, masker: SecretMasker, *, limit: int = 1000) -> str:
    """Text an upstream sent, masked and then cut to `limit` characters (cut first, a key would leave its prefix)."""
    return masker.text(str(value))[:limit]
