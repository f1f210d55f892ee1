"""Integration tests for starting exports through the gateway: POST /export_data
(scopes, the body's framing, type and field checks, the stored user id, the
upstream call and its answers, a client that hangs up) and the whole workflow,
start to download, with no Gumloop credential on the client's side.
Run by `make check` (TAP)."""

import json
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from fixtures import *  # noqa: E402,F401,F403 (setUpModule, state, q, GatewayCase, ...)
from gwtest import raw_exchange, wait_for  # noqa: E402

STARTER_TOKEN = "client-token-starter-5e1d07"
SECRETS.append(STARTER_TOKEN)
POLLER_TOKEN = "client-token-poller-aa9f31"
SECRETS.append(POLLER_TOKEN)
SECOND_TOKEN = "client-token-second-7c44e0"
SECRETS.append(SECOND_TOKEN)

STARTS = {"Authorization": "Bearer " + STARTER_TOKEN, "Content-Type": "application/json"}
READS = {"Authorization": "Bearer " + CLIENT_TOKEN, "Content-Type": "application/json"}
POLLS = {"Authorization": "Bearer " + POLLER_TOKEN}

MINIMAL = {"export_fields": ["run_id", "credit_cost"], "start_date": "2025-01-01T00:00:00Z",
           "end_date": "2025-12-31T23:59:59Z", "data_type": "workflows",
           "include_all_workspaces": True}


def body(**changes):
    document = dict(MINIMAL)
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


def client_sections():
    return credentials() + [
        ("client starter", [("token", STARTER_TOKEN), ("credentials", "default team"),
                            ("scopes", "status download export")]),
        ("client reports", [("token", CLIENT_TOKEN), ("credentials", "default")]),
        ("client poller", [("token", POLLER_TOKEN), ("credentials", "default"),
                           ("scopes", "status")]),
        ("client second", [("token", SECOND_TOKEN), ("credentials", "default"),
                           ("scopes", "export")]),
    ]


class ExportCase(GatewayCase):
    # an export call has a connection of its own: under valgrind its TLS handshake
    # alone takes about 2 s, so the upstream timeout scales with the slack
    UPSTREAM_TIMEOUT = 2 * int(gwtest.SLACK)
    overrides = {"client_timeout": "2s", "upstream_timeout": "%ds" % UPSTREAM_TIMEOUT}

    @classmethod
    def setUpClass(cls):
        cls.sections = client_sections()
        super().setUpClass()

    def calls(self):
        return self.fake_stats()["export_data"]

    def post(self, data, headers=STARTS, path="/export_data"):
        return self.gw.request("POST", path, headers, body=data)


class TestScopes(ExportCase):
    def test_client_without_export_scope_is_403_and_nothing_goes_upstream(self):
        before = self.calls()
        self.assert_gateway_error(403, "forbidden", self.post(body(), READS))
        self.assertEqual(self.calls(), before)

    def test_status_scope_only_may_not_download(self):
        status, _, _ = self.gw.request("GET", q("sc1;states=IN_PROGRESS"), POLLS)
        self.assertEqual(status, 200)
        document = self.assert_gateway_error(
            403, "forbidden",
            self.gw.request("GET", q("sc2;states=COMPLETED", download="true"), POLLS))
        self.assertIn("download", document["message"])

    def test_default_scopes_are_status_and_download(self):
        for params in ({}, {"download": "true"}):
            status, _, _ = self.gw.request("GET", q("sc3;states=COMPLETED;csv=1k", **params),
                                           READS)
            self.assertEqual(status, 200, params)

    def test_token_still_checked_first(self):
        self.assert_gateway_error(401, "unauthorized",
                                  self.post(body(), {"Content-Type": "application/json"}))


class TestNoClients(GatewayCase):
    def test_without_client_sections_no_one_may_start_exports(self):
        before = self.fake_stats()["export_data"]
        document = self.assert_gateway_error(
            403, "forbidden",
            self.gw.request("POST", "/export_data", {"Content-Type": "application/json"},
                            body=body()))
        self.assertIn("export scope", document["message"])
        self.assertEqual(self.fake_stats()["export_data"], before)


