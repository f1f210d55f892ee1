"""Integration tests for the state cache and request coalescing: the built
gateway in front of the fake upstream, whose request counts say how many
upstream calls were made. Run by `make check` (TAP)."""

import email.utils
import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from fixtures import *  # noqa: E402,F401,F403 (setUpModule, state, q, GatewayCase, ...)
from gwtest import Gateway, free_port, ini, wait_for  # noqa: E402

_serial = itertools.count(1)


def fresh(script):
    """A new export id for the fake's script, never seen by any cache before."""
    return "c%d-%d;%s" % (os.getpid(), next(_serial), script)


class CacheCase(GatewayCase):
    def calls(self, export_id):
        return self.fake_stats()["by_id"].get(export_id, 0)

    def get(self, path, headers=None):
        status, out, body = self.gw.request("GET", path, headers)
        return status, out, body

    def concurrently(self, functions):
        results = [None] * len(functions)

        def run(i, function):
            results[i] = function()
        threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results


class TestCacheHeadersAndTtl(CacheCase):
    overrides = {"cache_pending_ttl": "1s", "cache_final_ttl": "4s", "cache_error_ttl": "1s"}

    def test_two_polls_one_call_then_refetch_after_ttl(self):
        export_id = fresh("states=IN_PROGRESS")
        status, first, body = self.get(q(export_id))
        self.assertEqual(status, 200)
        self.assertEqual(first["x-cache"], "MISS")
        self.assertEqual(first["cache-status"], "gumloop-gateway; fwd=miss")
        self.assertEqual(first["age"], "0")
        self.assertEqual(first["cache-control"], "private, max-age=1")
        status, second, body2 = self.get(q(export_id))
        self.assertEqual((status, second["x-cache"], body2), (200, "HIT", body))
        self.assertEqual(self.calls(export_id), 1)
        self.assertRegex(second["cache-status"], r"^gumloop-gateway; hit; ttl=[01]$")
        self.assertEqual(second["cache-control"],
                         "private, max-age=" + second["cache-status"].rsplit("=", 1)[1])
        time.sleep(1.1)
        status, third, _ = self.get(q(export_id))
        self.assertEqual((status, third["x-cache"]), (200, "MISS"))
        self.assertEqual(self.calls(export_id), 2)

    def test_longest_export_id_is_cached_like_a_short_one(self):
        # Cache keys are user id + export id: short ones live on the stack, this
        # one (the longest the gateway takes) is allocated; both must match.
        export_id = fresh("states=IN_PROGRESS")
        export_id = export_id.replace(";", "x" * (256 - len(export_id)) + ";", 1)
        self.assertEqual(len(export_id), 256)
        status, first, body = self.get(q(export_id))
        self.assertEqual((status, first["x-cache"]), (200, "MISS"))
        status, second, body2 = self.get(q(export_id))
        self.assertEqual((status, second["x-cache"], body2), (200, "HIT", body))
        self.assertEqual(self.calls(export_id), 1)

    def test_every_reply_has_one_date_and_one_content_length(self):
        """The gateway writes Date (made once a second) and Content-Length itself;
        libevent must not add a second of either, for 1.1 or 1.0, hit or not."""
        export_id = fresh("states=REQUESTED")
        cases = [
            ("GET", q(export_id), "1.1", 200),  # miss
            ("GET", q(export_id), "1.1", 200),  # hit
            ("HEAD", q(export_id), "1.1", 200),
            ("GET", q(export_id), "1.0", 200),
            ("GET", "/export_status?data_export_id=a%00", "1.1", 400),
            ("GET", "/nowhere", "1.1", 404),
            ("GET", "/healthz", "1.1", 200),
        ]
        for method, path, version, expected in cases:
            raw = gwtest.raw_exchange("127.0.0.1", self.gw.port, (
                "%s %s HTTP/%s\r\nHost: gw\r\nConnection: close\r\n\r\n"
                % (method, path, version)).encode())
            head, _, body = raw.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            what = "%s %s HTTP/%s" % (method, path, version)
            self.assertEqual(int(lines[0].split()[1]), expected, what)
            names = [line.split(":", 1)[0].lower() for line in lines[1:]]
            values = dict(line.split(": ", 1) for line in lines[1:])
            self.assertEqual(names.count("date"), 1, what)
            self.assertEqual(names.count("content-length"), 1, what)
            when = email.utils.parsedate_to_datetime(values["Date"]).timestamp()
            self.assertLess(abs(when - time.time()), 3, what)
            self.assertRegex(values["Date"],
                             r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|"
                             r"Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$", what)
            length = int(values["Content-Length"])
            self.assertEqual(len(body), 0 if method == "HEAD" else length, what)
            self.assertGreater(length, 0, what)

    def test_age_and_max_age_add_up(self):
        export_id = fresh("states=COMPLETED")
        self.get(q(export_id))
        time.sleep(1.3)
        status, headers, _ = self.get(q(export_id))
        self.assertEqual(headers["x-cache"], "HIT")
        age = int(headers["age"])
        max_age = int(headers["cache-control"].split("max-age=")[1])
        self.assertEqual(age, 1)
        self.assertIn(age + max_age, (3, 4))  # whole seconds of a 4 s TTL
        self.assertEqual(self.calls(export_id), 1)

    def test_404_cached_for_error_ttl(self):
        export_id = fresh("status=404")
        for _ in range(3):
            status, headers, body = self.get(q(export_id))
            self.assertEqual(status, 404)
            self.assertEqual(json.loads(body), {"error": "scripted 404"})
        self.assertEqual(headers["x-cache"], "HIT")
        self.assertEqual(self.calls(export_id), 1)
        time.sleep(1.1)
        self.get(q(export_id))
        self.assertEqual(self.calls(export_id), 2)

    def test_errors_are_not_cached(self):
        for script in ("status=500", "status=403", "status=401", "body=invalid"):
            export_id = fresh(script)
            first = self.get(q(export_id))
            second = self.get(q(export_id))
            self.assertEqual(first[0], second[0])
            self.assertEqual(second[1]["x-cache"], "MISS")
            self.assertEqual(second[1]["cache-control"], "no-store")
            self.assertNotIn("age", second[1])
            self.assertEqual(self.calls(export_id), 2, script)

    def test_credentials_never_share_entries(self):
        export_id = fresh("states=REQUESTED")
        self.get(q(export_id))
        self.get(q(export_id, user_id=OAUTH_USER))
        self.assertEqual(self.calls(export_id), 2)
        self.assertEqual(self.get(q(export_id))[1]["x-cache"], "HIT")
        self.assertEqual(self.get(q(export_id, user_id=OAUTH_USER))[1]["x-cache"], "HIT")
        self.assertEqual(self.calls(export_id), 2)
        self.assertEqual(self.fake_stats()["last"]["headers"]["authorization"],
                         "Bearer " + OAUTH_KEY)

    def test_head_is_served_from_cache_too(self):
        export_id = fresh("states=REQUESTED")
        status, headers, body = self.get(q(export_id))
        conn = self.gw.connection()
        conn.request("HEAD", q(export_id))
        resp = conn.getresponse()
        self.assertEqual(resp.read(), b"")
        self.assertEqual(resp.getheader("X-Cache"), "HIT")
        self.assertEqual(resp.getheader("Content-Length"), str(len(body)))
        conn.close()
        self.assertEqual(self.calls(export_id), 1)


