"""A token bucket per session: a sustained rate with a burst on top."""

from __future__ import annotations


class TokenBucket:
    """Allow ``rate`` events per second on average and ``burst`` at once.

    ``overdraft`` counts events rejected since the bucket last had a token, so a
    caller can tell a brief spike from sustained abuse.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens", "overdraft")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now
        self.overdraft = 0

    def take(self, now: float) -> bool:
        """Spend one token if there is one; return whether the event is allowed."""
        tokens = self._tokens + (now - self._stamp) * self._rate
        # A comparison, not min(): this runs once per message, and the call costs more.
        if tokens > self._burst:
            tokens = self._burst
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            self.overdraft = 0
            return True
        self._tokens = tokens
        self.overdraft += 1
        return False

    def retry_after(self) -> float:
        """Seconds until the next token arrives."""
        return max(1.0 - self._tokens, 0.0) / self._rate
