"""The synchronous credential."""

import logging
import os
import re
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar

from azure.core.credentials import AccessToken, AccessTokenInfo

from . import _native
from .errors import ConfigurationError, from_native

__all__ = ["StudioAzureCredBroker"]

_LOGGER = logging.getLogger("vd_cred_broker")

_T = TypeVar("_T")


def _in_credential_chain() -> bool:
    """Whether azure-identity's ``ChainedTokenCredential`` (or
    ``DefaultAzureCredential``) is calling: it logs our outcome itself, so
    ours goes to DEBUG, as azure-identity's own credentials do. Looked up
    only if azure-identity is already imported (never imported for this)."""
    utils = sys.modules.get("azure.identity._internal.utils")
    chain = getattr(utils, "within_credential_chain", None)
    try:
        return bool(chain is not None and chain.get())
    except Exception:  # pylint:disable=broad-except
        return False


# A URL's user-info and query or fragment (a configuration error quotes the
# URL it was given): never logged. Compiled on the first failure logged, not
# at import (compiling them was a fifth of this module's import).
_USERINFO = r"(://)[^/\s\"'@]*@"
_QUERY = r"(://[^\s\"'?#]*)[?#][^\s\"']*"


def _described(error: BaseException) -> str:
    """``[kind] message`` for a log record: the error's kind (this package's
    ``kind``, else its type's name) and its message, with any URL's user-info
    and query removed. The message never holds the bearer or a token."""
    kind = getattr(error, "kind", None) or type(error).__name__
    message = re.sub(_QUERY, r"\1?...", re.sub(_USERINFO, r"\1...@", str(error)))
    return f"[{kind}] {message}"


def _log_succeeded(credential: object, method: str) -> None:
    """azure-identity's record for a token had: ``"<Class>.<method> succeeded"``
    at INFO (DEBUG within a credential chain). Nothing is looked up when INFO
    is not enabled (nor is DEBUG then), as on every call of a quiet process."""
    if not _LOGGER.isEnabledFor(logging.INFO):
        return
    level = logging.DEBUG if _in_credential_chain() else logging.INFO
    _LOGGER.log(level, "%s.%s succeeded", type(credential).__name__, method)


def _log_failed(credential: object, method: str, error: BaseException) -> None:
    """azure-identity's record for a failure: ``"<Class>.<method> failed: %s"``
    at WARNING (DEBUG within a credential chain), with the traceback when
    DEBUG is enabled; here the error is ``[kind] message``, and the record
    carries ``vd_error_kind`` and ``vd_status``."""
    level = logging.DEBUG if _in_credential_chain() else logging.WARNING
    _LOGGER.log(
        level,
        "%s.%s failed: %s",
        type(credential).__name__,
        method,
        _described(error),
        exc_info=_LOGGER.isEnabledFor(logging.DEBUG),
        extra={
            "vd_error_kind": getattr(error, "kind", None) or type(error).__name__,
            "vd_status": getattr(error, "status", None),
        },
    )


