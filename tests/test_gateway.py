"""Integration tests for the gateway core: the built daemon and the fake upstream
on loopback, driven through real sockets. Run by `make check` (TAP)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from fixtures import *  # noqa: E402,F401,F403 (setUpModule, state, q, GatewayCase, ...)
from gwtest import Gateway, free_port, ini, raw_exchange, wait_for  # noqa: E402

class TestRelay(GatewayCase):
    def test_healthz(self):
        status, headers, body = self.gw.get_json("/healthz")
        self.assertEqual((status, body), (200, {"status": "ok"}))

    def test_status_body_and_type_passed_through(self):
        export_id = "relay1;states=IN_PROGRESS"
        status, headers, body = self.gw.request("GET", q(export_id))
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        direct = state["fake"].get_direct(
            urllib.parse.urlencode({"user_id": PERSONAL_USER, "data_export_id": export_id}),
            {"Authorization": "Bearer " + PERSONAL_KEY, "x-auth-key": PERSONAL_USER})
        self.assertEqual(direct[0], 200)
        self.assertEqual(body, direct[2])
        self.assertEqual(json.loads(body)["state"], "IN_PROGRESS")

    def test_personal_credential_injected_and_client_headers_dropped(self):
        export_id = "inject;states=REQUESTED"
        status, _, _ = self.gw.request("GET", q(export_id, foo="bar", api_key="x"), {
            "Authorization": "Bearer client-supplied",
            "X-Auth-Key": "someone-else",
            "Cookie": "session=abc",
            "X-Custom": "1",
        })
        self.assertEqual(status, 200)
        last = self.fake_stats()["last"]
        self.assertEqual(last["headers"]["authorization"], "Bearer " + PERSONAL_KEY)
        self.assertEqual(last["headers"]["x-auth-key"], PERSONAL_USER)
        for dropped in ("cookie", "x-custom"):
            self.assertNotIn(dropped, last["headers"])
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(last["uri"]).query)
        self.assertEqual(query, {"user_id": [PERSONAL_USER], "data_export_id": [export_id]})
        self.assertTrue(urllib.parse.urlsplit(last["uri"]).path.endswith("/api/v1/export_status"))

    def test_oauth_credential_selected_by_user_id(self):
        status, _, body = self.gw.get_json(q("oauth1;states=REQUESTED", user_id=OAUTH_USER))
        self.assertEqual(status, 200, body)
        last = self.fake_stats()["last"]
        self.assertEqual(last["headers"]["authorization"], "Bearer " + OAUTH_KEY)
        self.assertNotIn("x-auth-key", last["headers"])

    def test_unknown_user_id_is_403(self):
        self.assert_gateway_error(403, "forbidden",
                                  self.gw.request("GET", q("x", user_id="nobody")))

    def test_export_id_is_url_encoded_upstream(self):
        export_id = "we/ird?id&x=1#frag%41;states=COMPLETED"
        status, _, body = self.gw.get_json(q(export_id))
        self.assertEqual(status, 200)
        self.assertEqual(body["data_export_id"], export_id)
        self.assertEqual(body["state"], "COMPLETED")
        self.assertIn(export_id, self.fake_stats()["by_id"])

    def test_download_false_is_not_forwarded_and_true_is(self):
        self.gw.request("GET", q("dl0;states=REQUESTED", download="false"))
        self.assertNotIn("download", self.fake_stats()["last"]["uri"])
        status, headers, body = self.gw.request("GET", q("dl1;states=REQUESTED", download="1"))
        self.assertIn("download=true", self.fake_stats()["last"]["uri"])
        self.assertEqual(json.loads(body)["state"], "REQUESTED")

    def test_small_csv_download_is_relayed(self):
        status, headers, body = self.gw.request(
            "GET", q("csv1;states=COMPLETED;csv=1000", download="true"))
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/csv")
        self.assertEqual(len(body), 1000)
        self.assertEqual(body[:32], b"0000000000,abcdefghijklmnopqrst\n")

    def test_head_has_get_headers_and_no_body(self):
        export_id = "head1;states=FAILED"
        get = self.gw.request("GET", q(export_id))
        conn = self.gw.connection()
        conn.request("HEAD", q(export_id))
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, b"")
        self.assertEqual(resp.getheader("Content-Length"), str(len(get[2])))
        self.assertEqual(resp.getheader("Content-Type"), "application/json")
        self.assertEqual(self.fake_stats()["last"]["method"], "GET")

    def test_upstream_connections_are_reused(self):
        self.gw.request("GET", q("reuse0;states=REQUESTED"))
        before = self.fake_stats()["connections"]
        for i in range(5):
            self.assertEqual(self.gw.request("GET", q("reuse%d;states=REQUESTED" % i))[0], 200)
        # +1: the /_stats call itself is a new connection to the fake
        self.assertEqual(self.fake_stats()["connections"], before + 1)

    def test_slow_upstream_does_not_block_other_requests(self):
        results = {}

        def slow():
            results["slow"] = self.gw.request("GET", q("slow;states=REQUESTED;delay=1500"))
        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.2)
        started = time.monotonic()
        status, _, _ = self.gw.request("GET", q("fast;states=REQUESTED"))
        fast_time = time.monotonic() - started
        thread.join()
        self.assertEqual(status, 200)
        self.assertLess(fast_time, gwtest.SLACK)
        self.assertEqual(results["slow"][0], 200)

    def test_client_gone_while_waiting_aborts_upstream(self):
        before = self.fake_stats()["client_aborts"]
        with socket.create_connection(("127.0.0.1", self.gw.port)) as s:
            s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" %
                       q("gone;states=REQUESTED;delay=3000")).encode())
            time.sleep(0.3)
        wait_for(lambda: self.fake_stats()["client_aborts"] > before, timeout=2.5,
                 what="the upstream transfer to be aborted")
        self.assertEqual(self.gw.request("GET", "/healthz")[0], 200)

    def test_access_log_names_request_not_query(self):
        self.gw.request("GET", q("logged;states=REQUESTED", user_id=PERSONAL_USER))
        time.sleep(1.2)  # the access log is flushed every second
        lines = [l for l in self.gw.logs().splitlines() if "logged;states" in l]
        self.assertTrue(lines)
        self.assertIn('"GET /export_status" 200', lines[-1])
        self.assertIn("credential=default", lines[-1])
        self.assertNotIn(PERSONAL_USER, lines[-1])


class TestUpstreamAnswers(GatewayCase):
    overrides = {"upstream_timeout": "3s"}

    def test_error_statuses_passed_through(self):
        for code in (400, 403, 404, 500, 503):
            status, headers, body = self.gw.request("GET", q("e;status=%d" % code))
            self.assertEqual(status, code)
            self.assertEqual(json.loads(body), {"error": "scripted %d" % code})
            self.assertEqual(headers["content-type"], "application/json")

    def test_upstream_401_is_502_upstream_auth_and_logged(self):
        self.assert_gateway_error(502, "upstream_auth", self.gw.request("GET", q("a;status=401")))
        self.assertIn("rejected credential 'default' with 401", self.gw.logs())

    def test_redirect_is_not_followed(self):
        for code in (301, 302, 307):
            self.assert_gateway_error(502, "upstream_redirect",
                                      self.gw.request("GET", q("r;status=%d" % code)))

    def test_invalid_json_is_502(self):
        for body in ("invalid", "html"):
            self.assert_gateway_error(502, "upstream_invalid",
                                      self.gw.request("GET", q("b;body=" + body)))

    def test_body_over_1_mib_is_502(self):
        self.assert_gateway_error(502, "upstream_too_large",
                                  self.gw.request("GET", q("big;body=big")))

    def test_timeout_is_504(self):
        started = time.monotonic()
        self.assert_gateway_error(504, "upstream_timeout",
                                  self.gw.request("GET", q("t;states=REQUESTED;delay=10000")))
        self.assertLess(time.monotonic() - started, 3 + 2 * gwtest.SLACK)

    def test_closed_before_headers_is_502(self):
        self.assert_gateway_error(502, "upstream_error", self.gw.request("GET", q("c;close=1")))


class TestUpstreamUnreachable(unittest.TestCase):
    def check(self, name, code, **overrides):
        gw = start_gateway(name, **overrides)
        try:
            self.assertEqual(gw.request("GET", q("u;states=REQUESTED"))[0], 502)
            status, _, body = gw.get_json(q("u;states=REQUESTED"))
            self.assertEqual(body["error"], code)
        finally:
            self.assertEqual(gw.stop(), 0)

    def test_connection_refused_is_502(self):
        self.check("refused", "upstream_unreachable",
                   upstream="https://127.0.0.1:%d/api/v1" % free_port())

    def test_untrusted_certificate_is_502(self):
        self.check("untrusted", "upstream_unreachable", upstream_ca=state["other_ca"].ca_cert)

    def test_system_store_does_not_trust_test_ca(self):
        self.check("systemstore", "upstream_unreachable", upstream_ca=None)


class TestValidation(GatewayCase):
    def test_missing_id(self):
        self.assert_gateway_error(400, "bad_request", self.gw.request("GET", "/export_status"))

    def test_bad_values(self):
        for path in ("/export_status?data_export_id=a&data_export_id=b",
                     "/export_status?data_export_id=a&download=yes",
                     "/export_status?data_export_id=a%00b",
                     "/export_status?data_export_id=a%zz",
                     "/export_status?data_export_id=caf%C3%A9",
                     "/export_status?data_export_id=a%20b",
                     "/export_status?data_export_id=" + "x" * 257):
            self.assert_gateway_error(400, "bad_request", self.gw.request("GET", path))
        self.assertEqual(self.fake_stats()["by_id"].get("a"), None)

    def test_methods(self):
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            status, headers, body = self.gw.request(method, q("m"))
            self.assertEqual(status, 405, method)
            self.assertEqual(headers["allow"], "GET, HEAD")
            self.assertEqual(json.loads(body)["error"], "method_not_allowed")

    def test_other_paths_404(self):
        for path in ("/", "/export_status/x", "/api/v1/export_status", "/metricsx"):
            self.assert_gateway_error(404, "not_found", self.gw.request("GET", path))

    def test_request_line_over_8k_is_414(self):
        self.assert_gateway_error(414, "uri_too_long",
                                  self.gw.request("GET", q("y" * 9000)))

    def test_headers_over_16k_is_431(self):
        headers = {"X-Filler-%d" % i: "v" * 1000 for i in range(20)}
        self.assert_gateway_error(431, "headers_too_large",
                                  self.gw.request("GET", q("h"), headers))

    def test_body_on_get_is_400(self):
        conn = self.gw.connection()
        conn.request("GET", q("body;states=REQUESTED"), body=b"hello")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 400)
        self.assertEqual(json.loads(resp.read())["error"], "bad_request")
        conn.close()

    def test_garbage_then_still_serving(self):
        for data in (b"\x00\x01\x02 garbage\r\n\r\n", b"GET\r\n\r\n",
                     b"GET /export_status?data_export_id=x HTTP/9.9\r\n\r\n"):
            reply = raw_exchange("127.0.0.1", self.gw.port, data, timeout=2)
            self.assertTrue(reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:80])
        self.assertEqual(self.gw.request("GET", "/healthz")[0], 200)


class TestAccessControl(GatewayCase):
    @classmethod
    def setUpClass(cls):
        ENV["TEST_BILLING_TOKEN"] = OTHER_CLIENT_TOKEN
        cls.sections = credentials() + [
            ("client reports", [("token", CLIENT_TOKEN), ("credentials", "default")]),
            ("client billing", [("token", "env:TEST_BILLING_TOKEN"),
                                ("credentials", "team, default")]),
        ]
        super().setUpClass()

    def test_token_required(self):
        status, headers, _ = self.gw.request("GET", q("tok;states=REQUESTED"))
        self.assertEqual(status, 401)
        self.assertTrue(headers["www-authenticate"].startswith("Bearer"))
        self.assert_gateway_error(401, "unauthorized", self.gw.request(
            "GET", q("tok"), {"Authorization": "Bearer " + CLIENT_TOKEN + "x"}))

    def test_each_client_gets_its_grants(self):
        reports = {"Authorization": "Bearer " + CLIENT_TOKEN}
        billing = {"Authorization": "Bearer " + OTHER_CLIENT_TOKEN}
        self.assertEqual(self.gw.request("GET", q("g;states=REQUESTED"), reports)[0], 200)
        self.assertEqual(self.fake_stats()["last"]["headers"]["authorization"],
                         "Bearer " + PERSONAL_KEY)
        self.assert_gateway_error(403, "forbidden", self.gw.request(
            "GET", q("g", user_id=OAUTH_USER), reports))
        self.assertEqual(self.gw.request("GET", q("g;states=REQUESTED"), billing)[0], 200)
        self.assertEqual(self.fake_stats()["last"]["headers"]["authorization"],
                         "Bearer " + OAUTH_KEY)
        self.assertEqual(self.gw.request("GET", q("g;states=REQUESTED", user_id=PERSONAL_USER),
                                         billing)[0], 200)


class TestAllowlist(GatewayCase):
    overrides = {"allow": "10.0.0.0/8, 192.168.0.0/16"}

    @classmethod
    def setUpClass(cls):
        port = free_port()
        text = ini(base_settings(port, allow=cls.overrides["allow"]), credentials())
        cls.gw = Gateway(state["tmp"].path, text, name=cls.__name__, env=ENV, port=port,
                         wait=False)
        wait_for(lambda: "started" in cls.gw.logs(), what="the gateway to start")

    def test_denied_address_gets_403_before_anything(self):
        before = self.fake_stats()["requests"]
        for path in ("/healthz", q("deny;states=REQUESTED"), "/nothing"):
            self.assert_gateway_error(403, "forbidden", self.gw.request("GET", path))
        self.assertEqual(self.fake_stats()["requests"], before)


class TestMetrics(GatewayCase):
    FAMILIES = ("requests_total", "cache_total", "upstream_requests_total",
                "upstream_duration_seconds", "downloads_active", "downloads_total",
                "download_bytes_total", "connections_open", "config_reloads_total")

    def test_every_family_present_from_start(self):
        samples, text = metrics(self.gw)
        for name in self.FAMILIES:
            self.assertIn("# TYPE gumloop_gateway_%s " % name, text)
        for result in ("hit", "miss", "coalesced", "stale"):
            self.assertIn('gumloop_gateway_cache_total{result="%s"}' % result, samples)
        self.assertIn('gumloop_gateway_config_reloads_total{result="failed"}', samples)
        for secret in SECRETS + [PERSONAL_USER, OAUTH_USER]:
            self.assertNotIn(secret, text)

    def test_requests_cache_and_upstream_counted(self):
        before, _ = metrics(self.gw)
        export_id = "metrics1;states=REQUESTED"
        self.gw.request("GET", q(export_id))
        self.gw.request("GET", q(export_id))
        self.gw.request("GET", q("metrics2;status=500"))
        self.gw.request("GET", "/nowhere")
        after, _ = metrics(self.gw)

        def delta(name):
            return after.get(name, 0) - before.get(name, 0)
        self.assertEqual(delta('gumloop_gateway_requests_total{route="export_status",code="200"}'), 2)
        self.assertEqual(delta('gumloop_gateway_requests_total{route="export_status",code="500"}'), 1)
        self.assertEqual(delta('gumloop_gateway_requests_total{route="other",code="404"}'), 1)
        self.assertEqual(delta('gumloop_gateway_cache_total{result="hit"}'), 1)
        self.assertEqual(delta('gumloop_gateway_cache_total{result="miss"}'), 2)
        self.assertEqual(delta('gumloop_gateway_upstream_requests_total{code="200"}'), 1)
        self.assertEqual(delta('gumloop_gateway_upstream_requests_total{code="500"}'), 1)
        self.assertEqual(delta("gumloop_gateway_upstream_duration_seconds_count"), 2)
        self.assertEqual(after['gumloop_gateway_upstream_duration_seconds_bucket{le="+Inf"}'],
                         after["gumloop_gateway_upstream_duration_seconds_count"])

    def test_open_connections_gauge(self):
        def gauge():
            return metrics(self.gw)[0]["gumloop_gateway_connections_open"]
        # the connection asking for /metrics is open while it is answered: 1, not 0
        wait_for(lambda: gauge() == 1, timeout=5, what="no other connection open")
        idle = [socket.create_connection(("127.0.0.1", self.gw.port)) for _ in range(3)]
        used = self.gw.connection()
        used.request("GET", "/healthz")
        used.getresponse().read()
        try:
            # the 3 silent ones, the used keep-alive one and the asking one
            wait_for(lambda: gauge() == 5, timeout=5, what="5 open connections")
        finally:
            for s in idle:
                s.close()
            used.close()
        wait_for(lambda: gauge() == 1, timeout=5, what="the gauge back at 1")


class TestMetricsAccess(GatewayCase):
    overrides = {"allow": "10.0.0.0/8", "admin_allow": "127.0.0.1/32"}

    @classmethod
    def setUpClass(cls):
        port = free_port()
        text = ini(base_settings(port, **cls.overrides), credentials())
        cls.gw = Gateway(state["tmp"].path, text, name=cls.__name__, env=ENV, port=port,
                         wait=False)
        wait_for(lambda: "started" in cls.gw.logs(), what="the gateway to start")

    def test_metrics_follow_admin_allow_not_allow(self):
        self.assert_gateway_error(403, "forbidden", self.gw.request("GET", "/healthz"))
        samples, _ = metrics(self.gw)
        self.assertEqual(samples['gumloop_gateway_requests_total{route="healthz",code="403"}'], 1)

    def test_metrics_refused_outside_admin_allow(self):
        port = free_port()
        text = ini(base_settings(port, admin_allow="10.0.0.0/8"), credentials())
        gw = Gateway(state["tmp"].path, text, name="metricsdenied", env=ENV, port=port)
        try:
            self.assert_gateway_error(403, "forbidden", gw.request("GET", "/metrics"))
            self.assertEqual(gw.request("GET", "/healthz")[0], 200)
        finally:
            self.assertEqual(gw.stop(), 0)


class TestIPv6AndSeveralListeners(unittest.TestCase):
    def test_listens_on_v4_and_v6(self):
        try:
            v6_port = free_port("::1")
        except OSError:
            self.skipTest("no IPv6 loopback here")
        port = free_port()
        text = ini(base_settings(port, allow="127.0.0.0/8 ::1/128") +
                   [("listen", "[::1]:%d" % v6_port)], credentials())
        gw = Gateway(state["tmp"].path, text, name="ipv6", env=ENV, port=port)
        try:
            self.assertEqual(gw.request("GET", q("v6;states=REQUESTED"), host="::1",
                                        port=v6_port)[0], 200)
            self.assertEqual(gw.request("GET", q("v4;states=REQUESTED"))[0], 200)
        finally:
            self.assertEqual(gw.stop(), 0)


class TestCommandLine(unittest.TestCase):
    def run_gateway(self, *args, env=None):
        environment = dict(os.environ)
        environment.update(env or {})
        return subprocess.run([gwtest.GATEWAY_BIN] + list(args), capture_output=True,
                              text=True, env=environment, timeout=30)

    def write(self, name, text):
        path = os.path.join(state["tmp"].path, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_version(self):
        result = self.run_gateway("-V")
        self.assertEqual(result.returncode, 0)
        self.assertRegex(result.stdout, r"^gumloop-gateway \d+\.\d+\.\d+")

    def test_check_ok(self):
        path = self.write("check-ok.conf", ini(base_settings(8080), credentials()))
        result = self.run_gateway("-t", "-c", path, env=ENV)
        self.assertEqual((result.returncode, result.stdout), (0, "config ok\n"), result.stderr)

    def test_check_reports_file_line_key(self):
        path = self.write("check-bad.conf", ini(base_settings(8080, upstream_timeout="soon"),
                                                credentials()))
        result = self.run_gateway("-t", "-c", path, env=ENV)
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("config ok", result.stdout)
        self.assertRegex(result.stderr, r"%s:\d+: upstream_timeout: " % path)

    def test_check_resolves_secrets(self):
        path = self.write("check-secret.conf", ini(base_settings(8080), credentials()))
        result = self.run_gateway("-t", "-c", path, env={"TEST_OAUTH_KEY": ""})
        self.assertEqual(result.returncode, 1)
        self.assertIn("TEST_OAUTH_KEY", result.stderr)

    def test_check_loads_the_tls_files(self):
        key = self.write("check-tls.key", "not a key\n")
        os.chmod(key, 0o600)
        settings = base_settings(8080, tls_cert=state["ca"].cert, tls_key=key) + [
            ("listen", "127.0.0.1:8443 tls")]
        result = self.run_gateway("-t", "-c", self.write("check-tls.conf", ini(settings,
                                                                               credentials())),
                                  env=ENV)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertNotIn("config ok", result.stdout)
        self.assertIn(key, result.stderr)
        with open(state["ca"].key) as src:
            with open(key, "w") as dst:
                dst.write(src.read())
        result = self.run_gateway("-t", "-c", self.write("check-tls.conf", ini(settings,
                                                                               credentials())),
                                  env=ENV)
        self.assertEqual((result.returncode, result.stdout), (0, "config ok\n"), result.stderr)

    def test_bad_config_does_not_start(self):
        path = self.write("start-bad.conf", "listen = nowhere\n")
        result = self.run_gateway("-c", path, env=ENV)
        self.assertEqual(result.returncode, 1)
        self.assertIn("%s:1: listen: " % path, result.stderr)

    def test_insecure_secret_file_warns(self):
        key_file = self.write("loose.key", PERSONAL_KEY + "\n")
        os.chmod(key_file, 0o644)
        path = self.write("loose.conf", ini(base_settings(8080),
                                             credentials("file:" + key_file)))
        result = self.run_gateway("-t", "-c", path, env=ENV)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("readable by group or others", result.stderr)
        self.assertNotIn(PERSONAL_KEY, result.stderr + result.stdout)


class TestSignals(unittest.TestCase):
    def test_sigterm_drains_in_flight_requests(self):
        gw = start_gateway("drain", drain_timeout="10s")
        results = {}

        def slow():
            results["slow"] = gw.request("GET", q("drain;states=IN_PROGRESS;delay=2500"))
        self.assertEqual(gw.request("GET", "/readyz")[:3:2], (200, b'{"status":"ready"}'))
        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)
        gw.signal(signal.SIGTERM)
        # the listener stays open while the request drains: the load balancer
        # sees /readyz 503, new work is refused to be retried elsewhere
        wait_for(lambda: gw.request("GET", "/readyz")[0] == 503, timeout=2 * gwtest.SLACK,
                 what="/readyz 503 while draining")
        status, headers, body = gw.request("GET", "/readyz")
        self.assertEqual((headers["content-type"], json.loads(body)),
                         ("application/json", {"status": "draining"}))
        self.assertEqual(headers.get("connection"), "close")
        self.assertEqual(gw.request("GET", "/healthz")[0], 200)
        status, headers, body = gw.request("GET", q("drain-new;states=REQUESTED"))
        self.assertEqual((status, json.loads(body)["error"]), (503, "draining"), body)
        self.assertEqual((headers["retry-after"], headers.get("connection")), ("1", "close"))
        self.assertEqual(gw.request("GET", "/metrics")[0], 200)
        self.assertNotIn("slow", results)
        thread.join()
        self.assertEqual(results["slow"][0], 200)
        self.assertEqual(json.loads(results["slow"][2])["state"], "IN_PROGRESS")
        self.assertEqual(gw.proc.wait(10), 0)
        self.assertTrue(self._refused(gw.port), "still accepting after the drain ended")
        self.assertEqual(state["fake"].stats()["by_id"].get("drain-new;states=REQUESTED"), None)
        gw.stop()

    def test_drain_timeout_bounds_the_wait(self):
        gw = start_gateway("draintimeout", drain_timeout="300ms", upstream_timeout="20s")
        thread = threading.Thread(target=lambda: self._ignore(
            gw.request, "GET", q("stuck;states=REQUESTED;delay=5000")))
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        self.assertEqual(gw.proc.wait(10), 0)
        self.assertLess(time.monotonic() - started, 3)
        thread.join()
        gw.stop()

    @staticmethod
    def _refused(port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return False
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            # a connect that landed in the backlog of the socket being closed
            return False

    @staticmethod
    def _ignore(function, *args):
        try:
            function(*args)
        except OSError:
            pass

    def test_sighup_rotates_key_and_keeps_listener(self):
        tmp = state["tmp"].path
        key_file = os.path.join(tmp, "rotating.key")
        with open(key_file, "w") as f:
            f.write(PERSONAL_KEY)
        os.chmod(key_file, 0o600)
        port = free_port()
        sections = credentials("file:" + key_file)
        gw = Gateway(tmp, ini(base_settings(port), sections), name="rotate", env=ENV, port=port)
        try:
            keep = gw.connection()
            keep.request("GET", q("rot;states=REQUESTED"))
            self.assertEqual(keep.getresponse().read() and 200, 200)
            with open(key_file, "w") as f:
                f.write(ROTATED_KEY + "\n")
            extra_port = free_port()
            gw.reload(ini(base_settings(port) + [("listen", "127.0.0.1:%d" % extra_port)],
                          sections), expect="is in force")
            keep.request("GET", q("rot2;states=REQUESTED"))
            self.assertEqual(keep.getresponse().status, 200)
            keep.close()
            self.assertEqual(state["fake"].stats()["last"]["headers"]["authorization"],
                             "Bearer " + ROTATED_KEY)
            self.assertEqual(gw.request("GET", "/healthz", port=extra_port)[0], 200)

            gw.reload("listen = 127.0.0.1:%d\nbogus_key = 1\n" % port,
                      expect="stays in force")
            self.assertRegex(gw.logs(), r"rotate\.conf:2: bogus_key: ")
            self.assertEqual(gw.request("GET", q("rot3;states=REQUESTED"))[0], 200)
            self.assertEqual(gw.request("GET", "/healthz", port=extra_port)[0], 200)

            gw.reload(ini(base_settings(port), sections), expect="is in force")
            samples, _ = metrics(gw)
            self.assertEqual(samples['gumloop_gateway_config_reloads_total{result="ok"}'], 2)
            self.assertEqual(samples['gumloop_gateway_config_reloads_total{result="failed"}'], 1)
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", extra_port), timeout=2).close()
            self.assertEqual(gw.request("GET", q("rot4;states=REQUESTED"))[0], 200)
        finally:
            self.assertEqual(gw.stop(), 0)
        for secret in SECRETS:
            self.assertNotIn(secret, gw.logs())


if __name__ == "__main__":
    gwtest.main()
