"""Integration tests for waiting instead of polling: wait=N and Prefer: wait=N
hold a status call (or a download) until the export's state is final, with one
upstream refresh per cache_pending_ttl for all held and polling clients; ETag
and If-None-Match. The built gateway in front of the fake upstream, whose
request counts say how many upstream calls were made. Run by `make check` (TAP)."""

import itertools
import json
import os
import resource
import selectors
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from fixtures import *  # noqa: E402,F401,F403 (setUpModule, state, q, GatewayCase, ...)
from gwtest import RawResponse, wait_for  # noqa: E402

_serial = itertools.count(1)

# "At once": well under every wait these tests ask for (valgrind makes a miss slow).
AT_ONCE = 5.0 if gwtest.GATEWAY_WRAPPER else 0.5


def fresh(script):
    """A new export id for the fake's script, never seen by any cache before."""
    return "w%d-%d;%s" % (os.getpid(), next(_serial), script)


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed


class WaitCase(GatewayCase):
    overrides = {"cache_pending_ttl": "1s", "cache_final_ttl": "30s"}

    def calls(self, export_id):
        return self.fake_stats()["by_id"].get(export_id, 0)

    def get(self, path, headers=None, timeout=30):
        return self.gw.request("GET", path, headers, timeout=timeout)

    def timed(self, path, headers=None):
        start = time.monotonic()
        status, out, body = self.get(path, headers)
        return status, out, body, time.monotonic() - start

    def in_background(self, function):
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("r", function()))
        thread.start()
        return thread, result

    def waiting(self):
        return metrics(self.gw)[0]["gumloop_gateway_waiting"]