def _logged(credential: object, method: str, call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)``, its outcome logged as azure-identity logs its
    credentials'. The arguments are passed rather than closed over: a cached
    ``get_token`` takes microseconds, and a closure made per call is a share."""
    try:
        result = call(*args)
    except Exception as e:
        _log_failed(credential, method, e)
        raise
    _log_succeeded(credential, method)
    return result


def _is_real(value: Any) -> bool:
    """``isinstance(value, numbers.Real)``, with ``numbers`` imported only for
    a value that is neither ``int`` nor ``float`` (a NumPy float, a
    ``Fraction``): importing it costs every process more than the rest of
    this module."""
    if isinstance(value, (int, float)):
        return True
    import numbers

    return isinstance(value, numbers.Real)


def _timeout_ms(timeout: Any) -> int:
    if isinstance(timeout, bool) or not _is_real(timeout):
        raise ConfigurationError(
            f"timeout must be a number of seconds (int or float), not {type(timeout).__name__}"
        )
    ms = round(float(timeout) * 1000)
    if not 0 < ms < 2**32:
        raise ConfigurationError(
            f"timeout must be more than 0 and at most 4294967 seconds, got {timeout!r}"
        )
    return ms


def _revision(value: Any) -> Tuple[Optional[int], Optional[str]]:
    """The revision to pass on, or why it is invalid (raised at token time, as the original)."""
    if value is None:
        return None, None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**64:
        return None, (
            "configuration_revision must be a non-negative integer, got "
            f"{value!r}: pass an int such as 7, or leave it unset to use "
            "VD_CREDENTIAL_CONFIGURATION_REVISION"
        )
    return value, None


def _optional_str(name: str, value: Any, example: str) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    raise ConfigurationError(f"{name} must be a string such as {example!r}, not {type(value).__name__}")


def _audience_map(value: Any) -> List[Tuple[str, str]]:
    example = '{"https://vault.azure.net": "key_vault_data_plane"}'
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"audience_map must be a mapping of resource to audience, e.g. {example}")
    for resource, audience in value.items():
        if not isinstance(resource, str) or not isinstance(audience, str):
            raise ConfigurationError(
                f"audience_map must map strings to strings, e.g. {example}; "
                f"got {resource!r}: {audience!r}"
            )
    return list(value.items())


def _scopes(scopes: Tuple[Any, ...]) -> List[str]:
    for scope in scopes:
        if not isinstance(scope, str):
            raise ConfigurationError(
                f"scopes must be strings such as 'https://vault.azure.net/.default', got {scope!r}"
            )
    return list(scopes)


def _absolute(path: str) -> str:
    """``path`` against the working directory now (as the native side does),
    so that a copy made after a ``chdir`` reads the same file."""
    return path if not path or os.path.isabs(path) else os.path.join(os.getcwd(), path)


def _environment() -> Dict[str, str]:
    """The variables the credential reads, from ``os.environ`` (as the original
    reads them, and with the GIL held: never concurrently with a write)."""
    env = {name: os.environ[name] for name in _native.ENV_VARS if name in os.environ}
    if "VD_CREDENTIAL_FILE" in env:
        env["VD_CREDENTIAL_FILE"] = _absolute(env["VD_CREDENTIAL_FILE"])
    return env


def preload() -> bool:
    """Load the compiled component now (from the per-user cache, or compile
    it) rather than on the first credential; returns whether it was cached."""
    return _native.preload(_environment())


class StudioAzureCredBroker:
    """VibeData Studio's Azure ``TokenCredential``, run as a sandboxed WebAssembly component.

    A drop-in for ``vibedata_studio_azure_cred_broker.StudioAzureCredBroker``
    (0.2.0): the same constructor, environment variables and choice of helper
    mode; ``get_token`` returns ``azure.core.credentials.AccessToken``. Beyond
    the original it caches tokens per audience (``cache=False`` mints on every
    call), reports ``refresh_on`` through ``get_token_info``, retries transient
    broker failures within ``timeout``, and reads the bearer only inside a
    sandbox that sees the bearer's directory (read-only) and reaches only the
    broker's origin.

    One credential is safe to share between threads, and a call for one
    audience never waits on a call for another. It survives ``os.fork()``
    (the child builds its own sandboxes on first use) and copies and pickles
    as the original does: a copy is a new credential with the same arguments
    and the environment read at construction, and carries no token or bearer.
    """

    def __init__(
        self,
        broker_url: Optional[str] = None,
        credential_file: Optional[str] = None,
        lane: Optional[str] = None,
        configuration_revision: Optional[int] = None,
        timeout: float = 10,
        audience_map: Optional[Mapping[str, str]] = None,
        *,
        allow_insecure_http: bool = False,
        cache: bool = True,
    ) -> None:
        if credential_file is not None and isinstance(credential_file, os.PathLike):
            credential_file = os.fspath(credential_file)
        if isinstance(credential_file, str):
            credential_file = _absolute(credential_file)
        # As the original: an empty string means "from the environment".
        arguments = {
            "broker_url": broker_url or None,
            "credential_file": credential_file or None,
            "lane": lane or None,
            "configuration_revision": configuration_revision,
            "timeout": timeout,
            "audience_map": dict(audience_map) if isinstance(audience_map, Mapping) else audience_map,
            "allow_insecure_http": allow_insecure_http,
            "cache": cache,
        }
        self._open(arguments, _environment())

    def _open(self, arguments: Dict[str, Any], environment: Dict[str, str]) -> None:
        a = arguments
        revision, revision_error = _revision(a["configuration_revision"])
        kwargs = dict(
            broker_url=_optional_str("broker_url", a["broker_url"], "http://127.0.0.1:8080/api/v1/credential-broker"),
            credential_file=_optional_str("credential_file", a["credential_file"], "/run/vd/credential"),
            lane=_optional_str("lane", a["lane"], "user"),
            configuration_revision=revision,
            timeout_ms=_timeout_ms(a["timeout"]),
            audience_map=_audience_map(a["audience_map"]),
            allow_insecure_http=bool(a["allow_insecure_http"]),
            cache=bool(a["cache"]),
        )
        try:
            native = _native.Credential(environment, **kwargs)
        except _native.NativeError as e:
            raise from_native(e) from None
        self._arguments, self._environment = arguments, environment
        self._revision_error = revision_error
        self._native = native

    def __getstate__(self) -> Dict[str, Any]:
        """What a copy or a pickle carries: the arguments and the environment
        read at construction; never a token, the bearer or a sandbox."""
        return {"arguments": self._arguments, "environment": self._environment}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._open(state["arguments"], state["environment"])

    @property
    def mode(self) -> str:
        """``"broker"``, or ``"helper"`` when the runtime-access socket existed at construction."""
        return self._native.mode

    def get_token(
        self,
        *scopes: str,
        claims: Optional[str] = None,
        tenant_id: Optional[str] = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """An ``AccessToken`` for ``scopes`` (e.g. ``https://vault.azure.net/.default``)."""
        token, expires_on, _ = _logged(
            self, "get_token", self._call, self._native.get_token_info, scopes, claims, tenant_id, enable_cae
        )
        return AccessToken(token, expires_on)

    def get_token_info(
        self, *scopes: str, options: Optional[Dict[str, Any]] = None
    ) -> AccessTokenInfo:
        """An ``AccessTokenInfo`` for ``scopes``, with ``refresh_on`` when the token has one."""
        # `_options` inside the logged call: a bad `options` is logged as a failure.
        token, expires_on, refresh_on = _logged(
            self,
            "get_token_info",
            lambda: self._call(self._native.get_token_info, scopes, *_options(options)),
        )
        return AccessTokenInfo(token, expires_on, token_type="Bearer", refresh_on=refresh_on)

    def _call(self, native_call, scopes, claims, tenant_id, enable_cae):
        """``native_call`` (``get_token_info``, or ``start`` for asyncio) with
        checked arguments; a native error raised as this package's type."""
        if self._revision_error:
            raise ConfigurationError(self._revision_error)
        scopes = _scopes(scopes)
        if claims is not None:
            claims = _optional_str("claims", claims, 'a claims challenge\'s JSON')
        if tenant_id is not None:
            tenant_id = _optional_str("tenant_id", tenant_id, "00000000-0000-0000-0000-000000000000")
        try:
            # Positional: the extension parses them faster than keywords.
            return native_call(scopes, claims, tenant_id, bool(enable_cae))
        except _native.NativeError as e:
            raise from_native(e) from None

    def close(self) -> None:
        """Release the sandboxes. Later calls raise ``ConfigurationError``."""
        self._native.close()

    def __enter__(self) -> "StudioAzureCredBroker":
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


def _options(options: Optional[Dict[str, Any]]) -> Tuple[Any, Any, Any]:
    """``get_token_info``'s options as ``(claims, tenant_id, enable_cae)``."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"options must be a mapping such as {{'tenant_id': '...'}}, not {type(options).__name__}"
        )
    return options.get("claims"), options.get("tenant_id"), options.get("enable_cae", False)
