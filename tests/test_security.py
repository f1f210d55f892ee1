"""Integration tests for running the gateway where anyone on a private network
can reach it: client tokens and grants, rates, allowlists, TLS on the listener,
connection limits, slow and malformed requests, and secrets kept out of every
log and answer. Run by `make check` (TAP)."""

import errno
import glob
import json
import os
import resource
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from fixtures import *  # noqa: E402,F401,F403 (setUpModule, state, q, GatewayCase, ...)
from gwtest import Gateway, free_port, ini, raw_exchange, wait_for  # noqa: E402

READS = {"Authorization": "Bearer " + CLIENT_TOKEN}


def client_sections(token_spec=CLIENT_TOKEN, rate=None):
    reports = [("token", token_spec), ("credentials", "default")]
    if rate:
        reports.append(("rate", rate))
    return credentials() + [
        ("client reports", reports),
        ("client billing", [("token", OTHER_CLIENT_TOKEN), ("credentials", "team")]),
    ]


class TestClients(GatewayCase):
    @classmethod
    def setUpClass(cls):
        cls.sections = client_sections(rate="5/s")
        super().setUpClass()

    def test_403_does_not_tell_whether_a_user_id_exists(self):
        granted_elsewhere = self.gw.request("GET", q("x", user_id=OAUTH_USER), READS)
        unknown = self.gw.request("GET", q("x", user_id="no-such-user"), READS)
        self.assertEqual(granted_elsewhere[0], 403)
        self.assertEqual((unknown[0], unknown[2]), (granted_elsewhere[0], granted_elsewhere[2]))

    def test_token_compared_whole(self):
        for header in ("Bearer " + CLIENT_TOKEN[:-1], "Bearer " + CLIENT_TOKEN + "x",
                       "Bearer x" + CLIENT_TOKEN, "Basic " + CLIENT_TOKEN, CLIENT_TOKEN,
                       "Bearer"):
            status, headers, _ = self.gw.request("GET", q("t;states=REQUESTED"),
                                                 {"Authorization": header})
            self.assertEqual(status, 401, header)
            self.assertEqual(headers["www-authenticate"], 'Bearer realm="gumloop-gateway"')

    def test_rate_limit_is_per_client(self):
        time.sleep(1.0)  # a full bucket: burst 10 at 5/s
        statuses = [self.gw.request("GET", q("r;states=REQUESTED"), READS)
                    for _ in range(14)]
        codes = [s for s, _, _ in statuses]
        self.assertIn(429, codes)
        self.assertGreaterEqual(codes.count(200), 10)
        limited = next(r for r in statuses if r[0] == 429)
        self.assertGreaterEqual(int(limited[1]["retry-after"]), 1)
        self.assertEqual(json.loads(limited[2])["error"], "rate_limited")
        # the other client has no rate
        other = {"Authorization": "Bearer " + OTHER_CLIENT_TOKEN}
        for _ in range(14):
            self.assertEqual(self.gw.request("GET", q("r2;states=REQUESTED"), other)[0], 200)
        time.sleep(1.1)
        self.assertEqual(self.gw.request("GET", q("r;states=REQUESTED"), READS)[0], 200)

    def test_client_name_in_access_log_never_the_token(self):
        self.gw.request("GET", q("who;states=REQUESTED"), READS)
        time.sleep(1.2)
        line = [l for l in self.gw.logs().splitlines() if "who;states" in l][-1]
        self.assertIn("client=reports", line)
        self.assertNotIn(CLIENT_TOKEN, self.gw.logs())