class TestWaitForAFinalState(WaitCase):
    def test_held_until_the_refresh_that_brings_completed(self):
        export_id = fresh("states=IN_PROGRESS:2,COMPLETED")
        status, headers, body, took = self.timed(q(export_id, wait=20))
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["state"], "COMPLETED")
        # first call IN_PROGRESS, the refresh at 1 s too, the one at 2 s COMPLETED
        self.assertGreater(took, 1.8)
        self.assertLess(took, 2.0 + gwtest.SLACK)
        self.assertEqual(self.calls(export_id), 3)
        self.assertIn(headers["preference-applied"], ("wait=19", "wait=20"))
        self.assertEqual(headers["x-cache"], "COALESCED")
        self.assertRegex(headers["etag"], r'^"[0-9a-f]{16}"$')
        # the final state is cached like any other answer
        status, headers, body2 = self.get(q(export_id))
        self.assertEqual((status, headers["x-cache"], body2), (200, "HIT", body))

    def test_prefer_header_waits_the_same(self):
        export_id = fresh("states=IN_PROGRESS:2,COMPLETED")
        status, headers, body, took = self.timed(
            q(export_id), {"Prefer": "respond-async, wait=20; x=y"})
        self.assertEqual((status, json.loads(body)["state"]), (200, "COMPLETED"))
        self.assertGreater(took, 1.8)
        self.assertIn(headers["preference-applied"], ("wait=19", "wait=20"))

    def test_query_wins_over_prefer(self):
        export_id = fresh("states=IN_PROGRESS")
        status, headers, _, took = self.timed(q(export_id, wait=0), {"Prefer": "wait=20"})
        self.assertEqual((status, headers["preference-applied"]), (200, "wait=0"))
        self.assertLess(took, AT_ONCE)

    def test_final_and_error_answers_come_at_once(self):
        for script, code in (("states=COMPLETED", 200), ("states=FAILED", 200),
                             ("status=404", 404), ("status=500", 500)):
            export_id = fresh(script)
            status, headers, body, took = self.timed(q(export_id, wait=20))
            self.assertEqual(status, code, body)
            self.assertLess(took, AT_ONCE, script)
            self.assertIn(headers.get("preference-applied"), ("wait=19", "wait=20"))
            self.assertEqual(self.calls(export_id), 1)

    def test_deadline_answers_the_latest_state_and_refreshes_once_per_window(self):
        export_id = fresh("states=REQUESTED:1,IN_PROGRESS")
        status, headers, body, took = self.timed(q(export_id, wait=3))
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["state"], "IN_PROGRESS")
        # 3 s less at most 1/16 of it
        self.assertGreater(took, 3 - 3 / 16 - 0.05)
        self.assertLess(took, 3 + gwtest.SLACK)
        self.assertIn(headers["preference-applied"], ("wait=3",))
        # one call at the start, one per 1 s window after it
        self.assertIn(self.calls(export_id), (3, 4))
        time.sleep(1.5)  # nobody waits any more: no refresh
        calls = self.calls(export_id)
        time.sleep(1.5)
        self.assertEqual(self.calls(export_id), calls)

    def test_jitter_spreads_deadlines(self):
        export_id = fresh("states=IN_PROGRESS")
        results = [None] * 8

        def one(i):
            results[i] = self.timed(q(export_id, wait=8))[3]
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertTrue(all(8 - 0.5 - 0.05 < took < 8 + gwtest.SLACK for took in results), results)
        self.assertGreater(max(results) - min(results), 0.02, results)

    def test_pollers_and_held_clients_share_one_call_per_window(self):
        export_id = fresh("states=IN_PROGRESS")
        held = [self.in_background(lambda: self.timed(q(export_id, wait=4))) for _ in range(20)]
        end = time.monotonic() + 4
        polls = 0
        while time.monotonic() < end:
            self.assertEqual(self.get(q(export_id))[0], 200)
            polls += 1
            time.sleep(0.05)
        for thread, _ in held:
            thread.join()
        self.assertGreater(polls, 20)
        for _, result in held:
            self.assertEqual(result["r"][0], 200)
        # about 4 s of windows of 1 s, whoever asks
        self.assertLessEqual(self.calls(export_id), 6)

    def test_bad_waits_are_400(self):
        export_id = fresh("states=IN_PROGRESS")
        for path, headers in ((q(export_id, wait=-1), None), (q(export_id, wait="1e9"), None),
                              (q(export_id, wait=""), None), (q(export_id, wait=3601), None),
                              (q(export_id, wait="1.5"), None), (q(export_id, wait="+5"), None),
                              (q(export_id) + "&wait=1&wait=2", None),
                              (q(export_id), {"Prefer": "wait=abc"}),
                              (q(export_id), {"Prefer": "wait"}),
                              (q(export_id), {"Prefer": "wait=99999"})):
            self.assert_gateway_error(400, "bad_request", self.get(path, headers))
        self.assertEqual(self.calls(export_id), 0)
        # other preferences are not the gateway's business
        status, headers, _ = self.get(q(export_id), {"Prefer": "return=minimal"})
        self.assertEqual(status, 200)
        self.assertNotIn("preference-applied", headers)
        self.assertEqual(self.get("/healthz")[0], 200)


class TestShortClientTimeout(WaitCase):
    overrides = dict(WaitCase.overrides, client_timeout="1s")

    def test_held_past_client_timeout(self):
        export_id = fresh("states=IN_PROGRESS")
        status, _, body, took = self.timed(q(export_id, wait=3))
        self.assertEqual((status, json.loads(body)["state"]), (200, "IN_PROGRESS"))
        self.assertGreater(took, 2.7)


