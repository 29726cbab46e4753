"""Open event streams: how many each token holds, and the response that gives its slot back."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncGenerator, Callable

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from controller.errors import TooManyRequests
from controller.jobs.events import EventHub


class StreamSlots:
    """At most `per_token` open streams per API token, in this process."""

    def __init__(self, per_token: int) -> None:
        self.per_token = per_token
        self._open: Counter[int] = Counter()
        self._lock = threading.Lock()  # acquired in route threads, released on the event loop

    def acquire(self, token_id: int) -> bool:
        with self._lock:
            if self._open[token_id] >= self.per_token:
                return False
            self._open[token_id] += 1
            return True

    def release(self, token_id: int) -> None:
        with self._lock:
            self._open[token_id] -= 1
            if self._open[token_id] <= 0:
                del self._open[token_id]

    def open(self, token_id: int) -> int:
        with self._lock:
            return self._open[token_id]

    def total(self) -> int:
        """Open streams of all tokens."""
        with self._lock:
            return sum(self._open.values())


class EventStreamResponse(StreamingResponse):
    """text/event-stream that releases its slot however it ends, even if it never started."""

    def __init__(
        self, content: AsyncGenerator[bytes, None], *, release: Callable[[], None]
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = content
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A client gone while a frame was being sent leaves the generator suspended at its
            # yield: close it now (unsubscribing it) rather than whenever it is collected.
            with anyio.CancelScope(shield=True):
                await self._events.aclose()
            self._release()


def open_stream(
    request: Request, *, job_id: str, holder: int, after: int = 0
) -> EventStreamResponse:
    """A job's events for one more stream of `holder` (a token id), from the client's
    Last-Event-ID (or `after`): the API's and the console's live views alike."""
    slots: StreamSlots = request.app.state.stream_slots
    if not slots.acquire(holder):
        raise TooManyRequests(
            f"this token has {slots.per_token} event streams open, the most it may"
            " (FLEETTRACE_SSE_STREAMS_PER_TOKEN); close one first",
        )
    last = request.headers.get("last-event-id", "")
    if last.isdigit() and len(last) < 19:
        after = int(last)
    hub: EventHub = request.app.state.events
    return EventStreamResponse(hub.stream(job_id, after), release=lambda: slots.release(holder))
