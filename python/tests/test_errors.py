"""Every error kind from Python: the original's exception type, ``.kind``,
``.status``, the component's message, and never a secret."""

import decimal
import json
import subprocess
import sys
from fractions import Fraction

import pytest

from vd_cred_broker import (
    BearerUnavailableError,
    BrokerFailedError,
    BrokerRejectedError,
    BrokerUnreachableError,
    ConfigurationError,
    CredentialError,
    InvalidResponseError,
    InvalidScopesError,
    ScopeNotAllowedError,
    StudioAzureCredBroker,
    UnsupportedOptionError,
)

VAULT = "https://vault.azure.net/.default"
SECRET_TOKEN = "eyJsecret-minted-token"


def check(excinfo, cls, base, kind, status=None, says=()):
    e = excinfo.value
    assert type(e) is cls
    assert isinstance(e, base) and isinstance(e, CredentialError)
    assert (e.kind, e.status) == (kind, status)
    for words in says:
        assert words in str(e), f"{words!r} not in {e}"
    return e


def test_missing_settings_fail_at_construction_naming_the_variable(env):
    env.delenv("VD_CREDENTIAL_BROKER_URL")
    with pytest.raises(ValueError) as excinfo:
        StudioAzureCredBroker()
    check(excinfo, ConfigurationError, ValueError, "configuration", says=["VD_CREDENTIAL_BROKER_URL"])


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": decimal.Decimal("10")}, "timeout"),
        ({"broker_url": "http://broker.example.com/api"}, "allow-insecure-http"),
        ({"audience_map": [("a", "b")]}, "audience_map"),
    ],
)
def test_bad_arguments_are_configuration_errors(env, kwargs, says):
    with pytest.raises(ValueError) as excinfo:
        StudioAzureCredBroker(**kwargs)
    check(excinfo, ConfigurationError, ValueError, "configuration", says=[says])


def test_a_timeout_is_any_real_number_of_seconds(env):
    """As the original's check (``numbers.Real``): a ``Fraction`` is one, a
    ``Decimal`` is not (above), and ``numbers`` is imported only to ask."""
    StudioAzureCredBroker(timeout=Fraction(5, 2))
    StudioAzureCredBroker(timeout=2.5)
    StudioAzureCredBroker(timeout=3)


def test_importing_the_package_does_not_import_numbers():
    code = (
        "import sys, azure.core.credentials; before = 'numbers' in sys.modules; "
        "import vd_cred_broker; print(before, 'numbers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # azure.core (pinned) does not import it either, so the check means something.
    assert out.stdout.split() == ["False", "False"], out.stdout


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"lane": "admin", "configuration_revision": 1}, "lane"),
        ({"lane": "user", "configuration_revision": -1}, "configuration_revision"),
        ({"lane": "user"}, "configuration"),
    ],
)
def test_lane_and_revision_are_checked_at_token_time(env, broker, kwargs, says):
    cred = StudioAzureCredBroker(**kwargs)
    with pytest.raises(ValueError) as excinfo:
        cred.get_token(VAULT)
    check(excinfo, ConfigurationError, ValueError, "configuration", says=[says])
    assert broker.requests() == []


def test_scopes(env, broker):
    cred = StudioAzureCredBroker()
    with pytest.raises(ValueError) as excinfo:
        cred.get_token()
    check(excinfo, InvalidScopesError, ValueError, "invalid-scopes")
    with pytest.raises(ValueError) as excinfo:
        cred.get_token("https://example.com/.default")
    e = check(excinfo, ScopeNotAllowedError, ValueError, "scope-not-allowed")
    assert e.scope == "https://example.com/.default"
    assert e.known_resources == [
        "https://analysis.windows.net/powerbi/api",
        "https://api.fabric.microsoft.com",
        "https://database.windows.net",
        "https://management.azure.com",
        "https://storage.azure.com",
        "https://vault.azure.net",
    ]
    with pytest.raises(ValueError) as excinfo:
        cred.get_token(VAULT, claims='{"access_token":{"nbf":{"essential":true}}}')
    check(excinfo, UnsupportedOptionError, ValueError, "unsupported", says=["claims"])
    assert broker.requests() == []


