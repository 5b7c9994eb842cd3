"""Access errors, in the tree of `openfusion.errors`: 403 scope, 429 limits, 503 limit store down."""

from __future__ import annotations

from openfusion.errors import AuthenticationFailed, OpenFusionError

__all__ = [
    "AddressBraked",
    "AuthenticationFailed",
    "LimitExceeded",
    "LimitsUnavailable",
    "MetricsNotAllowed",
    "ModelNotAllowed",
]


class ModelNotAllowed(OpenFusionError):
    """The client's key is not scoped for a model it asked for."""

    status_code = 403
    error_type = "permission_error"
    code = "model_not_allowed"


class MetricsNotAllowed(OpenFusionError):
    """The client's key may not read /metrics: neither an admin key nor one with `metrics = true`."""

    status_code = 403
    error_type = "permission_error"
    code = "metrics_not_allowed"


class LimitExceeded(OpenFusionError):
    """A rate, concurrency or spend limit is reached; `retry_after` says when to try again."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, *, code: str, retry_after: float) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after  # rendered as Retry-After by api.handlers.error_response


class AddressBraked(LimitExceeded):
    """The client's address presented too many wrong keys lately: refused for a while, whatever key it sends."""

    reason = "braked"  # as AuthenticationFailed's reasons: the label of a refused authentication


class LimitsUnavailable(OpenFusionError):
    """The shared limit store (Redis) cannot be reached: the limits cannot be enforced."""

    status_code = 503
    error_type = "server_error"
    code = "limits_unavailable"
