"""Every error the IG1 client raises, one tree, so callers catch by meaning.

```
IG1Error
├── RequestValidationError          the request is invalid; nothing was sent
├── IG1ConnectionError              transport: refused, reset, dropped  [transient]
│   └── IG1TimeoutError             connect/read/write/pool timeout      [transient]
├── IncompleteStreamError           SSE ended without response.completed [transient]
├── StructuredOutputError           the reply is not valid JSON for the schema
└── APIError                        IG1 answered; carries status, code, request_id
    ├── MalformedResponseError      200 JSON that is no response, even leniently
    │   └── TruncatedResponseError  200 whose body is not JSON (cut in transit) [transient]
    ├── ResponseFailedError         status "failed", or an error event in a stream
    │                               [transient only for server_error, rate limits]
    └── APIStatusError              a non-2xx status
        ├── BadRequestError         400, 422
        ├── AuthenticationError     401, 403
        ├── BudgetExhaustedError    402 "Commit exceeded": stop sending
        ├── NotFoundError           404
        ├── RateLimitError          429                                  [transient]
        └── ServerError             5xx, 408, 409                        [transient]
```
Transient errors have ``retryable = True``; nothing else is ever retried. A 200
has been billed: only a body cut off in transit is worth paying for again.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIError",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExhaustedError",
    "IG1ConnectionError",
    "IG1Error",
    "IG1TimeoutError",
    "IncompleteStreamError",
    "MalformedResponseError",
    "NotFoundError",
    "RateLimitError",
    "RequestValidationError",
    "ResponseFailedError",
    "ServerError",
    "StructuredOutputError",
    "TruncatedResponseError",
    "is_transient_code",
    "status_error_class",
]


class IG1Error(Exception):
    """Root of every error raised by this package's IG1 client."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process and Prefect state boundaries: rebuild from the
        # instance dict rather than from positional args.
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[IG1Error], state: dict[str, Any]) -> IG1Error:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class RequestValidationError(IG1Error, ValueError):
    """The request is invalid before sending: the message names the field and the fix."""


class IG1ConnectionError(IG1Error):
    """The connection failed or dropped before a complete reply arrived."""

    retryable = True


class IG1TimeoutError(IG1ConnectionError):
    """IG1 did not answer within the configured timeout."""


class IncompleteStreamError(IG1Error):
    """The event stream ended without ``response.completed``: not a short answer."""

    retryable = True

    def __init__(self, message: str, *, partial_text: str = "", request_id: str | None = None):
        super().__init__(message)
        self.partial_text = partial_text
        self.request_id = request_id


class StructuredOutputError(IG1Error, ValueError):
    """The reply is not valid JSON for the requested schema; ``raw_text`` keeps it."""

    def __init__(self, message: str, *, raw_text: str, request_id: str | None = None):
        super().__init__(message)
        self.raw_text = raw_text
        self.request_id = request_id


class APIError(IG1Error):
    """IG1 answered with something that is not a usable response."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | int | None = None,
        request_id: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        suffix = f" (request_id={self.request_id})" if self.request_id else ""
        return f"IG1 {self.status}: {self.message}{suffix}"


class MalformedResponseError(APIError):
    """A 2xx whose JSON is no response even when read leniently: paid for, so never retried."""


class TruncatedResponseError(MalformedResponseError):
    """A 2xx whose body is not JSON at all (cut off in transit): retried."""

    retryable = True


class ResponseFailedError(APIError):
    """The server reported the response failed; retried only when its code is transient."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retryable = is_transient_code(self.code)


_TRANSIENT_CODES = frozenset({
    "server_error", "internal_error", "internal_server_error", "rate_limit_exceeded",
    "rate_limit_error", "overloaded", "overloaded_error", "service_unavailable", "timeout",
})


def is_transient_code(code: str | int | None) -> bool:
    """True for error codes a later attempt can fix: server errors and rate limits."""
    if isinstance(code, int) and not isinstance(code, bool):
        return code in (408, 409, 429) or code >= 500
    if isinstance(code, str):
        if code.isdigit():
            return is_transient_code(int(code))
        return code.lower() in _TRANSIENT_CODES
    return False


class APIStatusError(APIError):
    """IG1 answered with a non-2xx status; ``retry_after`` is the server's hint, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400/422: the request itself is wrong; retrying cannot help."""


class AuthenticationError(APIStatusError):
    """401/403: the key is missing, wrong or inactive; check the credentials block."""


class BudgetExhaustedError(APIStatusError):
    """402 "Commit exceeded": the monthly budget is spent; every call fails until raised."""


class NotFoundError(APIStatusError):
    """404: unknown model or an endpoint IG1 does not offer (zero retention)."""


class RateLimitError(APIStatusError):
    """429: too many requests in flight; retried after ``Retry-After``."""

    retryable = True


class ServerError(APIStatusError):
    """5xx, 408 or 409: transient on IG1's side; retried with backoff."""

    retryable = True


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: BudgetExhaustedError,
    403: AuthenticationError,
    404: NotFoundError,
    408: ServerError,
    409: ServerError,
    422: BadRequestError,
    429: RateLimitError,
}


def status_error_class(status: int) -> type[APIStatusError]:
    """The exception class for an HTTP status (one mapping, used everywhere)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return APIStatusError
