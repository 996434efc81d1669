"""Who may call and how often: a bearer token to a principal, its scope checked, its rate taken."""

from __future__ import annotations

import math

import msgspec

from app.api.keys import OPEN, KeyRing, Principal
from app.errors import Forbidden, RateLimited, Unauthenticated
from app.ports import RateDecision, RateLimiter


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    principal: Principal
    rate: RateDecision | None  # None: not rate limited (open mode, or the limit is off)


class Access:
    """`keys` None is open mode: every caller is `OPEN` (one tenant, every scope, no limit:
    there is no key to count against)."""

    def __init__(
        self,
        keys: KeyRing | None,
        limiter: RateLimiter,
        *,
        rate_per_second: float,
        burst: int,
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.rate_per_second = rate_per_second
        self.burst = burst

    async def admit(self, authorization: str | None, scope: str) -> Grant:
        """The caller behind an Authorization header, allowed `scope` and within its rate;
        else Unauthenticated (401), Forbidden (403) or RateLimited (429)."""
        if self.keys is None:
            return Grant(principal=OPEN, rate=None)
        token = _bearer(authorization)
        if token is None:
            raise Unauthenticated(
                "send an API key as `Authorization: Bearer <key>`", token_given=False
            )
        principal = self.keys.authenticate(token)
        if principal is None:
            raise Unauthenticated("the API key is not valid", token_given=True)
        if scope not in principal.scopes:
            raise Forbidden(f"the API key lacks the `{scope}` scope")
        rate = principal.rate_per_second or self.rate_per_second
        if rate <= 0:
            return Grant(principal=principal, rate=None)
        decision = await self.limiter.take(
            principal.key_id, rate=rate, burst=principal.burst or self.burst
        )
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {rate:g} requests a second exceeded; retry later",
                headers=rate_headers(decision),
            )
        return Grant(principal=principal, rate=decision)

    async def take_more(self, principal: Principal, cost: int) -> RateDecision:
        """Take `cost` more tokens from an admitted caller's bucket, for a request doing the
        work of several; at most a full bucket less the one admit took, since more could
        never be granted. RateLimited (429) when the bucket has not got them."""
        rate = principal.rate_per_second or self.rate_per_second
        burst = principal.burst or self.burst
        decision = await self.limiter.take(
            principal.key_id, rate=rate, burst=burst, cost=max(0, min(cost, burst - 1))
        )
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {rate:g} requests a second exceeded by a request of "
                f"{cost + 1}; retry later",
                headers=rate_headers(decision),
            )
        return decision


def rate_headers(decision: RateDecision) -> dict[str, str]:
    """RateLimit-Limit/-Remaining/-Reset (IETF httpapi-ratelimit-headers draft, delta
    seconds), and Retry-After when refused."""
    headers = {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset_seconds)),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after_seconds)))
    return headers


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