class TestStart(ExportCase):
    def test_started_with_the_stored_user_id_and_credential(self):
        before = self.calls()
        status, headers, raw = self.post(body(user_id="forged-" + PERSONAL_USER, x_more=[1]))
        self.assert_gateway_error(403, "forbidden", (status, headers, raw))
        self.assertEqual(self.calls(), before)
        status, headers, raw = self.post(body(x_more=[1, {"k": None}]))
        self.assertEqual(status, 200, raw)
        self.assertTrue(headers["content-type"].startswith("application/json"))
        answer = json.loads(raw)
        self.assertTrue(answer["data_export_id"].startswith("exp"))
        self.assertEqual(answer["state"], "REQUESTED")
        self.assertEqual(self.calls(), before + 1)
        stats = self.fake_stats()
        sent = json.loads(stats["export_data_last"])
        self.assertEqual(sent["user_id"], PERSONAL_USER)
        self.assertEqual(sent["x_more"], [1, {"k": None}])
        self.assertEqual(sent["export_fields"], MINIMAL["export_fields"])
        last = stats["last"]
        self.assertEqual(last["method"], "POST")
        self.assertTrue(last["uri"].endswith("/export_data"))
        self.assertEqual(last["headers"]["x-auth-key"], PERSONAL_USER)
        self.assertNotIn(STARTER_TOKEN, json.dumps(last))

    def test_granted_user_id_picks_that_credential(self):
        status, _, raw = self.post(body(user_id=OAUTH_USER))
        self.assertEqual(status, 200, raw)
        stats = self.fake_stats()
        self.assertEqual(json.loads(stats["export_data_last"])["user_id"], OAUTH_USER)
        self.assertEqual(stats["last"]["headers"]["authorization"], "Bearer " + OAUTH_KEY)
        self.assertNotIn("x-auth-key", stats["last"]["headers"])

    def test_upstream_answers_mapped(self):
        cases = [("500", 500, None), ("404", 404, None), ("401", 502, "upstream_auth"),
                 ("invalid", 502, "upstream_invalid")]
        for scripted, expected, code in cases:
            status, headers, raw = self.post(body(fake_answer=scripted))
            if code is None:
                self.assertEqual((status, json.loads(raw)["error"]),
                                 (expected, "scripted " + scripted))
            else:
                self.assert_gateway_error(expected, code, (status, headers, raw))

    def test_upstream_timeout_is_504_and_not_retried(self):
        before = self.calls()
        self.assert_gateway_error(504, "upstream_timeout",
                                  self.post(body(fake_delay_ms=str(
                                      1000 * self.UPSTREAM_TIMEOUT + 2000))))
        time.sleep(2.5)  # the fake's answer, had there been a second call
        self.assertEqual(self.calls(), before + 1)

    def test_client_hanging_up_does_not_abort_the_call(self):
        before = self.calls()
        data = body(fake_delay_ms="800")
        s = socket.create_connection(("127.0.0.1", self.gw.port))
        s.sendall(b"POST /export_data HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                  STARTER_TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        time.sleep(0.3)
        s.close()
        wait_for(lambda: "started for a client that had gone" in self.gw.logs(), 5,
                 "the call to end")
        self.assertEqual(self.calls(), before + 1)
        self.assertEqual(self.gw.request("GET", "/healthz")[0], 200)

    def test_metrics_count_the_route(self):
        self.assertEqual(self.post(body())[0], 200)
        samples, _ = metrics(self.gw)
        self.assertGreaterEqual(
            samples['gumloop_gateway_requests_total{route="export_data",code="200"}'], 1)


class TestBadRequests(ExportCase):
    def raw(self, data):
        reply = raw_exchange("127.0.0.1", self.gw.port, data, timeout=4)
        head, _, rest = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]) if head else 0, head, rest

    def request_bytes(self, payload, content_type=b"application/json", extra=b""):
        return (b"POST /export_data HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer " + STARTER_TOKEN.encode() + b"\r\n" +
                (b"Content-Type: " + content_type + b"\r\n" if content_type else b"") +
                extra + b"\r\n" + payload)

    def test_method_and_route(self):
        document = self.assert_gateway_error(
            405, "method_not_allowed", self.gw.request("GET", "/export_data", STARTS))
        status, headers, _ = self.gw.request("PUT", "/export_data", STARTS)
        self.assertEqual((status, headers["allow"]), (405, "POST"))
        self.assertTrue(document["message"])
        status, headers, raw = self.post(body(), path="/export_status?data_export_id=a")
        self.assertEqual((status, headers["allow"]), (405, "GET, HEAD"), raw)

    def test_framing_and_type(self):
        before = self.calls()
        payload = body()
        length = b"Content-Length: %d\r\n" % len(payload)
        for data, expected in [
            (self.request_bytes(payload, b"text/plain", length), 415),
            (self.request_bytes(payload, None, length), 415),
            (self.request_bytes(b"", extra=b""), 411),
            (self.request_bytes(b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n",
                                extra=b"Transfer-Encoding: chunked\r\n"), 411),
            (self.request_bytes(payload, extra=length + length), 400),
        ]:
            status, head, rest = self.raw(data)
            self.assertEqual(status, expected, head)
            self.assertIn(b"application/json", head)
            self.assertTrue(json.loads(rest)["error"])
        status, head, _ = self.raw(self.request_bytes(
            payload, b"Application/JSON; charset=utf-8", length))
        self.assertEqual(status, 200, head)
        self.assertEqual(self.calls(), before + 1)

    def test_body_over_64_kib_is_413_and_at_64_kib_is_taken(self):
        before = self.calls()
        over = body(x_pad="p" * (64 * 1024))
        self.assertEqual(self.post(over)[0], 413)  # libevent's own answer (README)
        exact = body(x_pad="")
        exact = body(x_pad="p" * (64 * 1024 - len(exact)))
        self.assertEqual(len(exact), 64 * 1024)
        self.assertEqual(self.post(exact)[0], 200)
        self.assertEqual(self.calls(), before + 1)
        self.assertEqual(self.gw.request("GET", "/healthz")[0], 200)

    def test_bad_bodies_are_400_naming_the_field(self):
        before = self.calls()
        cases = [
            (b"not json", "JSON"),
            (b"[1,2]", "object"),
            (b'{"a":1,"a":2}', "JSON"),
            (body(x="\x00"), "JSON"),
            (body()[:-1] + b',"x":"\xff"}', "JSON"),
            (b'{"x":' + b"[" * 200 + b"]" * 200 + b"}", "JSON"),
            (body(export_fields=None), "export_fields"),
            (body(export_fields=["f"] * 101), "export_fields"),
            (body(start_date="yesterday"), "start_date"),
            (body(end_date="2024-01-01T00:00:00Z"), "end_date"),
            (body(include_all_workspaces="yes"), "include_all_workspaces"),
            (body(workspace_ids=[1, 2]), "workspace_ids"),
            (body(entity_ids=list(range(5000))), "entity_ids"),
        ]
        for data, field in cases:
            document = self.assert_gateway_error(400, "bad_request", self.post(data))
            self.assertIn(field, document["message"], data[:60])
        self.assertEqual(self.calls(), before)

    def test_body_short_of_its_length_is_cut_at_client_timeout(self):
        before = self.calls()
        payload = body()
        data = self.request_bytes(payload[:-5], extra=b"Content-Length: %d\r\n" % len(payload))
        started = time.monotonic()
        reply = raw_exchange("127.0.0.1", self.gw.port, data, timeout=2 + 3 * gwtest.SLACK)
        self.assertLess(time.monotonic() - started, 2 + 3 * gwtest.SLACK)
        self.assertNotIn(b"200", reply.split(b"\r\n", 1)[0])
        self.assertEqual(self.calls(), before)