def test_the_bearer_file(env, broker, bearer):
    cred = StudioAzureCredBroker()
    bearer.write("  \n")
    with pytest.raises(RuntimeError) as excinfo:
        cred.get_token(VAULT)
    check(excinfo, BearerUnavailableError, RuntimeError, "bearer-unavailable", says=["empty"])
    bearer.path.unlink()
    with pytest.raises(RuntimeError) as excinfo:
        cred.get_token(VAULT)
    check(excinfo, BearerUnavailableError, RuntimeError, "bearer-unavailable", says=[str(bearer.path)])
    assert broker.requests() == []


@pytest.mark.parametrize(
    "status, cls, kind",
    [(401, BrokerRejectedError, "broker-rejected"), (403, BrokerRejectedError, "broker-rejected"),
     (404, BrokerFailedError, "broker-failed"), (400, BrokerFailedError, "broker-failed")],
)
def test_broker_statuses(env, broker, bearer, status, cls, kind):
    # The broker echoes the bearer and a token: neither may reach the message.
    broker.reply(status, json.dumps({"error": f"bad {bearer.value}", "access_token": SECRET_TOKEN}))
    with pytest.raises(RuntimeError) as excinfo:
        StudioAzureCredBroker().get_token(VAULT)
    e = check(excinfo, cls, RuntimeError, kind, status=status, says=[str(status)])
    assert bearer.value not in str(e) and SECRET_TOKEN not in str(e)


def test_a_transient_failure_is_retried_then_reported_with_its_status(env, broker):
    broker.default(503, '{"error":"busy"}')
    with pytest.raises(RuntimeError) as excinfo:
        StudioAzureCredBroker(timeout=60).get_token(VAULT)
    check(excinfo, BrokerFailedError, RuntimeError, "broker-failed", status=503, says=["4 attempts"])
    assert len(broker.requests()) == 4


@pytest.mark.parametrize(
    "body, says",
    [("not json", "JSON"), ('{"expires_in": 3600}', "access_token"), ('{"access_token": ""}', "access_token")],
)
def test_unusable_answers(env, broker, body, says):
    broker.reply(200, body)
    with pytest.raises(RuntimeError) as excinfo:
        StudioAzureCredBroker().get_token(VAULT)
    check(excinfo, InvalidResponseError, RuntimeError, "invalid-response", says=[says])


def test_an_unreachable_broker(env, broker, refused_port):
    url = f"http://127.0.0.1:{refused_port}/api"
    with pytest.raises(RuntimeError) as excinfo:
        StudioAzureCredBroker(broker_url=url, timeout=2).get_token(VAULT)
    check(excinfo, BrokerUnreachableError, RuntimeError, "broker-unreachable",
          says=[f"{url}/token failed: connection refused", "Studio running"])


def test_a_broker_that_never_answers_in_time(env, broker):
    broker.reply(200, json.dumps({"access_token": "late"}), delay_ms=60_000)
    with pytest.raises(RuntimeError) as excinfo:
        StudioAzureCredBroker(timeout=0.3).get_token(VAULT)
    check(excinfo, BrokerUnreachableError, RuntimeError, "broker-unreachable", says=["300 ms"])


def test_helper_refusals_and_absence(helper):
    helper.reply(403, json.dumps({"code": "forbidden", "message": "scope not in intent"}),
                 headers=[("x-runtime-access-error", "1")])
    cred = StudioAzureCredBroker()
    with pytest.raises(RuntimeError) as excinfo:
        cred.get_token(VAULT)
    check(excinfo, BrokerRejectedError, RuntimeError, "broker-rejected", status=403,
          says=["forbidden: scope not in intent"])
    helper.close()  # the socket file stays; nothing listens on it
    with pytest.raises(RuntimeError) as excinfo:
        cred.get_token(VAULT)
    check(excinfo, BrokerUnreachableError, RuntimeError, "broker-unreachable", says=["unavailable"])
