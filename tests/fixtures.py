"""fixtures -- the world the integration tests share: a test CA, the fake
upstream with three credentials, and gateways started on configs built here.
A test module takes it with `from fixtures import *` (setUpModule included)."""

import json
import os
import sys
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Gateway, free_port, ini  # noqa: E402

PERSONAL_KEY = "sk-test-personal-5b1c9e0d7a2f4c68"
PERSONAL_USER = "user-personal-1"
OAUTH_KEY = "oauth-test-token-e83f11aa90d2"
OAUTH_USER = "user-oauth-2"
ROTATED_KEY = "sk-test-rotated-77c0a4f1e2b3d5a9"
CLIENT_TOKEN = "client-token-reports-31f9c2"
OTHER_CLIENT_TOKEN = "client-token-billing-8d02aa"
SECRETS = [PERSONAL_KEY, OAUTH_KEY, ROTATED_KEY, CLIENT_TOKEN, OTHER_CLIENT_TOKEN]

state = {}


def setUpModule():
    state["tmp"] = gwtest.TempDir("gwtest-")
    tmp = state["tmp"].path
    state["ca"] = gwtest.TestCA(tmp)
    state["other_ca"] = gwtest.TestCA(tmp, "other")
    state["fake"] = gwtest.Fake(state["ca"], tmp, [
        ("personal", PERSONAL_KEY, PERSONAL_USER),
        ("personal", ROTATED_KEY, PERSONAL_USER),
        ("oauth", OAUTH_KEY, OAUTH_USER),
    ])
    key_file = os.path.join(tmp, "personal.key")
    with open(key_file, "w") as f:
        f.write(PERSONAL_KEY + "\n")
    os.chmod(key_file, 0o600)
    state["key_file"] = key_file


def tearDownModule():
    state["fake"].stop()
    state["tmp"].cleanup()


def base_settings(port, **overrides):
    settings = {
        "listen": "127.0.0.1:%d" % port,
        "upstream": state["fake"].url,
        "upstream_ca": state["ca"].ca_cert,
        "upstream_timeout": "5s",
        "access_log": "-",
    }
    settings.update(overrides)
    return [(k, v) for k, v in settings.items() if v is not None]


def credentials(personal_key_spec=None):
    return [
        ("credential default", [("user_id", PERSONAL_USER),
                                ("api_key", personal_key_spec or "file:" + state["key_file"]),
                                ("kind", "personal")]),
        ("credential team", [("user_id", OAUTH_USER), ("api_key", "env:TEST_OAUTH_KEY"),
                             ("kind", "oauth")]),
    ]


ENV = {"TEST_OAUTH_KEY": OAUTH_KEY}


def start_gateway(name, sections=None, extra_env=None, **overrides):
    port = free_port()
    text = ini(base_settings(port, **overrides),
               credentials() if sections is None else sections)
    env = dict(ENV)
    env.update(extra_env or {})
    return Gateway(state["tmp"].path, text, name=name, env=env, port=port)


def q(export_id, **params):
    params = dict(params)
    params["data_export_id"] = export_id
    return "/export_status?" + urllib.parse.urlencode(params)


class GatewayCase(unittest.TestCase):
    """One gateway for the class; every test's logs are checked for secrets."""

    overrides = {}
    sections = None
    extra_env = None

    @classmethod
    def setUpClass(cls):
        cls.gw = start_gateway(cls.__name__, cls.sections, cls.extra_env, **cls.overrides)

    @classmethod
    def tearDownClass(cls):
        code = cls.gw.stop()
        logs = cls.gw.logs()
        for secret in SECRETS:
            assert secret not in logs, "a secret is in the logs of " + cls.__name__
        assert code == 0, "gateway exit code %s:\n%s" % (code, logs)

    def fake_stats(self):
        return state["fake"].stats()

    def assert_gateway_error(self, status_expected, code, response):
        status, headers, body = response
        self.assertEqual(status, status_expected, body)
        self.assertTrue(headers["content-type"].startswith("application/json"))
        document = json.loads(body)
        self.assertEqual(document["error"], code)
        self.assertIsInstance(document["message"], str)
        self.assertTrue(document["message"])
        for secret in SECRETS:
            self.assertNotIn(secret.encode(), body)
        return document


def metrics(gw):
    """GET /metrics parsed into {sample name with labels: value}."""
    status, headers, body = gw.request("GET", "/metrics")
    assert status == 200, (status, body)
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples, body.decode()


def gateway_with_own_fake(name, **overrides):
    """A gateway in front of a fake of its own, which a test may stop or freeze."""
    tmp = state["tmp"].path
    fake = gwtest.Fake(state["ca"], tmp, [("personal", PERSONAL_KEY, PERSONAL_USER)],
                       name="fake-" + name)
    port = free_port()
    text = ini(base_settings(port, upstream=fake.url, **overrides), credentials())
    return fake, Gateway(tmp, text, name=name, env=ENV, port=port)