class TestIdempotency(ExportCase):
    def keyed(self, key, data, headers=STARTS):
        return self.post(data, dict(headers, **{"Idempotency-Key": key}))

    def test_replay_same_answer_no_second_call(self):
        before = self.calls()
        status, headers, first = self.keyed("replay-1", body())
        self.assertEqual(status, 200, first)
        self.assertNotIn("idempotent-replayed", headers)
        status, headers, again = self.keyed("replay-1", body())
        self.assertEqual((status, again), (200, first))
        self.assertEqual(headers["idempotent-replayed"], "true")
        self.assertEqual(self.calls(), before + 1)
        # the same key with another body
        self.assert_gateway_error(422, "idempotency_key_reused",
                                  self.keyed("replay-1", body(data_type="agents")))
        # keys are per client
        second = {"Authorization": "Bearer " + SECOND_TOKEN,
                  "Content-Type": "application/json"}
        status, headers, other = self.keyed("replay-1", body(), second)
        self.assertEqual(status, 200, other)
        self.assertNotIn("idempotent-replayed", headers)
        self.assertNotEqual(json.loads(other)["data_export_id"],
                            json.loads(first)["data_export_id"])
        self.assertEqual(self.calls(), before + 2)

    def test_4xx_kept_5xx_not(self):
        before = self.calls()
        self.assertEqual(self.keyed("k-404", body(fake_answer="404"))[0], 404)
        status, headers, _ = self.keyed("k-404", body(fake_answer="404"))
        self.assertEqual((status, headers.get("idempotent-replayed")), (404, "true"))
        self.assertEqual(self.calls(), before + 1)
        for _ in range(2):
            status, headers, _ = self.keyed("k-500", body(fake_answer="500"))
            self.assertEqual(status, 500)
            self.assertNotIn("idempotent-replayed", headers)
        self.assertEqual(self.calls(), before + 3)

    def test_twenty_concurrent_posts_one_call(self):
        import concurrent.futures
        before = self.calls()
        data = body(fake_delay_ms="1000")
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: self.keyed("burst-1", data), range(20)))
        statuses = sorted(r[0] for r in results)
        self.assertEqual(statuses.count(200), 1, statuses)
        self.assertEqual(statuses.count(409), 19, statuses)
        for status, headers, raw in results:
            if status == 409:
                self.assertEqual(headers["retry-after"], "1")
                self.assertEqual(json.loads(raw)["error"], "idempotency_in_progress")
        self.assertEqual(self.calls(), before + 1)
        status, headers, _ = self.keyed("burst-1", data)
        self.assertEqual((status, headers.get("idempotent-replayed")), (200, "true"))
        self.assertEqual(self.calls(), before + 1)

    def test_malformed_keys_are_400(self):
        before = self.calls()
        for key in ("k" * 256, "bad\x01key"):
            self.assert_gateway_error(400, "bad_request", self.keyed(key, body()))
        self.assertEqual(self.calls(), before)
        self.assertEqual(self.keyed("k" * 255, body())[0], 200)