class TestDownloadShortCut(CacheCase):
    overrides = {"cache_pending_ttl": "30s", "cache_final_ttl": "30s"}

    def test_non_final_and_failed_states_answered_from_cache(self):
        for script in ("states=IN_PROGRESS", "states=REQUESTED", "states=FAILED"):
            export_id = fresh(script)
            status, _, body = self.get(q(export_id))
            status, headers, body2 = self.get(q(export_id, download="true"))
            self.assertEqual((status, headers["x-cache"], body2), (200, "HIT", body))
            self.assertEqual(self.calls(export_id), 1, script)

    def test_completed_goes_upstream_for_the_csv(self):
        export_id = fresh("states=COMPLETED;csv=96")
        status, _, body = self.get(q(export_id))
        self.assertEqual(json.loads(body)["state"], "COMPLETED")
        status, headers, csv = self.get(q(export_id, download="true"))
        self.assertEqual((status, headers["content-type"], len(csv)), (200, "text/csv", 96))
        self.assertNotIn("x-cache", headers)
        self.assertEqual(self.calls(export_id), 2)

    def test_json_answer_to_a_download_refreshes_the_cache(self):
        export_id = fresh("states=IN_PROGRESS")
        status, headers, body = self.get(q(export_id, download="true"))
        self.assertEqual((status, headers["x-cache"]), (200, "MISS"))
        status, headers, body2 = self.get(q(export_id))
        self.assertEqual((headers["x-cache"], body2), ("HIT", body))
        self.assertEqual(self.calls(export_id), 1)

    def test_concurrent_downloads_share_one_transfer(self):
        export_id = fresh("states=COMPLETED;csv=64;delay=300")
        results = self.concurrently([lambda: self.get(q(export_id, download="true"))] * 3)
        self.assertEqual([r[0] for r in results], [200] * 3)
        self.assertEqual({r[2] for r in results}, {gwtest.csv_bytes(0, 64)})
        self.assertEqual(self.calls(export_id), 1)