class TestWaitMax(WaitCase):
    overrides = dict(WaitCase.overrides, wait_max="2s", max_waiting="2")

    def test_wait_is_capped_by_wait_max(self):
        export_id = fresh("states=IN_PROGRESS")
        status, headers, _, took = self.timed(q(export_id, wait=3600))
        self.assertEqual((status, headers["preference-applied"]), (200, "wait=2"))
        self.assertGreater(took, 2 - 2 / 16 - 0.05)
        self.assertLess(took, 2 + gwtest.SLACK)

    def test_beyond_max_waiting_answered_at_once_as_if_not_asked(self):
        # a pooled upstream connection first: under valgrind a new one's TLS handshake
        # keeps the loop busy for most of wait_max, and the holds would be over unseen
        self.timed(q(fresh("states=IN_PROGRESS")))
        export_id = fresh("states=IN_PROGRESS")
        held = [self.in_background(lambda: self.timed(q(export_id, wait=8))) for _ in range(2)]
        wait_for(lambda: self.waiting() == 2, timeout=5, what="two held requests")
        status, headers, _, took = self.timed(q(export_id, wait=8))
        self.assertEqual(status, 200)
        self.assertNotIn("preference-applied", headers)
        self.assertLess(took, AT_ONCE)
        for thread, result in held:
            thread.join()
            self.assertEqual(result["r"][1]["preference-applied"], "wait=2")


class TestWaitingOff(WaitCase):
    overrides = dict(WaitCase.overrides, wait_max="0")

    def test_wait_max_0_answers_at_once(self):
        export_id = fresh("states=IN_PROGRESS")
        status, headers, _, took = self.timed(q(export_id, wait=20))
        self.assertEqual(status, 200)
        self.assertNotIn("preference-applied", headers)
        self.assertLess(took, AT_ONCE)


class TestHeldClientsComeAndGo(WaitCase):
    def test_a_held_client_that_hangs_up_is_dropped(self):
        export_id = fresh("states=IN_PROGRESS")
        sock = socket.create_connection(("127.0.0.1", self.gw.port))
        sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % q(export_id, wait=30)).encode())
        wait_for(lambda: self.waiting() == 1, timeout=5, what="the request to be held")
        sock.close()
        wait_for(lambda: self.waiting() == 0, timeout=2 * gwtest.SLACK, what="the hold dropped")
        samples, _ = metrics(self.gw)
        # no refresh once nobody waits
        time.sleep(1.5)
        calls = self.calls(export_id)
        time.sleep(1.5)
        self.assertEqual(self.calls(export_id), calls)
        self.assertEqual(self.get("/healthz")[0], 200)

    def test_metrics_count_waits_by_result(self):
        before, text = metrics(self.gw)
        self.assertIn("# TYPE gumloop_gateway_waiting gauge", text)
        export_id = fresh("states=IN_PROGRESS:2,COMPLETED")
        self.assertEqual(self.get(q(export_id, wait=20))[0], 200)
        self.assertEqual(self.get(q(fresh("states=IN_PROGRESS"), wait=1))[0], 200)
        after, _ = metrics(self.gw)
        for result, grew in (("final", 1), ("timeout", 1), ("changed", 0)):
            name = 'gumloop_gateway_wait_total{result="%s"}' % result
            self.assertEqual(after[name] - before[name], grew, name)
        self.assertEqual(after["gumloop_gateway_waiting"], 0)

    def test_many_held_clients_answered_together_with_one_call_per_window(self):
        clients = 1000 if not gwtest.GATEWAY_WRAPPER else 100
        if not raise_fd_limit(clients + 100):
            self.skipTest("RLIMIT_NOFILE too low for %d clients" % clients)
        export_id = fresh("states=IN_PROGRESS:2,COMPLETED")
        path = q(export_id, wait=20)
        selector = selectors.DefaultSelector()
        socks = []
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", self.gw.port))
            sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, bytearray())
            socks.append(sock)
        received = {}
        deadline = time.monotonic() + 20 + gwtest.SLACK
        while len(received) < clients and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                data = key.fileobj.recv(65536)
                if data:
                    key.data.extend(data)
                if b"\r\n\r\n" in key.data and key.fileobj not in received:
                    head, _, body = bytes(key.data).partition(b"\r\n\r\n")
                    length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")][0])
                    if len(body) >= length:
                        received[key.fileobj] = (time.monotonic(), head, body)
                        selector.unregister(key.fileobj)
        for sock in socks:
            sock.close()
        self.assertEqual(len(received), clients)
        stamps = sorted(when for when, _, _ in received.values())
        for _, head, body in received.values():
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            self.assertEqual(json.loads(body)["state"], "COMPLETED")
        # one call per window for all of them: the first, the refresh at 1 s, at 2 s
        self.assertEqual(self.calls(export_id), 3)
        final_ms = self.fake_stats().get("first_final_ms", {})
        sent = final_ms.get(export_id) if isinstance(final_ms, dict) else None
        spread = stamps[-1] - stamps[0]
        # all answered together, in the turn of the answer that ended the wait: a
        # poll loop (nginx's cache lock re-checks every 500 ms) would spread them
        # over its interval. The 50 ms goal itself is bench/run wait's to measure
        # (p99 25 ms at N=1000); on a shared 2-core CI machine a plain build
        # measured 55-78 ms here while other work ran, so the test allows 250 ms,
        # and valgrind more
        bound = 0.25
        if gwtest.GATEWAY_WRAPPER:
            bound = 0.05 * gwtest.SLACK * 10
        self.assertLess(spread, bound, "first %.3f last %.3f" % (stamps[0], stamps[-1]))
        if sent is not None:
            self.assertLess(stamps[-1] - sent / 1000.0, bound)