class TestWorkflow(ExportCase):
    def test_start_wait_download_with_no_gumloop_credential(self):
        status, _, raw = self.post(body())
        self.assertEqual(status, 200, raw)
        export_id = json.loads(raw)["data_export_id"]
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status, headers, raw = self.gw.request(
                "GET", q(export_id, download="true"), {"Authorization": STARTS["Authorization"]})
            self.assertEqual(status, 200, raw)
            if headers["content-type"].startswith("text/csv"):
                break
            seen.append(json.loads(raw)["state"])
            time.sleep(0.5)
        else:
            self.fail("never COMPLETED: %s" % seen)
        self.assertEqual(seen[0], "REQUESTED")
        self.assertIn("IN_PROGRESS", seen)
        self.assertTrue(raw)
        self.assertEqual(raw, gwtest.csv_bytes(0, len(raw)))

    def test_start_then_one_held_download_call(self):
        status, _, raw = self.post(body())
        self.assertEqual(status, 200, raw)
        export_id = json.loads(raw)["data_export_id"]
        start = time.monotonic()
        status, headers, raw = self.gw.request(
            "GET", q(export_id, download="true", wait=25),
            {"Authorization": STARTS["Authorization"]}, timeout=40)
        took = time.monotonic() - start
        self.assertEqual(status, 200, raw)
        self.assertTrue(headers["content-type"].startswith("text/csv"), headers)
        self.assertIn(headers["preference-applied"], ("wait=23", "wait=24", "wait=25"))
        self.assertEqual(raw, gwtest.csv_bytes(0, len(raw)))
        # the bundled upstream completes new exports about 6 s after they start
        self.assertGreater(took, 4)
        self.assertLess(took, 6 + 2 * gwtest.SLACK)


if __name__ == "__main__":
    gwtest.main()
