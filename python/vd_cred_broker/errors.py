"""The exceptions a credential raises.

They keep the original credential's types, so existing ``except ValueError``
and ``except RuntimeError`` clauses still work, and each also carries what the
component reported:

- ``kind``: the WIT ``credential-error`` case, e.g. ``"broker-rejected"``;
- ``status``: the broker's HTTP status, or ``None``.

The message is the component's own sentence: it names what failed and what to
do, and never holds the bearer or a token.
"""

from typing import List, Optional

__all__ = [
    "CredentialError",
    "ConfigurationError",
    "InvalidScopesError",
    "ScopeNotAllowedError",
    "UnsupportedOptionError",
    "BearerUnavailableError",
    "BrokerUnreachableError",
    "BrokerRejectedError",
    "BrokerFailedError",
    "InvalidResponseError",
    "HostError",
]


class CredentialError(Exception):
    """Base of every error this package raises."""

    kind: str = "credential"

    def __init__(self, message: str, *, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigurationError(CredentialError, ValueError):
    """A setting is missing or invalid (names the variable or argument)."""

    kind = "configuration"


class InvalidScopesError(CredentialError, ValueError):
    """No scope, or scopes that need different tokens."""

    kind = "invalid-scopes"


class ScopeNotAllowedError(CredentialError, ValueError):
    """A scope that maps to no resource the credential serves (the original's type)."""

    kind = "scope-not-allowed"

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        scope: str = "",
        known_resources: Optional[List[str]] = None,
    ) -> None:
        super().__init__(message, status=status)
        self.scope = scope
        self.known_resources = list(known_resources or [])


class UnsupportedOptionError(CredentialError, ValueError):
    """A request option the broker cannot honour (a claims challenge)."""

    kind = "unsupported"


class BearerUnavailableError(CredentialError, RuntimeError):
    """The bearer file is missing, unreadable, empty or malformed."""

    kind = "bearer-unavailable"


class BrokerUnreachableError(CredentialError, RuntimeError):
    """The broker or helper could not be reached, or did not answer in time."""

    kind = "broker-unreachable"


class BrokerRejectedError(CredentialError, RuntimeError):
    """The broker answered 401 or 403."""

    kind = "broker-rejected"


class BrokerFailedError(CredentialError, RuntimeError):
    """The broker answered another non-2xx status."""

    kind = "broker-failed"


class InvalidResponseError(CredentialError, RuntimeError):
    """A 2xx answer that is not a usable token."""

    kind = "invalid-response"


class HostError(CredentialError, RuntimeError):
    """The wasm host itself failed (a bug: please report it)."""

    kind = "host"


_BY_KIND = {
    cls.kind: cls
    for cls in (
        ConfigurationError,
        InvalidScopesError,
        ScopeNotAllowedError,
        UnsupportedOptionError,
        BearerUnavailableError,
        BrokerUnreachableError,
        BrokerRejectedError,
        BrokerFailedError,
        InvalidResponseError,
        HostError,
    )
}


def from_native(error: BaseException) -> CredentialError:
    """The exception for a ``_native.NativeError(kind, status, message, scope, known)``."""
    kind, status, message, scope, known = error.args
    cls = _BY_KIND.get(kind, HostError)
    if cls is ScopeNotAllowedError:
        return ScopeNotAllowedError(message, scope=scope or "", known_resources=known)
    return cls(message, status=status)