class TestCoalescing(CacheCase):
    overrides = {"cache_pending_ttl": "60s", "upstream_timeout": "10s"}

    def test_500_polls_over_50_connections_one_call(self):
        export_id = fresh("states=REQUESTED;delay=800")
        barrier = threading.Barrier(50)
        results = []
        lock = threading.Lock()

        def poller():
            conn = self.gw.connection(timeout=30)
            barrier.wait()
            for _ in range(10):
                conn.request("GET", q(export_id))
                resp = conn.getresponse()
                answer = (resp.status, resp.getheader("X-Cache"), resp.read())
                with lock:
                    results.append(answer)
            conn.close()
        threads = [threading.Thread(target=poller) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len(results), 500)
        self.assertEqual(self.calls(export_id), 1)
        self.assertEqual({(status, body) for status, _, body in results},
                         {(200, results[0][2])})
        kinds = [kind for _, kind, _ in results]
        self.assertEqual(kinds.count("MISS"), 1)
        self.assertGreater(kinds.count("COALESCED"), 10)
        self.assertEqual(kinds.count("MISS") + kinds.count("COALESCED") + kinds.count("HIT"), 500)

    def test_waiters_woken_when_the_answer_arrives(self):
        export_id = fresh("states=REQUESTED;delay=600")
        finished = {}

        def poll(name, wait):
            time.sleep(wait)
            status, headers, _ = self.get(q(export_id))
            finished[name] = (time.monotonic(), headers["x-cache"])
        self.concurrently([lambda: poll("leader", 0), lambda: poll("waiter", 0.2)])
        self.assertEqual(finished["leader"][1], "MISS")
        self.assertEqual(finished["waiter"][1], "COALESCED")
        # no polling interval: the waiter is answered with the leader, not 500 ms later
        self.assertLess(abs(finished["waiter"][0] - finished["leader"][0]), 0.25 * gwtest.SLACK)

    def test_failed_call_answers_every_waiter_the_same(self):
        export_id = fresh("status=503;delay=400")
        results = self.concurrently([lambda: self.get(q(export_id))] * 5)
        self.assertEqual({(r[0], r[2]) for r in results}, {(503, b'{"error":"scripted 503"}')})
        self.assertEqual(self.calls(export_id), 1)
        self.get(q(export_id))
        self.assertEqual(self.calls(export_id), 2)

    def test_waiter_that_hangs_up_leaves_the_others_alone(self):
        export_id = fresh("states=IN_PROGRESS;delay=1000")
        aborts = self.fake_stats()["client_aborts"]
        leaving = socket.create_connection(("127.0.0.1", self.gw.port))
        leaving.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % q(export_id)).encode())
        time.sleep(0.2)
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("r", self.get(q(export_id))))
        thread.start()
        time.sleep(0.2)
        leaving.close()  # the leader goes; its call goes on for the waiter
        thread.join()
        status, headers, body = result["r"]
        self.assertEqual((status, headers["x-cache"]), (200, "COALESCED"))
        self.assertEqual(json.loads(body)["state"], "IN_PROGRESS")
        self.assertEqual(self.calls(export_id), 1)
        self.assertEqual(self.fake_stats()["client_aborts"], aborts)
        self.assertEqual(self.get(q(export_id))[1]["x-cache"], "HIT")


class TestWaiterTimeout(CacheCase):
    overrides = {"upstream_timeout": "1500ms"}

    def test_waiter_never_waits_past_upstream_timeout(self):
        export_id = fresh("states=REQUESTED;delay=5000")
        started = {}

        def poll(name, wait):
            time.sleep(wait)
            started[name] = time.monotonic()
            status, _, body = self.get(q(export_id))
            return status, json.loads(body)["error"], time.monotonic() - started[name]
        leader, waiter = self.concurrently([lambda: poll("leader", 0), lambda: poll("waiter", 0.5)])
        self.assertEqual(leader[:2], (504, "upstream_timeout"))
        self.assertEqual(waiter[:2], (504, "upstream_timeout"))
        # the waiter is answered when the call times out, not after a timeout of its own
        # (under valgrind the loop is too slow for the 0.5 s head start to hold: the
        # plain and ASan runs check the order)
        if not gwtest.GATEWAY_WRAPPER:
            self.assertLess(waiter[2], leader[2])
        self.assertLess(leader[2], 1.5 + gwtest.SLACK)


