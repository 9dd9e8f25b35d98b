"""``StudioAzureCredBroker`` for asyncio: an ``AsyncTokenCredential``.

A call runs as a task in the credential's native runtime and the event loop
waits on a descriptor that becomes readable when it ends: no thread of the
loop's default executor is parked on the broker, so a hung broker cannot
starve ``getaddrinfo`` or other executor work, and ``asyncio.run`` does not
wait for such calls on its way out. Cancelling an awaiting task leaves the
call to finish on its own; the credential stays usable. Use it with the
``.aio`` Azure SDK clients and adlfs.
"""

import asyncio
import os
from typing import Any, Dict, Mapping, Optional

from azure.core.credentials import AccessToken, AccessTokenInfo

from . import _native
from ._credential import StudioAzureCredBroker as _SyncCredential
from ._credential import _log_failed, _log_succeeded, _options
from .errors import from_native

__all__ = ["StudioAzureCredBroker"]


def _ended(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


async def _wait(call: Any) -> Any:
    """The outcome of a started native call, awaited on its descriptor."""
    loop = asyncio.get_running_loop()
    fd = call.fileno()
    ended = loop.create_future()
    try:
        loop.add_reader(fd, _ended, ended)
    except NotImplementedError:
        # An event loop without add_reader (Windows' proactor): a thread of
        # the default executor waits instead.
        # (It keeps `call`, and so the descriptor, alive while it reads.)
        await loop.run_in_executor(None, lambda: os.read(call.fileno(), 1))
    else:
        try:
            await ended
        finally:
            loop.remove_reader(fd)
    try:
        return call.result()
    except _native.NativeError as e:
        raise from_native(e) from None


class StudioAzureCredBroker:
    """The async twin of :class:`vd_cred_broker.StudioAzureCredBroker`; same arguments."""

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
        self._sync = _SyncCredential(
            broker_url,
            credential_file,
            lane,
            configuration_revision,
            timeout,
            audience_map,
            allow_insecure_http=allow_insecure_http,
            cache=cache,
        )

    def __getstate__(self) -> Dict[str, Any]:
        """As the synchronous credential's: a copy is a new credential."""
        return self._sync.__getstate__()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._sync = _SyncCredential.__new__(_SyncCredential)
        self._sync.__setstate__(state)

    @property
    def mode(self) -> str:
        return self._sync.mode

    async def get_token(
        self,
        *scopes: str,
        claims: Optional[str] = None,
        tenant_id: Optional[str] = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        try:
            call = self._sync._call(self._sync._native.start, scopes, claims, tenant_id, enable_cae)
            token, expires_on, _ = await _wait(call)
        except Exception as e:
            _log_failed(self, "get_token", e)
            raise
        _log_succeeded(self, "get_token")
        return AccessToken(token, expires_on)

    async def get_token_info(
        self, *scopes: str, options: Optional[Dict[str, Any]] = None
    ) -> AccessTokenInfo:
        try:
            call = self._sync._call(self._sync._native.start, scopes, *_options(options))
            token, expires_on, refresh_on = await _wait(call)
        except Exception as e:
            _log_failed(self, "get_token_info", e)
            raise
        _log_succeeded(self, "get_token_info")
        return AccessTokenInfo(token, expires_on, token_type="Bearer", refresh_on=refresh_on)

    async def close(self) -> None:
        """Release the sandboxes at once; a call in progress finishes on its own."""
        self._sync.close()

    async def __aenter__(self) -> "StudioAzureCredBroker":
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()
