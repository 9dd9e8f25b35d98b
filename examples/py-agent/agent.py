"""A Python agent for the vd-cred-broker host, built with componentize-py.

It mints a token through the imported `vibedata:cred-broker/token-credential`
(linked by the host, or plugged in by composition) and answers with a summary
of it, never the token itself. A `result<_, credential-error>` of the import
arrives in Python as a raised `componentize_py_types.Err` whose `value` is one
of the generated `CredentialError_*` dataclasses; the export's own `err` is
an `Err(str)` raised back.
"""

from componentize_py_types import Err

import wit_world
from wit_world.imports.token_credential import (
    BrokerFailure,
    Credential,
    CredentialError,
    CredentialError_BrokerFailed,
    CredentialError_BrokerRejected,
    CredentialError_ScopeNotAllowed,
    CredentialOptions,
    ScopeNotAllowed,
)

# Everything unset: a host-linked credential takes its settings from the host
# (an agent may set only `timeout_ms` and `disable_cache`).
OPTIONS = CredentialOptions(
    broker_url=None,
    credential_file=None,
    timeout_ms=None,
    audience_map=[],
    allow_insecure_http=False,
    disable_cache=False,
    lane=None,
    configuration_revision=None,
    runtime_access_url=None,
)


def case_name(error: CredentialError) -> str:
    """The WIT case name: `CredentialError_ScopeNotAllowed` -> `scope-not-allowed`."""
    name = type(error).__name__.removeprefix("CredentialError_")
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")


def render(error: CredentialError) -> str:
    """`<case>: <payload>`, the payload as Python shows it."""
    match error:
        case CredentialError_ScopeNotAllowed(ScopeNotAllowed(scope, known_resources)):
            detail = f"{scope!r} is not allowed; known_resources={known_resources!r}"
        case CredentialError_BrokerRejected(BrokerFailure(status, text)) | CredentialError_BrokerFailed(
            BrokerFailure(status, text)
        ):
            detail = f"HTTP {status}: {text!r}"
        case _:
            detail = error.value  # every other case carries a sentence
    return f"{case_name(error)}: {detail}"


class WitWorld(wit_world.WitWorld):
    def mint(self, scopes: list[str]) -> str:
        try:
            with Credential.open(OPTIONS) as credential:
                token = credential.get_token(scopes)
        except Err as e:
            raise Err(render(e.value))
        return f"token of {len(token.token)} chars, expires_on {token.expires_on}"