class TestEviction(CacheCase):
    overrides = {"cache_pending_ttl": "60s", "cache_max_entries": "2"}

    def test_least_recently_used_goes_first(self):
        a, b, c = (fresh("states=REQUESTED") for _ in range(3))
        self.get(q(a))
        self.get(q(b))
        self.assertEqual(self.get(q(a))[1]["x-cache"], "HIT")  # b is now the oldest
        self.get(q(c))  # evicts b
        self.assertEqual(self.get(q(a))[1]["x-cache"], "HIT")
        self.assertEqual(self.get(q(c))[1]["x-cache"], "HIT")
        self.assertEqual(self.get(q(b))[1]["x-cache"], "MISS")
        self.assertEqual((self.calls(a), self.calls(b), self.calls(c)), (1, 2, 1))


class TestStaleIfError(unittest.TestCase):
    def test_stale_answer_on_timeout_and_when_down_then_502_after_the_window(self):
        fake, gw = gateway_with_own_fake("stale", cache_pending_ttl="1s",
                                         cache_stale_if_error="3s",
                                         upstream_timeout="%dms" % (700 * gwtest.SLACK))
        try:
            gw.request("GET", q(fresh("states=REQUESTED")))  # the upstream connection is up
            export_id = fresh("states=IN_PROGRESS")
            status, headers, body = gw.request("GET", q(export_id))
            fetched = time.monotonic()
            self.assertEqual((status, headers["x-cache"]), (200, "MISS"))
            time.sleep(1.1)
            fake.proc.send_signal(signal.SIGSTOP)  # upstream hangs: the refresh times out
            try:
                status, headers, stale = gw.request("GET", q(export_id))
            finally:
                fake.proc.send_signal(signal.SIGCONT)
            self.assertEqual((status, headers["x-cache"], stale), (200, "STALE", body))
            fake.stop()  # upstream gone: the refresh cannot connect
            status, headers, stale = gw.request("GET", q(export_id))
            self.assertEqual((status, headers["x-cache"], stale), (200, "STALE", body))
            self.assertGreaterEqual(int(headers["age"]), 1)
            self.assertRegex(headers["cache-status"], r"^gumloop-gateway; hit; ttl=-\d+$")
            self.assertEqual(headers["cache-control"], "private, max-age=0")
            self.assertIn("stale-if-error", gw.logs())
            self.assertEqual(metrics(gw)[0]['gumloop_gateway_cache_total{result="stale"}'], 2)
            time.sleep(max(0, fetched + 4.2 - time.monotonic()))  # past expiry + 3 s
            status, headers, body = gw.request("GET", q(export_id))
            self.assertEqual(status, 502)
            self.assertEqual(json.loads(body)["error"], "upstream_unreachable")
        finally:
            fake.stop()
            self.assertEqual(gw.stop(), 0)


class TestStaleOnUpstreamFailure(CacheCase):
    overrides = {"cache_pending_ttl": "1s", "cache_stale_if_error": "1m",
                 "upstream_timeout": "1s"}

    def test_5xx_refreshes_serve_the_stale_answer(self):
        for failure in ("503", "500"):
            export_id = fresh("states=IN_PROGRESS," + failure)
            status, headers, body = self.get(q(export_id))
            self.assertEqual((status, headers["x-cache"]), (200, "MISS"))
            time.sleep(1.1)
            status, headers, stale = self.get(q(export_id))
            self.assertEqual((status, headers["x-cache"], stale), (200, "STALE", body))
            self.assertEqual(self.calls(export_id), 2)

    def test_4xx_refresh_is_passed_through_not_stale(self):
        export_id = fresh("states=IN_PROGRESS,403")
        self.get(q(export_id))
        time.sleep(1.1)
        status, headers, body = self.get(q(export_id))
        self.assertEqual((status, headers["x-cache"]), (403, "MISS"))


class TestReload(unittest.TestCase):
    def test_cache_survives_reload_and_new_ttls_apply_to_new_entries(self):
        port = free_port()
        tmp = state["tmp"].path
        gw = Gateway(tmp, ini(base_settings(port, cache_pending_ttl="1s"), credentials()),
                     name="cachereload", env=ENV, port=port)
        try:
            before = fresh("states=REQUESTED")
            self.assertEqual(gw.request("GET", q(before))[1]["x-cache"], "MISS")
            gw.reload(ini(base_settings(port, cache_pending_ttl="30s"), credentials()),
                      expect="is in force")
            self.assertEqual(gw.request("GET", q(before))[1]["x-cache"], "HIT")
            after = fresh("states=REQUESTED")
            self.assertEqual(gw.request("GET", q(after))[1]["cache-control"],
                             "private, max-age=30")
            time.sleep(1.1)
            self.assertEqual(gw.request("GET", q(before))[1]["x-cache"], "MISS")
            self.assertEqual(gw.request("GET", q(after))[1]["x-cache"], "HIT")
        finally:
            self.assertEqual(gw.stop(), 0)


if __name__ == "__main__":
    gwtest.main()
