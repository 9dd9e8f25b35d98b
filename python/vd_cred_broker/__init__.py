"""VibeData Studio's Azure ``TokenCredential``, run as a sandboxed WebAssembly component.

A drop-in for ``vibedata_studio_azure_cred_broker``::

    from vd_cred_broker import StudioAzureCredBroker
    credential = StudioAzureCredBroker()       # VD_CREDENTIAL_BROKER_URL, VD_CREDENTIAL_FILE
    token = credential.get_token("https://vault.azure.net/.default")

``vd_cred_broker.aio.StudioAzureCredBroker`` is the asyncio twin.
"""

from . import errors
from ._credential import StudioAzureCredBroker, preload
from .errors import *  # noqa: F403 (the exception types, listed in errors.__all__)

__version__ = "0.1.0"

__all__ = ["StudioAzureCredBroker", "preload", *errors.__all__]
