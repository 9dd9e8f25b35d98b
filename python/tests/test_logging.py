"""Logging through ``logging.getLogger("vd_cred_broker")`` as azure-identity
logs its credentials: ``"<Class>.<method> succeeded"`` at INFO, ``"<Class>.
<method> failed: <error>"`` at WARNING (both at DEBUG within a credential
chain), here with the error's kind; never the token or the bearer."""

import logging

import pytest
from azure.core.credentials import AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ChainedTokenCredential
from azure.identity._internal.get_token_mixin import GetTokenMixin

import vd_cred_broker
from vd_cred_broker import StudioAzureCredBroker, aio
from vd_cred_broker._credential import _described

VAULT = "https://vault.azure.net/.default"
LOGGER = "vd_cred_broker"


def ours(caplog):
    return [r for r in caplog.records if r.name == LOGGER]


def assert_no_secret(caplog, *secrets):
    """No record, formatted with its traceback, holds a secret or a bearer."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert text
    for secret in (*secrets, "vd_iat_", "Bearer "):
        assert secret not in text, (secret, text)


class AzureStub(GetTokenMixin):
    """An azure-identity credential (its own GetTokenMixin) that succeeds
    or fails on demand: the reference for the records' format."""

    def __init__(self, error=None):
        super().__init__()
        self.error = error

    def _acquire_token_silently(self, *scopes, **kwargs):
        return None

    def _request_token(self, *scopes, **kwargs):
        if self.error:
            raise self.error
        return AccessTokenInfo("stub-token", 2**31)


def azure_records(caplog, credential, method):
    caplog.clear()
    try:
        getattr(credential, method)(VAULT)
    except Exception:
        pass
    [record] = [r for r in caplog.records if r.name.startswith("azure.identity")]
    caplog.clear()
    return record


@pytest.mark.parametrize("method", ["get_token", "get_token_info"])
def test_success_is_logged_at_info_in_azure_identitys_words(env, broker, bearer, caplog, method):
    caplog.set_level(logging.INFO)
    reference = azure_records(caplog, AzureStub(), method)
    broker.token("secret-token-1")
    token = getattr(StudioAzureCredBroker(), method)(VAULT)
    assert token.token == "secret-token-1"
    [record] = ours(caplog)
    assert record.levelno == logging.INFO == reference.levelno
    assert record.getMessage() == f"StudioAzureCredBroker.{method} succeeded"
    # The same format as azure-identity's, with our class name.
    assert record.msg == reference.msg
    assert record.getMessage() == reference.msg % ("StudioAzureCredBroker", method)
    assert reference.getMessage() == f"AzureStub.{method} succeeded"
    assert_no_secret(caplog, bearer.value, "secret-token-1")


@pytest.mark.parametrize("method", ["get_token", "get_token_info"])
def test_failure_is_a_warning_with_the_errors_kind(env, broker, bearer, caplog, method):
    caplog.set_level(logging.INFO)
    reference = azure_records(caplog, AzureStub(ClientAuthenticationError("no")), method)
    broker.reply(401, '{"error":"intent expired"}')
    with pytest.raises(vd_cred_broker.BrokerRejectedError) as raised:
        getattr(StudioAzureCredBroker(), method)(VAULT)
    [record] = ours(caplog)
    assert record.levelno == logging.WARNING == reference.levelno
    assert record.msg == reference.msg == "%s.%s failed: %s"
    expected = reference.msg % ("StudioAzureCredBroker", method, f"[broker-rejected] {raised.value}")
    assert record.getMessage() == expected
    assert record.getMessage().startswith(
        f"StudioAzureCredBroker.{method} failed: [broker-rejected] the credential broker rejected"
    )
    assert record.vd_error_kind == "broker-rejected"
    assert record.vd_status == 401
    # As azure-identity: the traceback only when DEBUG is enabled.
    assert record.exc_info is None or record.exc_info is False
    assert_no_secret(caplog, bearer.value)


def test_with_debug_enabled_a_failure_carries_its_traceback(env, broker, bearer, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    broker.reply(503, "")
    broker.reply(503, "")
    broker.reply(503, "")
    broker.default(503, "")
    with pytest.raises(vd_cred_broker.BrokerFailedError):
        StudioAzureCredBroker(timeout=1).get_token(VAULT)
    [record] = ours(caplog)
    assert record.levelno == logging.WARNING
    assert record.exc_info and record.exc_info[0] is vd_cred_broker.BrokerFailedError
    assert record.vd_error_kind == "broker-failed" and record.vd_status == 503
    assert "[broker-failed]" in record.getMessage()
    assert_no_secret(caplog, bearer.value)


def test_an_argument_error_is_logged_with_its_kind(env, broker, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(vd_cred_broker.ConfigurationError):
        StudioAzureCredBroker().get_token(42)
    [record] = ours(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        "StudioAzureCredBroker.get_token failed: [configuration] scopes must be strings"
    )
    assert record.vd_error_kind == "configuration"


def test_within_a_credential_chain_the_records_are_debug(env, broker, bearer, caplog):
    """ChainedTokenCredential logs the outcome itself, so a credential in it
    logs at DEBUG (azure-identity's own credentials do the same)."""
    caplog.set_level(logging.DEBUG)
    broker.token("chained-token")
    chain = ChainedTokenCredential(StudioAzureCredBroker())
    assert chain.get_token(VAULT).token == "chained-token"
    [record] = ours(caplog)
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "StudioAzureCredBroker.get_token succeeded"
    chained = [r for r in caplog.records if r.name.startswith("azure.identity")]
    assert any("StudioAzureCredBroker" in r.getMessage() for r in chained), chained
    # Outside the chain again: INFO.
    caplog.clear()
    StudioAzureCredBroker().get_token(VAULT)
    assert [r.levelno for r in ours(caplog)] == [logging.INFO]
    assert_no_secret(caplog, bearer.value, "chained-token")


@pytest.mark.asyncio
async def test_the_async_credential_logs_the_same_way(env, broker, bearer, caplog):
    caplog.set_level(logging.INFO)
    broker.token("async-token")
    async with aio.StudioAzureCredBroker() as cred:
        assert (await cred.get_token_info(VAULT)).token == "async-token"
        broker.reply(403, "")
        with pytest.raises(vd_cred_broker.BrokerRejectedError):
            await cred.get_token("https://storage.azure.com/.default")
    succeeded, failed = ours(caplog)
    assert (succeeded.levelno, succeeded.getMessage()) == (
        logging.INFO,
        "StudioAzureCredBroker.get_token_info succeeded",
    )
    assert failed.levelno == logging.WARNING
    assert failed.getMessage().startswith(
        "StudioAzureCredBroker.get_token failed: [broker-rejected] "
    )
    assert failed.vd_error_kind == "broker-rejected" and failed.vd_status == 403
    assert_no_secret(caplog, bearer.value, "async-token")


def test_a_url_in_an_error_loses_its_user_info_and_query():
    error = vd_cred_broker.ConfigurationError(
        'the broker URL "https://user:pw@broker.example/api?sig=SECRET#frag" (the broker_url '
        "option) has a query (?...); expected e.g. \"https://broker.example/api\""
    )
    described = _described(error)
    assert described.startswith("[configuration] the broker URL \"https://...@broker.example/api?...\"")
    for secret in ("user:pw", "SECRET", "frag"):
        assert secret not in described
    assert "has a query (?...)" in described
    assert _described(ValueError("plain")) == "[ValueError] plain"
