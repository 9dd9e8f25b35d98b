"""``StudioAzureCredBroker`` for asyncio: an ``AsyncTokenCredential``.

Each call runs the synchronous credential in the loop's default executor (it
releases the GIL while it waits on the broker), so it never blocks the event
loop. Use it with the ``.aio`` Azure SDK clients and adlfs.
"""

import asyncio
import functools
from typing import Any, Dict, Mapping, Optional

from azure.core.credentials import AccessToken, AccessTokenInfo

from ._credential import StudioAzureCredBroker as _SyncCredential

__all__ = ["StudioAzureCredBroker"]


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

    @property
    def mode(self) -> str:
        return self._sync.mode

    async def _run(self, f, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(f, *args, **kwargs))

    async def get_token(
        self,
        *scopes: str,
        claims: Optional[str] = None,
        tenant_id: Optional[str] = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        return await self._run(
            self._sync.get_token, *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae
        )

    async def get_token_info(
        self, *scopes: str, options: Optional[Dict[str, Any]] = None
    ) -> AccessTokenInfo:
        return await self._run(self._sync.get_token_info, *scopes, options=options)

    async def close(self) -> None:
        self._sync.close()

    async def __aenter__(self) -> "StudioAzureCredBroker":
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()
