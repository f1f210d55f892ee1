"""Integration tests for running the gateway as a Debian daemon (README
"Operations"): /readyz, JSON access log lines, systemd's readiness protocol
through a NOTIFY_SOCKET the test listens on, and secrets from systemd
credentials. Run by `make check` (TAP)."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from fixtures import *  # noqa: E402,F401,F403 (setUpModule, state, q, metrics, ...)
from gwtest import GATEWAY_BIN, wait_for  # noqa: E402

AUTH = {"Authorization": "Bearer " + CLIENT_TOKEN}
JSON_FIELDS = {"time", "peer", "client", "credential", "method", "path", "route", "status",
               "bytes", "duration_ms", "cache", "upstream_status", "export_id", "wait",
               "fanout", "outcome"}


def with_client(sections):
    return sections + [("client reports", [("token", CLIENT_TOKEN),
                                           ("credentials", "default team")])]


def raw_request(port, data, timeout=10):
    """Sends data as is and returns what came back until the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def built_with_sd_notify():
    result = subprocess.run([GATEWAY_BIN, "-V"], stdout=subprocess.PIPE, text=True)
    return "(sd_notify)" in result.stdout


class TestReadyz(GatewayCase):
    overrides = {"allow": "127.0.0.1/32", "admin_allow": "127.0.0.1/32"}

    def test_ready_while_serving(self):
        status, headers, body = self.gw.request("GET", "/readyz")
        self.assertEqual((status, headers["content-type"], json.loads(body)),
                         (200, "application/json", {"status": "ready"}))
        self.assertEqual(self.gw.request("HEAD", "/readyz")[0], 200)
        self.assert_gateway_error(405, "method_not_allowed",
                                  self.gw.request("POST", "/readyz", body=b""))
        samples, _ = metrics(self.gw)
        self.assertGreaterEqual(samples['gumloop_gateway_requests_total{route="readyz",code="200"}'],
                                2)

    def test_subject_to_allow(self):
        # 127.0.0.2 is loopback too, but not in allow
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10,
                                          source_address=("127.0.0.2", 0))
        try:
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        self.assertEqual(response.status, 403)
        self.assertEqual(json.loads(body)["error"], "forbidden")


