"""Client-side rate limits: token buckets for requests/min and tokens/min.

A bucket holds at most one minute's allowance and refills continuously, so a long run settles at the
configured rate while a short burst can use the allowance at once (the way provider limits behave).
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, per_minute: float | None, burst: float | None = None):
        self.rate = per_minute / 60.0 if per_minute else None
        self.capacity = float(burst if burst is not None else (per_minute or 0))
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        if self.rate is None:
            return
        amount = min(amount, self.capacity) if self.capacity else amount
        async with self._lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


class RateLimiter:
    """Requests/min and tokens/min together; ``burst`` defaults to one request (strict spacing) when the
    request rate is low, so limits hold from the first second."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 burst_requests: float | None = 1):
        self.requests = TokenBucket(requests_per_minute, burst_requests if requests_per_minute else None)
        self.tokens = TokenBucket(tokens_per_minute)

    async def acquire(self, tokens: int) -> None:
        await self.requests.acquire(1)
        await self.tokens.acquire(tokens)
