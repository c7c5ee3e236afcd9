"""Exceptions, grouped by what the engine does about them.

| class               | engine action                                              | exit |
|---------------------|------------------------------------------------------------|------|
| RetryableError      | http.py retries it (backoff, Retry-After); never escapes   |  -   |
| Throttled           | the same, and safe to resend a POST: nothing was processed |  -   |
| ReauthRequired      | http.py refreshes the credential once and repeats the call |  -   |
| TransientError      | a write whose retries ran out: the record is parked and    |  4   |
|                     | retried by later runs on their own                         |      |
| RejectedError       | the target refused the content: parked until `replay`      |  4   |
| HeldError           | a reference cannot be resolved: held for review            |  4   |
| UnavailableError    | the system is unreachable or its quota is spent: abort     |  5   |
| AuthError           | consent needed, refused, or a permission missing: abort    |  3   |
| ConfigError         | bad config or usage: stop before any read or write         |  2   |
| LockHeld            | another run of the pair is under way                       |  75  |

Each connector maps its API's answers onto these in one table (its `classify`).
Messages carry the server's own code and text, never a secret.
"""

from __future__ import annotations


class MlcError(Exception):
    exit_code = 1


class ConfigError(MlcError):
    exit_code = 2

    def __init__(self, problem: str, *, file: str | None = None, key: str | None = None):
        self.problem, self.file, self.key = problem, file, key
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {problem}" if where else problem)


class LockHeld(MlcError):
    exit_code = 75


class AuthError(MlcError):
    """Consent needed or refused, or the service account lacks a permission.

    `fix` says what the user should run or change; it is printed under the message."""

    exit_code = 3

    def __init__(self, message: str, *, system: str | None = None, fix: str | None = None):
        self.system, self.fix = system, fix
        super().__init__(message)


class HeldError(MlcError):
    """A record cannot be mapped without a human: a reference is missing."""

    exit_code = 4

    def __init__(self, reason: str, *, missing: dict | None = None):
        self.reason, self.missing = reason, missing or {}
        super().__init__(reason)


class ApiError(MlcError):
    """An answer from a system's API, carrying the server's own code and message."""

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        system: str = "",
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        self.system, self.status, self.code, self.message = system, status, code, message
        self.retry_after = retry_after
        bits = [b for b in (system, str(status) if status else None, code) if b]
        super().__init__(f"[{' '.join(bits)}] {message}" if bits else message)


class RetryableError(ApiError):
    """Try the same call again later (5xx, 429, connection trouble, a busy slot)."""


class ReauthRequired(ApiError):
    """The credential was refused; refresh it once and repeat the call."""


class TransientError(ApiError):
    """A call's retries ran out; the record is parked and retried by later runs."""


class RejectedError(ApiError):
    """The system refused the request for its content; a person must look."""


class NotFound(RejectedError):
    """The object does not exist (404, FreshBooks errno 1012)."""


class UnavailableError(ApiError):
    """Abort the run: unreachable after retries, or refusing calls until later."""

    exit_code = 5


class Throttled(RetryableError):
    """Refused before it was processed (429, BILL BDC_1322, a write collision): safe to
    send again even when the call is not idempotent."""