class TestJsonAccessLog(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.log_path = os.path.join(state["tmp"].path, "access-json.log")
        cls.gw = start_gateway("jsonlog", with_client(credentials()), access_log=cls.log_path,
                               access_log_format="json", cache_pending_ttl="1s",
                               client_timeout="10s")

    @classmethod
    def tearDownClass(cls):
        assert cls.gw.stop() == 0, cls.gw.logs()

    marks = 0

    def mark(self):
        """The number of lines in the log through a marker request's. Lines are
        queued in the order requests end and reach the file up to a flush later,
        so counting the file's lines would miss what is still queued; every line
        before the marker's is of a request that ended before it."""
        type(self).marks += 1
        marker = "/mark-%d" % self.marks
        status = self.gw.request("GET", marker)[0]
        self.assertEqual(status, 404)
        through = []

        def seen():
            with open(self.log_path, "rb") as f:
                lines = f.read().splitlines()
            found = [i for i, raw in enumerate(lines) if marker.encode() + b'"' in raw]
            through[:] = [found[0] + 1] if found else []
            return bool(found)
        wait_for(seen, timeout=5 * gwtest.SLACK, what="the marker's access log line")
        return through[0]

    def lines(self, count_at_least):
        """Every line of the log once there are count_at_least, each parsed."""
        def enough():
            with open(self.log_path, "rb") as f:
                return f.read().count(b"\n") >= count_at_least
        wait_for(enough, timeout=5 * gwtest.SLACK, what="%d access log lines" % count_at_least)
        with open(self.log_path, "rb") as f:
            data = f.read()
        parsed = []
        for raw in data.splitlines():
            # strict: bytes must be UTF-8 and the line one JSON object
            document = json.loads(raw.decode("utf-8"))
            self.assertIsInstance(document, dict, raw)
            self.assertEqual(set(document), JSON_FIELDS, raw)
            parsed.append((raw, document))
        return parsed

    def test_lines_are_json_for_hostile_bytes_without_queries_or_secrets(self):
        port = self.gw.port
        before = self.mark()
        hostile_id = "j1\"\\;states=IN_PROGRESS"
        status, headers, body = self.gw.request("GET", q(hostile_id) + "&secret=query-value",
                                                AUTH)
        self.assertEqual(status, 200, body)
        # raw bytes: quotes, backslashes, bytes over 0x7f in the path and headers
        raw_request(port, b'GET /export_status\\"\xff\xc3\x28/x?data_export_id=query-value '
                          b'HTTP/1.1\r\nHost: h\r\nUser-Agent: "\\\xff\r\n'
                          b'Authorization: Bearer ' + CLIENT_TOKEN.encode() + b'\r\n'
                          b'Connection: close\r\n\r\n')
        raw_request(port, b'GET /no\\where\x80 HTTP/1.1\r\nHost: \xfe\xff\r\n'
                          b'Connection: close\r\n\r\n')
        raw_request(port, b'GET /export_status?data_export_id=query-value HTTP/1.1\r\n'
                          b'Host: h\r\nAuthorization: Bearer wrong-token-\xff"\\\r\n'
                          b'Connection: close\r\n\r\n')
        status, _, _ = self.gw.request("GET", q("j2;states=IN_PROGRESS:1,COMPLETED", wait=5),
                                       AUTH)
        self.assertEqual(status, 200)
        parsed = self.lines(before + 5)[before:]
        for raw, document in parsed:
            self.assertNotIn(b"query-value", raw)
            self.assertNotIn("data_export_id", document["path"])
            for secret in SECRETS + ["wrong-token"]:
                self.assertNotIn(secret.encode(), raw)
            self.assertRegex(document["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertEqual(document["peer"], "127.0.0.1")
            self.assertIsInstance(document["duration_ms"], float)
        first = parsed[0][1]
        self.assertEqual((first["method"], first["path"], first["route"], first["status"]),
                         ("GET", "/export_status", "export_status", 200))
        self.assertEqual((first["client"], first["credential"], first["cache"]),
                         ("reports", "default", "MISS"))
        self.assertEqual(first["upstream_status"], 200)
        self.assertTrue(first["export_id"].startswith("j1"), first)
        self.assertGreater(first["bytes"], 0)
        self.assertIsNone(first["wait"])
        by_route = [d["route"] for _, d in parsed]
        self.assertIn("other", by_route)
        unauthorized = [d for _, d in parsed if d["status"] == 401]
        self.assertTrue(unauthorized, parsed)
        self.assertIsNone(unauthorized[0]["client"])
        held = [d for _, d in parsed if d["export_id"] and d["export_id"].startswith("j2")]
        self.assertEqual(held[-1]["wait"], "final", held)

    def test_a_download_that_joined_says_so(self):
        before = self.mark()
        export_id = "j3;states=COMPLETED;csv=%d;throttle=%d" % (4 << 20, 4 << 20)  # about a second
        results = []

        def download():
            results.append(self.gw.request("GET", q(export_id, download="true"), AUTH,
                                           timeout=30))
        threads = [threading.Thread(target=download) for _ in range(2)]
        threads[0].start()
        time.sleep(0.3)
        threads[1].start()
        for thread in threads:
            thread.join()
        self.assertEqual([(r[0], len(r[2])) for r in results], [(200, 4 << 20)] * 2)
        parsed = [d for _, d in self.lines(before + 2)[before:]
                  if d["export_id"] and d["export_id"].startswith("j3")]
        self.assertEqual(sorted(str(d["fanout"]) for d in parsed), ["None", "joined"], parsed)
        self.assertTrue(all(d["bytes"] == 4 << 20 for d in parsed), parsed)

    def test_an_unknown_format_is_refused(self):
        result = subprocess.run(
            [GATEWAY_BIN, "-t", "-c", self.write_conf("badformat", access_log_format="xml")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **ENV))
        self.assertEqual(result.returncode, 1)
        self.assertIn("access_log_format: must be text or json, not 'xml'", result.stderr)

    def write_conf(self, name, **overrides):
        path = os.path.join(state["tmp"].path, name + ".conf")
        with open(path, "w") as f:
            f.write(gwtest.ini(base_settings(8080, **overrides), credentials()))
        return path


@unittest.skipUnless(built_with_sd_notify(), "built without libsystemd (configure --with-systemd)")
class TestSdNotify(unittest.TestCase):
    def test_ready_reloading_stopping(self):
        path = os.path.join(state["tmp"].path, "notify.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(path)
        listener.settimeout(10 * gwtest.SLACK)
        messages = []

        def receive(until):
            while not any(until in m for m in messages):
                messages.append(listener.recv(4096).decode())
            return [m for m in messages if until in m][-1]
        gw = start_gateway("notify", extra_env={"NOTIFY_SOCKET": path}, drain_timeout="10s")
        try:
            ready = receive("READY=1")
            self.assertIn("STATUS=serving", ready)
            # READY=1 came once the listener was bound: it answers
            self.assertEqual(gw.request("GET", "/healthz")[0], 200)
            del messages[:]
            gw.reload(expect="is in force")
            receive("READY=1")
            reloading = [m for m in messages if "RELOADING=1" in m]
            self.assertTrue(reloading, messages)
            self.assertRegex(reloading[0], r"MONOTONIC_USEC=\d+")
            self.assertLess(messages.index(reloading[0]),
                            [i for i, m in enumerate(messages) if "READY=1" in m][-1])
            del messages[:]
            gw.signal(signal.SIGTERM)
            receive("STOPPING=1")
            self.assertEqual(gw.proc.wait(10 * gwtest.SLACK), 0)
        finally:
            gw.stop()
            listener.close()


class TestSystemdCredentials(unittest.TestCase):
    def test_api_key_from_credentials_directory(self):
        directory = os.path.join(state["tmp"].path, "credentials")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "gumloop_api_key"), "w") as f:
            f.write(PERSONAL_KEY + "\n")
        os.chmod(os.path.join(directory, "gumloop_api_key"), 0o400)
        gw = start_gateway("credentials", credentials("credential:gumloop_api_key"),
                           extra_env={"CREDENTIALS_DIRECTORY": directory})
        try:
            status, _, body = gw.request("GET", q("cred;states=COMPLETED"))
            self.assertEqual((status, json.loads(body)["state"]), (200, "COMPLETED"), body)
            self.assertEqual(state["fake"].stats()["last"]["headers"]["authorization"],
                             "Bearer " + PERSONAL_KEY)
        finally:
            self.assertEqual(gw.stop(), 0)
        self.assertNotIn(PERSONAL_KEY, gw.logs())

    def test_unset_credentials_directory_is_a_clear_error(self):
        path = os.path.join(state["tmp"].path, "nocreds.conf")
        with open(path, "w") as f:
            f.write(gwtest.ini(base_settings(8080), credentials("credential:gumloop_api_key")))
        env = dict(os.environ, **ENV)
        env.pop("CREDENTIALS_DIRECTORY", None)
        result = subprocess.run([GATEWAY_BIN, "-t", "-c", path], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        self.assertEqual(result.returncode, 1)
        self.assertRegex(result.stderr, r"credential:gumloop_api_key: CREDENTIALS_DIRECTORY "
                                        r"is not set")


if __name__ == "__main__":
    gwtest.main()