class TestDownloadWait(WaitCase):
    def test_held_download_streams_the_csv_once_completed(self):
        export_id = fresh("states=IN_PROGRESS:2,COMPLETED;csv=200k")
        start = time.monotonic()
        status, headers, body = self.get(q(export_id, download="true", wait=20))
        took = time.monotonic() - start
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/csv"), headers)
        self.assertEqual(body, gwtest.csv_bytes(0, 200 * 1024))
        self.assertEqual(headers["content-length"], str(200 * 1024))
        self.assertIn(headers["preference-applied"], ("wait=19", "wait=20"))
        self.assertGreater(took, 1.8)
        self.assertLess(took, 2 + 2 * gwtest.SLACK)

    def test_held_download_deadline_gets_the_json_state(self):
        export_id = fresh("states=IN_PROGRESS;csv=1k")
        status, headers, body = self.get(q(export_id, download="true", wait=2))
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["state"], "IN_PROGRESS")
        self.assertTrue(headers["content-type"].startswith("application/json"))

    def test_held_download_of_a_failed_export_gets_its_json(self):
        export_id = fresh("states=IN_PROGRESS:1,FAILED")
        status, _, body = self.get(q(export_id, download="true", wait=20))
        self.assertEqual((status, json.loads(body)["state"]), (200, "FAILED"))

    def test_held_download_cut_mid_body_is_cut_for_the_client(self):
        export_id = fresh("states=IN_PROGRESS:1,COMPLETED;csv=100k;cut=5000")
        sock = socket.create_connection(("127.0.0.1", self.gw.port), timeout=30)
        try:
            sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
                          % q(export_id, download="true", wait=20)).encode())
            response = RawResponse(sock)
            body, complete = response.read_all()
        finally:
            sock.close()
        self.assertEqual(response.status, 200)
        self.assertEqual(body, gwtest.csv_bytes(0, 5000))
        self.assertFalse(complete)