class TestAuthAcrossReloads(unittest.TestCase):
    def test_rate_buckets_of_unchanged_clients_survive_a_reload(self):
        # 1/m: one request in a burst, the next a minute later, however slowly
        # the gateway runs (valgrind)
        port = free_port()
        gw = Gateway(state["tmp"].path, ini(base_settings(port), client_sections(rate="1/m")),
                     name="bucketreload", env=ENV, port=port)
        try:
            codes = [gw.request("GET", q("b;states=REQUESTED"), READS)[0] for _ in range(2)]
            self.assertEqual(codes, [200, 429])
            gw.reload(expect="is in force")  # the same config: the bucket stays empty
            self.assertEqual(gw.request("GET", q("b;states=REQUESTED"), READS)[0], 429)
            gw.reload(ini(base_settings(port), client_sections(rate="2/m")),
                      expect="is in force")  # a new rate: a new, full bucket
            self.assertEqual(gw.request("GET", q("b;states=REQUESTED"), READS)[0], 200)
        finally:
            self.assertEqual(gw.stop(), 0)

    def test_a_rate_below_one_per_second_still_allows_a_request(self):
        port = free_port()
        gw = Gateway(state["tmp"].path, ini(base_settings(port), client_sections(rate="20/m")),
                     name="slowrate", env=ENV, port=port)
        try:
            self.assertEqual(gw.request("GET", q("s;states=REQUESTED"), READS)[0], 200)
        finally:
            self.assertEqual(gw.stop(), 0)

    def test_bad_tokens_are_limited_per_address(self):
        port = free_port()
        gw = Gateway(state["tmp"].path, ini(base_settings(port), client_sections()),
                     name="guessing", env=ENV, port=port)
        bad = {"Authorization": "Bearer guess-0000000000000000"}

        def attempts(count):
            conn = gw.connection()
            started = time.monotonic()
            codes = []
            for _ in range(count):
                conn.request("GET", q("g;states=REQUESTED"), headers=bad)
                resp = conn.getresponse()
                resp.read()
                codes.append(resp.status)
            conn.close()
            return codes, time.monotonic() - started  # one try back per second
        try:
            codes, took = attempts(30)
            emptied = time.monotonic()  # the allowance earns tries back from here
            self.assertEqual(codes[:10], [401] * 10)
            self.assertLessEqual(codes.count(401), 10 + int(took) + 1, codes)
            self.assertEqual(codes[-1], 429)
            status, headers, body = gw.request("GET", q("g;states=REQUESTED"), READS)
            self.assertEqual((status, json.loads(body)["error"]), (429, "rate_limited"))
            self.assertGreaterEqual(int(headers["retry-after"]), 1)
            # another address is not held back
            with socket.socket() as s:
                s.bind(("127.0.0.3", 0))
                s.settimeout(15)
                s.connect(("127.0.0.1", port))
                s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                           "Connection: close\r\n\r\n" % (q("g;states=REQUESTED"),
                                                            CLIENT_TOKEN)).encode())
                self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 200"))
            gw.reload(expect="is in force")  # the allowance survives a reload too
            codes, took = attempts(5)
            self.assertLessEqual(codes.count(401), int(time.monotonic() - emptied) + 1, codes)
            self.assertIn(429, codes)
            time.sleep(2.2)
            self.assertEqual(gw.request("GET", q("g;states=REQUESTED"), READS)[0], 200)
        finally:
            self.assertEqual(gw.stop(), 0)

    def test_short_token_refused_at_load(self):
        port = free_port()
        text = ini(base_settings(port), client_sections(token_spec="only-15-bytes-x"))
        path = os.path.join(state["tmp"].path, "shorttoken.conf")
        with open(path, "w") as f:
            f.write(text)
        result = gwtest.subprocess.run([gwtest.GATEWAY_BIN, "-t", "-c", path], env=dict(
            os.environ, **ENV), capture_output=True, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("token: a token must be at least 16 bytes long", result.stderr)
        self.assertNotIn("only-15-bytes-x", result.stderr)


class TestCaReload(unittest.TestCase):
    def test_ca_bundle_replaced_under_the_same_path_takes_effect_on_sighup(self):
        # libcurl keeps a parsed bundle for 24 hours (CURLOPT_CA_CACHE_TIMEOUT):
        # after a reload it must be read again, or the old CA goes on verifying
        tmp = state["tmp"].path
        other = state["other_ca"]
        fake = gwtest.Fake(other, tmp, [("personal", PERSONAL_KEY, PERSONAL_USER)],
                           name="fake-otherca")
        bundle = os.path.join(tmp, "rotating-ca.pem")
        with open(state["ca"].ca_cert, "rb") as src, open(bundle, "wb") as dst:
            dst.write(src.read())
        port = free_port()
        gw = Gateway(tmp, ini(base_settings(port, upstream_ca=bundle), credentials()),
                     name="careload", env=ENV, port=port)
        try:
            self.assertEqual(gw.request("GET", q("ca1;states=REQUESTED"))[0], 200)
            with open(other.ca_cert, "rb") as src, open(bundle, "wb") as dst:
                dst.write(src.read())
            # the other fake's certificate is only trusted by the new bundle
            gw.reload(ini(base_settings(port, upstream=fake.url, upstream_ca=bundle),
                          credentials()), expect="is in force")
            status, _, body = gw.request("GET", q("ca2;states=REQUESTED"))
            self.assertEqual(status, 200, body)
        finally:
            fake.stop()
            self.assertEqual(gw.stop(), 0)


class TestAccessLogNeverStalls(unittest.TestCase):
    def test_a_fifo_nobody_reads_does_not_stop_serving(self):
        tmp = state["tmp"].path
        fifo = os.path.join(tmp, "access.fifo")
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, never read
        try:
            gw = start_gateway("fifolog", access_log=fifo)
            try:
                conn = gw.connection(timeout=5)
                started = time.monotonic()
                for i in range(3000):  # ~300 KB of log lines; a pipe holds 64 KiB
                    conn.request("GET", "/healthz?pad=" + "p" * 60)
                    resp = conn.getresponse()
                    resp.read()
                    self.assertEqual(resp.status, 200)
                conn.close()
                self.assertLess(time.monotonic() - started, 30)
                samples = metrics(gw)[0]
                self.assertIn("gumloop_gateway_access_log_dropped_total", samples)
            finally:
                self.assertEqual(gw.stop(), 0)
        finally:
            os.close(reader)


class TestTokenRotation(unittest.TestCase):
    def test_sighup_rotates_the_token_without_dropping_connections(self):
        tmp = state["tmp"].path
        token_file = os.path.join(tmp, "reports.token")
        with open(token_file, "w") as f:
            f.write(CLIENT_TOKEN + "\n")
        os.chmod(token_file, 0o600)
        port = free_port()
        text = ini(base_settings(port), client_sections("file:" + token_file))
        gw = Gateway(tmp, text, name="tokenrotation", env=ENV, port=port)
        try:
            keep = gw.connection()
            keep.request("GET", q("rot;states=REQUESTED"), headers=READS)
            self.assertEqual(keep.getresponse().read() and 200, 200)
            with open(token_file, "w") as f:
                f.write(ROTATED_KEY + "\n")
            gw.reload(expect="is in force")
            keep.request("GET", q("rot;states=REQUESTED"), headers=READS)
            resp = keep.getresponse()
            resp.read()
            self.assertEqual(resp.status, 401)
            keep.request("GET", q("rot;states=REQUESTED"),
                         headers={"Authorization": "Bearer " + ROTATED_KEY})
            resp = keep.getresponse()
            resp.read()
            self.assertEqual(resp.status, 200)
            keep.close()
        finally:
            self.assertEqual(gw.stop(), 0)
        self.assertNotIn(ROTATED_KEY, gw.logs())


class TestAllowlistAddresses(unittest.TestCase):
    def test_denied_source_address_and_v4_mapped_peers(self):
        port, v6_port = free_port(), free_port("::")
        text = ini(base_settings(port, allow="127.0.0.1/32") +
                   [("listen", "[::]:%d" % v6_port)], credentials())
        gw = Gateway(state["tmp"].path, text, name="allowaddr", env=ENV, port=port)
        try:
            # from 127.0.0.2 (loopback owns all of 127/8): denied before anything else
            with socket.socket() as s:
                s.bind(("127.0.0.2", 0))
                s.settimeout(5)
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = s.recv(65536)
            self.assertTrue(reply.startswith(b"HTTP/1.1 403"), reply[:40])
            self.assertIn(b'"error":"forbidden"', reply)
            # IPv4 through the dual-stack [::] socket arrives as ::ffff:127.0.0.1
            self.assertEqual(gw.request("GET", "/healthz", port=v6_port)[0], 200)
        finally:
            self.assertEqual(gw.stop(), 0)


class TestTls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tmp = state["tmp"].path
        cls.cert = os.path.join(tmp, "listener.crt")
        cls.key = os.path.join(tmp, "listener.key")
        with open(state["ca"].cert, "rb") as src, open(cls.cert, "wb") as dst:
            dst.write(src.read())
        with open(state["ca"].key, "rb") as src, open(cls.key, "wb") as dst:
            dst.write(src.read())
        os.chmod(cls.key, 0o600)
        cls.tls_port, cls.port = free_port(), free_port()
        settings = base_settings(cls.port, tls_cert=cls.cert, tls_key=cls.key) + [
            ("listen", "127.0.0.1:%d tls" % cls.tls_port)]
        cls.text = ini(settings, credentials())
        cls.gw = Gateway(tmp, cls.text, name="tls", env=ENV, port=cls.port)

    @classmethod
    def tearDownClass(cls):
        assert cls.gw.stop() == 0

    def https(self, path, ca=None):
        context = ssl.create_default_context(cafile=(ca or state["ca"]).ca_cert)
        conn = gwtest.http.client.HTTPSConnection("127.0.0.1", self.tls_port, context=context,
                                                  timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read(), conn.sock.version(), conn.sock.cipher()
        finally:
            conn.close()

    def test_https_serves_with_modern_tls(self):
        status, body, version, cipher = self.https(q("tls1;states=IN_PROGRESS"))
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["state"], "IN_PROGRESS")
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertTrue("GCM" in cipher[0] or "CHACHA20" in cipher[0], cipher)
        self.assertEqual(self.gw.request("GET", "/healthz")[0], 200)  # plain listener too

    def test_downloads_over_tls_share_one_transfer(self):
        # a TLS listener cannot sendfile: the spool's segments are read into memory
        export_id = "tlsdl-%d;states=COMPLETED;csv=3m;throttle=%d" % (os.getpid(), 4 << 20)
        results = []

        def one():
            results.append(self.https(q(export_id, download="true")))
        threads = [threading.Thread(target=one) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for status, body, _, _ in results:
            self.assertEqual((status, len(body)), (200, 3 << 20))
            self.assertEqual(body, gwtest.csv_bytes(0, 3 << 20))
        self.assertEqual(state["fake"].stats()["by_id"][export_id], 1)

    def test_client_leaving_while_waiting_over_tls_aborts_upstream(self):
        fake = state["fake"]
        context = ssl.create_default_context(cafile=state["ca"].ca_cert)
        for how in ("close", "reset"):
            before = fake.stats()["client_aborts"]
            raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=5)
            sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" %
                          q("tlsgone-%s;states=REQUESTED;delay=5000" % how)).encode())
            time.sleep(0.3)
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            wait_for(lambda: fake.stats()["client_aborts"] > before, timeout=2 * gwtest.SLACK,
                     what="the upstream call to be aborted after a TLS client's " + how)
        self.assertNotIn("cannot watch the client connection", self.gw.logs())

    def test_old_protocols_refused(self):
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(state["ca"].ca_cert)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("ALL:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=5) as raw:
            with self.assertRaises((ssl.SSLError, ConnectionResetError)):
                context.wrap_socket(raw, server_hostname="127.0.0.1").close()

    def test_plain_http_to_the_tls_port_is_refused(self):
        reply = raw_exchange("127.0.0.1", self.tls_port,
                             b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3)
        self.assertNotIn(b"200 OK", reply)
        self.assertEqual(self.https("/healthz")[0], 200)

    def test_certificate_reread_on_sighup(self):
        other = state["other_ca"]
        with open(other.cert, "rb") as src, open(self.cert, "wb") as dst:
            dst.write(src.read())
        with open(other.key, "rb") as src, open(self.key, "wb") as dst:
            dst.write(src.read())
        try:
            self.gw.reload(expect="is in force")
            self.assertEqual(self.https("/healthz", ca=other)[0], 200)
            with self.assertRaises(ssl.SSLCertVerificationError):
                self.https("/healthz")
        finally:
            with open(state["ca"].cert, "rb") as src, open(self.cert, "wb") as dst:
                dst.write(src.read())
            with open(state["ca"].key, "rb") as src, open(self.key, "wb") as dst:
                dst.write(src.read())
            self.gw.reload(expect="is in force")
        self.assertEqual(self.https("/healthz")[0], 200)


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class TestConnectionLimits(unittest.TestCase):
    def test_2000_idle_connections_and_a_request_still_served(self):
        if raise_fd_limit() < 2200:
            self.skipTest("RLIMIT_NOFILE hard limit below 2200")
        gw = start_gateway("idle2000", client_timeout="30s")
        idle = []
        try:
            for _ in range(2000):
                idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10))
            wait_for(lambda: metrics(gw)[0]["gumloop_gateway_connections_open"] >= 2001,
                     timeout=20, what="2000 idle connections open")
            status, _, body = gw.request("GET", q("busy;states=IN_PROGRESS"))
            self.assertEqual(status, 200)
        finally:
            for s in idle:
                s.close()
            self.assertEqual(gw.stop(), 0)

    def test_accept_pauses_at_max_connections(self):
        gw = start_gateway("maxconn", max_connections="5", client_timeout="30s")
        idle = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(4)]
        try:
            keep = gw.connection()  # the fifth
            keep.request("GET", "/metrics")
            keep.getresponse().read()
            waiting = socket.create_connection(("127.0.0.1", gw.port), timeout=1)
            waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            with self.assertRaises(socket.timeout):
                waiting.recv(100)  # in the kernel's queue, not accepted
            idle.pop().close()
            waiting.settimeout(5)
            self.assertTrue(waiting.recv(100).startswith(b"HTTP/1.1 200"))
            waiting.close()
            self.assertIn("max_connections (5) reached", gw.logs())
        finally:
            for s in idle:
                s.close()
            self.assertEqual(gw.stop(), 0)

    def test_a_burst_waits_in_the_listen_queue_behind_max_connections(self):
        burst = 600
        with open("/proc/sys/net/core/somaxconn") as f:
            if int(f.read()) < burst:
                self.skipTest("net.core.somaxconn below %d" % burst)
        if raise_fd_limit() < burst + 100:
            self.skipTest("RLIMIT_NOFILE hard limit below %d" % (burst + 100))
        gw = start_gateway("backlog", max_connections="3", client_timeout="30s")
        held = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(2)]
        queued = []
        try:
            keep = gw.connection()  # the third: accepting pauses after it
            keep.request("GET", "/healthz")
            keep.getresponse().read()
            wait_for(lambda: "max_connections (3) reached" in gw.logs(), what="the pause")
            poller = select.poll()
            for _ in range(burst):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                self.assertIn(s.connect_ex(("127.0.0.1", gw.port)), (0, errno.EINPROGRESS))
                queued.append(s)
                poller.register(s, select.POLLOUT)
            # the kernel completes the handshake of every one it queues; with a
            # backlog of 128 the rest get their SYN dropped and retried after 1 s
            connected, deadline = set(), time.monotonic() + 0.8
            while len(connected) < burst and time.monotonic() < deadline:
                for fd, _ in poller.poll(100):
                    poller.unregister(fd)
                    connected.add(fd)
            refused = [s for s in queued if s.fileno() in connected
                       and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0]
            self.assertEqual((len(connected), len(refused)), (burst, 0))
            # the last one in the queue is served once slots free up
            last = queued.pop()
            last.setblocking(True)
            last.settimeout(20)
            last.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            for s in queued + held:
                s.close()
            queued, held = [last], []
            keep.close()
            self.assertTrue(last.recv(100).startswith(b"HTTP/1.1 200"))
        finally:
            for s in queued + held:
                s.close()
            self.assertEqual(gw.stop(), 0)

    def test_emfile_pauses_accepting_and_serving_resumes(self):
        if gwtest.GATEWAY_WRAPPER:
            self.skipTest("valgrind needs descriptors of its own")

        def few_descriptors():
            resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
        port = free_port()
        gw = Gateway(state["tmp"].path, ini(base_settings(port, client_timeout="30s"),
                                            credentials()),
                     name="emfile", env=ENV, port=port, preexec_fn=few_descriptors)
        clients = []
        try:
            for _ in range(60):  # more than the gateway has descriptors for
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            wait_for(lambda: "pausing accepts" in gw.logs(), timeout=5,
                     what="accept to fail with EMFILE")
            self.assertIn("below the", gw.logs())  # the start-up warning about the limit
            for s in clients:
                s.close()
            clients = []
            wait_for(lambda: self._healthy(gw), timeout=10, what="serving again")
            self.assertIsNone(gw.proc.poll())
        finally:
            for s in clients:
                s.close()
            self.assertEqual(gw.stop(), 0)

    @staticmethod
    def _healthy(gw):
        try:
            return gw.request("GET", "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def test_slowloris_is_cut_at_client_timeout(self):
        gw = start_gateway("slowloris", client_timeout="1s")
        try:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            closed = False
            for i in range(40):  # a header byte every 0.2 s keeps evhttp's idle timer happy
                time.sleep(0.2)
                try:
                    s.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        closed = True
                        break
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    closed = True
                    break
                finally:
                    s.setblocking(True)
            s.close()
            self.assertTrue(closed)
            self.assertLess(time.monotonic() - started, 2 + gwtest.SLACK)
            self.assertEqual(gw.request("GET", "/healthz")[0], 200)
        finally:
            self.assertEqual(gw.stop(), 0)

    @staticmethod
    def _get_on(sock, path="/healthz"):
        sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
        resp = gwtest.RawResponse(sock)
        body, complete = resp.read_all()
        return resp.status, complete

    @staticmethod
    def _seconds_until_closed(sock, limit):
        started = time.monotonic()
        sock.settimeout(limit)
        try:
            data = sock.recv(1)
        except ConnectionResetError:
            data = b""
        except socket.timeout:
            return None
        return time.monotonic() - started if data == b"" else None

    def test_busy_keep_alive_connection_lives_then_closes_a_timeout_after_its_last(self):
        # The request deadline is lazy (not taken off and put back per request):
        # a connection that sends a request every 0.6 s outlives several 1 s
        # timeouts, and is closed about 1 s after its last request, not before.
        gw = start_gateway("busy-keep-alive", client_timeout="1s")
        try:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            for i in range(6):
                self.assertEqual(self._get_on(s), (200, True), "request %d" % i)
                time.sleep(0.6)
            self.assertEqual(self._get_on(s), (200, True))
            waited = self._seconds_until_closed(s, 1 + 2 * gwtest.SLACK)
            s.close()
            self.assertIsNotNone(waited, "still open after client_timeout")
            self.assertGreater(waited, 0.8)
        finally:
            self.assertEqual(gw.stop(), 0)

    def test_slowloris_after_answered_requests_is_cut_at_client_timeout(self):
        gw = start_gateway("slowloris-late", client_timeout="1s")
        try:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            for i in range(3):
                self.assertEqual(self._get_on(s), (200, True))
                time.sleep(0.7)
            self.assertEqual(self._get_on(s), (200, True))
            started = time.monotonic()
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            closed = False
            while not closed and time.monotonic() - started < 1 + 2 * gwtest.SLACK:
                time.sleep(0.1)
                try:
                    s.sendall(b"X")
                    ready, _, _ = select.select([s], [], [], 0)
                    closed = bool(ready) and s.recv(1) == b""
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            s.close()
            self.assertTrue(closed, "a trickling request outlived client_timeout")
            self.assertGreater(time.monotonic() - started, 0.8)
        finally:
            self.assertEqual(gw.stop(), 0)


MALFORMED = [
    b"GET /export_status?data_export_id=a%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?data_export_id=a%00b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?data_export_id=" + b"i" * 10240 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?data_export_id=a&data_export_id=b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?data_export_id=\xff\xfe\x80 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?data_export_id=a\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://evil.example/export_status?data_export_id=a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?data_export_id=a\r\n\r\n",
    b"GET /export_status?data_export_id=a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /export_status?data_export_id=a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /export_status?data_export_id=a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    b"GET /export_status?data_export_id=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    b"Content-Length: 44\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?data_export_id=a HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n"
    b"GET /healthz HTTP/1.1\r\n\r\n",
    b"GET /export_status?data_export_id=a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"GET /export_status?data_export_id=a HTTP/1.1\r\nHost: x\r\nX: " + b"h" * 70000 + b"\r\n\r\n",
    # obs-fold is unfolded with a space (RFC 9112 5.2 allows it), so fold a framing header
    b"GET /export_status?data_export_id=a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n"
    b" chunked\r\n\r\n0\r\n\r\n",
    b"GET /export_status?data_export_id=a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"BREW /export_status?data_export_id=a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?data_export_id=a HTTP/2.0\r\nHost: x\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?data_export_id=a&download=maybe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /export_status?" + b"&p=1" * 40 + b"&data_export_id=a HTTP/1.1\r\nHost: x\r\n\r\n",
]


class TestMalformedRequests(GatewayCase):
    overrides = {"client_timeout": "2s"}

    def test_each_gets_4xx_or_a_closed_connection(self):
        before = self.fake_stats()["requests"]
        for data in MALFORMED:
            reply = raw_exchange("127.0.0.1", self.gw.port, data, timeout=4)
            status_line = reply.split(b"\r\n", 1)[0]
            # an unknown method gets evhttp's 501, which RFC 9110 15.6.2 asks for
            allowed = (b"4",) if not data.startswith(b"BREW") else (b"501",)
            ok = reply == b"" or (status_line.startswith(b"HTTP/1.") and
                                  status_line.split()[1].startswith(allowed))
            self.assertTrue(ok, "%r -> %r" % (data[:70], reply[:120]))
            self.assertNotIn(b"200 OK", reply, data[:70])
            self.assertEqual(self.gw.request("GET", "/healthz")[0], 200, data[:70])
        self.assertEqual(self.fake_stats()["requests"], before, "nothing reached upstream")

    def test_well_formed_http_1_0_is_served_and_closed(self):
        reply = raw_exchange("127.0.0.1", self.gw.port,
                             ("GET %s HTTP/1.0\r\n\r\n" % q("ten;states=REQUESTED")).encode())
        self.assertTrue(reply.startswith(b"HTTP/1.0 200") or reply.startswith(b"HTTP/1.1 200"),
                        reply[:60])
        self.assertIn(b'"state":"REQUESTED"', reply)


def tearDownModule():
    """Every log the gateways wrote in this module: no secret in any line."""
    try:
        for path in glob.glob(os.path.join(state["tmp"].path, "*.log")):
            if os.path.basename(path).startswith("fake"):
                continue
            with open(path, errors="replace") as f:
                text = f.read()
            for secret in SECRETS:
                assert secret not in text, "a secret is in " + path
    finally:
        state["fake"].stop()
        state["tmp"].cleanup()


if __name__ == "__main__":
    gwtest.main()
