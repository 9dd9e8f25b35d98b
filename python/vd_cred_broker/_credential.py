"""The synchronous credential."""

import numbers
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from azure.core.credentials import AccessToken, AccessTokenInfo

from . import _native
from .errors import ConfigurationError, from_native

__all__ = ["StudioAzureCredBroker"]


def _timeout_ms(timeout: Any) -> int:
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
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

    One credential is safe to share between threads.
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
        revision, self._revision_error = _revision(configuration_revision)
        if audience_map is not None and not isinstance(audience_map, Mapping):
            raise ConfigurationError(
                "audience_map must be a mapping of resource to audience, e.g. "
                '{"https://vault.azure.net": "key_vault_data_plane"}'
            )
        if credential_file is not None:
            credential_file = os.fspath(credential_file)
        try:
            self._native = _native.Credential(
                broker_url=broker_url,
                credential_file=credential_file,
                lane=lane,
                configuration_revision=revision,
                timeout_ms=_timeout_ms(timeout),
                audience_map=list((audience_map or {}).items()),
                allow_insecure_http=bool(allow_insecure_http),
                cache=bool(cache),
            )
        except _native.NativeError as e:
            raise from_native(e) from None

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
        token, expires_on, _ = self._get(scopes, claims, tenant_id, enable_cae)
        return AccessToken(token, expires_on)

    def get_token_info(
        self, *scopes: str, options: Optional[Dict[str, Any]] = None
    ) -> AccessTokenInfo:
        """An ``AccessTokenInfo`` for ``scopes``, with ``refresh_on`` when the token has one."""
        options = options or {}
        token, expires_on, refresh_on = self._get(
            scopes,
            options.get("claims"),
            options.get("tenant_id"),
            bool(options.get("enable_cae", False)),
        )
        return AccessTokenInfo(token, expires_on, token_type="Bearer", refresh_on=refresh_on)

    def _get(self, scopes, claims, tenant_id, enable_cae):
        if self._revision_error:
            raise ConfigurationError(self._revision_error)
        try:
            return self._native.get_token_info(
                list(scopes), claims=claims, tenant_id=tenant_id, enable_cae=enable_cae
            )
        except _native.NativeError as e:
            raise from_native(e) from None
        except TypeError:
            bad = next((s for s in scopes if not isinstance(s, str)), None)
            raise ConfigurationError(
                f"scopes must be strings such as 'https://vault.azure.net/.default', got {bad!r}"
            ) from None

    def close(self) -> None:
        """Release the sandbox. Later calls raise ``ConfigurationError``."""
        self._native.close()

    def __enter__(self) -> "StudioAzureCredBroker":
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()