class TestETag(WaitCase):
    def test_304_for_the_same_body(self):
        export_id = fresh("states=IN_PROGRESS")
        status, headers, body = self.get(q(export_id))
        self.assertEqual(status, 200, body)
        etag = headers["etag"]
        self.assertRegex(etag, r'^"[0-9a-f]{16}"$')
        for value in (etag, "W/" + etag, '"other", ' + etag, "*"):
            status, headers2, body2 = self.get(q(export_id), {"If-None-Match": value})
            self.assertEqual((status, body2), (304, b""), value)
            self.assertEqual(headers2["etag"], etag)
            self.assertIn("cache-control", headers2)
            self.assertNotIn("content-length", headers2)
        status, _, body3 = self.get(q(export_id), {"If-None-Match": '"0000000000000000"'})
        self.assertEqual((status, body3), (200, body))
        # HEAD says the same
        status, headers4, _ = self.gw.request("HEAD", q(export_id), {"If-None-Match": etag})
        self.assertEqual(status, 304)

    def test_etag_follows_the_body(self):
        export_id = fresh("states=REQUESTED:1,IN_PROGRESS")
        first = self.get(q(export_id))[1]["etag"]
        time.sleep(1.1)
        second = self.get(q(export_id))[1]["etag"]
        self.assertNotEqual(first, second)

    def test_wait_with_if_none_match_is_held_until_the_body_changes(self):
        export_id = fresh("states=REQUESTED:2,IN_PROGRESS")
        etag = self.get(q(export_id))[1]["etag"]
        before, _ = metrics(self.gw)
        start = time.monotonic()
        status, headers, body = self.get(q(export_id, wait=20), {"If-None-Match": etag})
        took = time.monotonic() - start
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["state"], "IN_PROGRESS")
        self.assertNotEqual(headers["etag"], etag)
        self.assertGreater(took, 0.5)
        self.assertLess(took, 2 + gwtest.SLACK)
        after, _ = metrics(self.gw)
        self.assertEqual(after['gumloop_gateway_wait_total{result="changed"}'] -
                         before['gumloop_gateway_wait_total{result="changed"}'], 1)

    def test_wait_with_if_none_match_gets_304_at_the_deadline(self):
        export_id = fresh("states=IN_PROGRESS")
        etag = self.get(q(export_id))[1]["etag"]
        status, headers, body, took = self.timed(q(export_id, wait=2), {"If-None-Match": etag})
        self.assertEqual((status, body, headers["etag"]), (304, b"", etag))
        self.assertGreater(took, 2 - 2 / 16 - 0.05)

    def test_wait_with_a_stale_etag_answers_at_once(self):
        export_id = fresh("states=IN_PROGRESS")
        self.get(q(export_id))
        status, _, _, took = self.timed(q(export_id, wait=20), {"If-None-Match": '"ffff"'})
        self.assertEqual(status, 200)
        self.assertLess(took, AT_ONCE)

    def test_a_final_state_the_client_has_is_304_at_once(self):
        export_id = fresh("states=COMPLETED")
        etag = self.get(q(export_id))[1]["etag"]
        status, _, _, took = self.timed(q(export_id, wait=20), {"If-None-Match": etag})
        self.assertEqual(status, 304)
        self.assertLess(took, AT_ONCE)


class TestDrainAnswersHeldRequests(unittest.TestCase):
    def test_sigterm_answers_every_held_request_at_once(self):
        gw = start_gateway("drain-held", cache_pending_ttl="1s")
        try:
            export_id = fresh("states=IN_PROGRESS")
            results = []
            lock = threading.Lock()

            def one():
                start = time.monotonic()
                response = gw.request("GET", q(export_id, wait=30), timeout=30)
                with lock:
                    results.append((response, time.monotonic() - start))
            threads = [threading.Thread(target=one) for _ in range(10)]
            for thread in threads:
                thread.start()
            wait_for(lambda: metrics(gw)[0]["gumloop_gateway_waiting"] == 10, timeout=10,
                     what="ten held requests")
            signalled = time.monotonic()
            gw.signal(signal.SIGTERM)
            for thread in threads:
                thread.join()
            self.assertLess(time.monotonic() - signalled, 1.0 * gwtest.SLACK)
            for (status, headers, body), _ in results:
                self.assertEqual(status, 200)
                self.assertEqual(json.loads(body)["state"], "IN_PROGRESS")
                self.assertEqual(headers.get("connection"), "close")
            self.assertEqual(gw.proc.wait(10), 0)
        finally:
            gw.stop()


if __name__ == "__main__":
    gwtest.main()
