"""Integration tests for fleet mode (README "Fleet mode"): several built gateways
share one real redis-server (started here, on a free port, with a password and
an ACL user limited to the gateways' prefix) in front of one fake upstream,
whose request counts say how many upstream calls the whole fleet made. One call
per key per window across the fleet; held clients on every instance woken when
one instance's refresh brings the final state; Redis killed, stopped, paused,
refusing: every request still answered, each instance alone, logged once,
counted; `-t` checks that Redis answers; nothing in Redis in clear. Run by
`make check` (TAP)."""

import itertools
import json
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from fixtures import *  # noqa: E402,F401,F403 (setUpModule, state, q, metrics, ...)
from gwtest import Redis, Resp, free_port, ini, wait_for  # noqa: E402

_serial = itertools.count(1)

VALGRIND = bool(gwtest.GATEWAY_WRAPPER)
ASAN = gwtest.sanitized()
# How much slower than a plain build the gateway runs: timing bounds scale with it.
SLOW = 30.0 if VALGRIND else 3.0 if ASAN else 1.0
# The 50 ms goal for waking held clients on other instances (bench/ measures the
# goal itself; ASan and valgrind get more).
WAKE_BOUND = 0.05 * SLOW
REDIS_TIMEOUT = 0.25
AUTH = {"Authorization": "Bearer " + CLIENT_TOKEN}
# a client with a rate: 2/s, so a burst of 4, for the whole fleet
METER_TOKEN = "meter-token-0123456789abcdef"
METER = {"Authorization": "Bearer " + METER_TOKEN}
# a client that may start exports (POST /export_data with Idempotency-Key)
STARTER_TOKEN = "starter-token-fleet-0123456789"
STARTS = {"Authorization": "Bearer " + STARTER_TOKEN, "Content-Type": "application/json"}
EXPORT_BODY = {"export_fields": ["run_id", "credit_cost"], "start_date": "2025-01-01T00:00:00Z",
               "end_date": "2025-12-31T23:59:59Z", "data_type": "workflows",
               "include_all_workspaces": True}
UP = "gumloop_gateway_redis_up"
ERRORS = "gumloop_gateway_redis_errors_total"


def fresh(script):
    """A new export id for the fake's script, never seen by any cache before."""
    return "fl%d-%d;%s" % (os.getpid(), next(_serial), script)


def calls(export_id):
    return state["fake"].stats()["by_id"].get(export_id, 0)


def per_window(elapsed, ttl):
    """The most calls one caller can make for one key in elapsed seconds: one, then
    one per expired window."""
    return int(elapsed // ttl) + 1


def metric(gw, name):
    """The sum of every sample of the family name (labels or none); None if absent."""
    samples, _ = metrics(gw)
    found = [v for k, v in samples.items() if k == name or k.startswith(name + "{")]
    return sum(found) if found else None


def metrics_text(gws):
    return "\n".join("%s: %s=%s %s=%s" % (gw.conf, UP, metric(gw, UP), ERRORS, metric(gw, ERRORS))
                     for gw in gws)


def redis_log_lines(gw):
    """The gateway's warning and error lines that are about Redis."""
    return [line for line in gw.logs().splitlines()
            if re.match(r"<[0-4]>", line) and "redis" in line.lower()]


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed


def _parse(buffer):
    if b"\r\n\r\n" not in buffer:
        return None
    head, _, body = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return None
    return int(lines[0].split()[1]), headers, body[:length]


def fire(targets, timeout):
    """Sends every (port, path) request at once, each on a socket of its own, with
    the client token. Returns, in order, (status, headers, body, sent, answered) with
    time.monotonic() stamps, or None for a request not answered within timeout."""
    selector = selectors.DefaultSelector()
    socks, results = [], [None] * len(targets)
    try:
        for i, (port, path) in enumerate(targets):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
            sent = time.monotonic()
            sock.sendall(("GET %s HTTP/1.1\r\nHost: fleet\r\nAuthorization: %s\r\n\r\n"
                          % (path, AUTH["Authorization"])).encode())
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, (i, sent, bytearray()))
        pending = len(targets)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                i, sent, buffer = key.data
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                buffer.extend(data)
                parsed = _parse(buffer)
                if parsed is not None or not data:
                    if parsed is not None:
                        results[i] = parsed + (sent, time.monotonic())
                    selector.unregister(key.fileobj)
                    pending -= 1
    finally:
        for sock in socks:
            sock.close()
        selector.close()
    return results


def password_file(redis, password=None):
    path = os.path.join(state["tmp"].path, "redis-%d-%d.password" % (redis.port, next(_serial)))
    with open(path, "w") as f:
        f.write((password or redis.user_password) + "\n")
    os.chmod(path, 0o600)
    return path


def fleet_sections():
    return credentials() + [("client reports", [("token", CLIENT_TOKEN),
                                                ("credentials", "default team")]),
                            ("client meter", [("token", METER_TOKEN), ("credentials", "default"),
                                              ("rate", "2/s")]),
                            ("client starter", [("token", STARTER_TOKEN),
                                                ("credentials", "default"),
                                                ("scopes", "status download export")])]


def fleet_settings(server, **overrides):
    """The Redis keys of a fleet member on server (a Redis), with overrides."""
    settings = {"redis": server.address, "redis_user": server.user,
                "redis_password": "file:" + password_file(server),
                "redis_prefix": server.prefix, "redis_timeout": "%dms" % (REDIS_TIMEOUT * 1000)}
    settings.update(overrides)
    return settings


def start_member(name, server, **overrides):
    """A gateway of the fleet on server (overrides of None drop a key)."""
    return start_gateway(name, fleet_sections(), **fleet_settings(server, **overrides))


def stop_all(gws, redis):
    """Stops every gateway; fails if one did not exit 0 or logged a secret."""
    problems = []
    hidden = SECRETS + [METER_TOKEN, STARTER_TOKEN, redis.password, redis.user_password]
    for gw in gws:
        code = gw.stop()
        logs = gw.logs()
        if code != 0:
            problems.append("%s exited %s:\n%s" % (gw.conf, code, logs[-3000:]))
        for secret in hidden:
            if secret in logs:
                problems.append("a secret is in the logs of " + gw.conf)
    assert not problems, "\n".join(problems)


class FleetCase(unittest.TestCase):
    """members gateways on one Redis of the class's own and the module's fake."""

    members = 3
    overrides = {}
    prefix = "gumloop-gateway:"

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis(state["tmp"].path, "redis-" + cls.__name__, prefix=cls.prefix)
        cls.gws = []
        try:
            for i in range(cls.members):
                cls.gws.append(start_member("%s-%d" % (cls.__name__, i), cls.redis,
                                            **cls.overrides))
        except BaseException:
            for gw in cls.gws:
                gw.stop()
            cls.redis.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.redis.resume()
            stop_all(cls.gws, cls.redis)
        finally:
            cls.redis.stop()

    def setUp(self):
        self.assert_redis_up(1, 10 * SLOW)

    def assert_redis_up(self, value, timeout):
        try:
            wait_for(lambda: all(metric(gw, UP) == value for gw in self.gws), timeout=timeout,
                     what="%s %d on every gateway" % (UP, value))
        except AssertionError as e:
            self.fail("%s\n%s" % (e, metrics_text(self.gws)))

    def get(self, gw, path, timeout=15):
        return gw.request("GET", path, AUTH, timeout=timeout)

    def poll(self, export_id, seconds, state_expected="IN_PROGRESS"):
        """Polls export_id on every member in turn for seconds, each answer 200 with
        state_expected; returns the seconds from the first request to the last."""
        start = time.monotonic()
        while True:
            for gw in self.gws:
                status, _, body = self.get(gw, q(export_id), timeout=10 * SLOW)
                self.assertEqual(status, 200, body)
                self.assertEqual(json.loads(body)["state"], state_expected)
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                return elapsed
            time.sleep(0.03)


class TestOneCallPerWindowAcrossTheFleet(FleetCase):
    TTL = 6.0 if VALGRIND else 2.0
    overrides = {"cache_pending_ttl": "%ds" % TTL, "cache_final_ttl": "30s"}

    def assert_answers(self, results, export_id, state_expected):
        missing = sum(1 for r in results if r is None)
        self.assertEqual(missing, 0, "%d of %d requests not answered" % (missing, len(results)))
        for status, _, body, _, _ in results:
            self.assertEqual(status, 200, body)
            document = json.loads(body)
            self.assertEqual(document["state"], state_expected)
            self.assertEqual(document["data_export_id"], export_id)

    def test_300_pollers_on_3_gateways_cost_one_upstream_call_per_window(self):
        pollers = 60 if VALGRIND else 300
        if not raise_fd_limit(pollers + 100):
            self.skipTest("RLIMIT_NOFILE too low for %d pollers" % pollers)
        # the fake takes 300 ms to answer: every instance misses while the first call is out
        export_id = fresh("states=IN_PROGRESS;delay=300")
        targets = [(self.gws[i % len(self.gws)].port, q(export_id)) for i in range(pollers)]
        results = fire(targets, 10 * SLOW)
        self.assert_answers(results, export_id, "IN_PROGRESS")
        self.assertEqual(calls(export_id), 1, "upstream calls for %d pollers on %d gateways"
                         % (pollers, len(self.gws)))
        # the same window, again on every instance: hits
        first_answer = min(r[4] for r in results)
        self.assert_answers(fire(targets[:30], 10 * SLOW), export_id, "IN_PROGRESS")
        if time.monotonic() - first_answer < self.TTL:
            self.assertEqual(calls(export_id), 1)
        # the next window: one more call for the whole fleet
        time.sleep(max(0.0, first_answer + self.TTL + 0.3 - time.monotonic()))
        results = fire(targets, 10 * SLOW)
        self.assert_answers(results, export_id, "IN_PROGRESS")
        self.assertEqual(calls(export_id), 2, "upstream calls after the second window")


class TestRateSharedAcrossTheFleet(FleetCase):
    overrides = {"cache_pending_ttl": "30s"}

    def statuses(self, export_id, count):
        """count requests of the metered client, round robin over the members."""
        answers = []
        for i in range(count):
            status, headers, _ = self.gws[i % len(self.gws)].request(
                "GET", q(export_id), METER, timeout=10 * SLOW)
            answers.append((status, headers.get("retry-after")))
        return answers

    def test_one_bucket_per_client_for_the_fleet(self):
        export_id = fresh("states=IN_PROGRESS")
        started = time.monotonic()
        answers = self.statuses(export_id, 12)
        took = time.monotonic() - started
        allowed = sum(1 for status, _ in answers if status == 200)
        # a burst of 4 and 2/s for the fleet; alone, each of 3 would allow 4 at once
        self.assertGreaterEqual(allowed, 4, answers)
        self.assertLessEqual(allowed, 4 + int(2 * took) + 1, (answers, took))
        refused = [retry for status, retry in answers if status == 429]
        self.assertTrue(refused, answers)
        self.assertTrue(all(retry is not None and int(retry) >= 1 for retry in refused),
                        answers)
        # every member refused at least once: the bucket is not one member's
        refusers = {i % len(self.gws) for i, (status, _) in enumerate(answers)
                    if status == 429}
        self.assertEqual(refusers, set(range(len(self.gws))), answers)

    def test_redis_down_means_a_bucket_per_member(self):
        export_id = fresh("states=IN_PROGRESS")
        self.redis.pause()
        try:
            # each member gives up on Redis within redis_timeout, then counts alone
            answers = self.statuses(export_id, 12)
        finally:
            self.redis.resume()
        self.assertTrue(all(status in (200, 429) for status, _ in answers), answers)
        self.assertGreater(sum(1 for status, _ in answers if status == 200), 4, answers)


class TestIdempotencyAcrossTheFleet(FleetCase):
    overrides = {"upstream_timeout": "60s"}
    # the first export is held upstream this long: the others come meanwhile
    DELAY_MS = int(3000 * SLOW ** 0.5)

    def post(self, gw, key, **changes):
        document = dict(EXPORT_BODY, **changes)
        headers = dict(STARTS, **{"Idempotency-Key": key})
        return gw.request("POST", "/export_data", headers, body=json.dumps(document).encode(),
                          timeout=10 * SLOW)

    def exports(self):
        return state["fake"].stats()["export_data"]

    def test_a_retry_on_another_instance_replays_the_answer(self):
        key = "fleet-replay-%d" % next(_serial)
        before = self.exports()
        status, headers, first = self.post(self.gws[0], key)
        self.assertEqual(status, 200, first)
        self.assertNotIn("idempotent-replayed", headers)
        for gw in self.gws[1:]:
            status, headers, again = self.post(gw, key)
            self.assertEqual((status, again), (200, first))
            self.assertEqual(headers.get("idempotent-replayed"), "true")
        self.assertEqual(self.exports(), before + 1)
        # the same key with another body, on another instance
        status, _, raw = self.post(self.gws[2], key, data_type="agents")
        self.assertEqual((status, json.loads(raw)["error"]), (422, "idempotency_key_reused"))
        self.assertEqual(self.exports(), before + 1)

    def test_409_on_every_instance_while_one_has_the_key_in_flight(self):
        key = "fleet-burst-%d" % next(_serial)
        before = self.exports()
        results = [None] * 9
        def post(i):
            results[i] = self.post(self.gws[i % 3], key, fake_delay_ms=str(self.DELAY_MS))
        first = threading.Thread(target=post, args=(0,))
        first.start()
        wait_for(lambda: self.exports() == before + 1, timeout=10 * SLOW,
                 what="the first export upstream")
        others = [threading.Thread(target=post, args=(i,)) for i in range(1, 9)]
        for t in others:
            t.start()
        for t in [first] + others:
            t.join(30)
        statuses = [r[0] for r in results]
        self.assertEqual(statuses[0], 200, statuses)
        self.assertEqual(statuses[1:], [409] * 8, statuses)
        for status, headers, raw in results[1:]:
            self.assertEqual(headers.get("retry-after"), "1")
            self.assertEqual(json.loads(raw)["error"], "idempotency_in_progress")
        self.assertEqual(self.exports(), before + 1)
        status, headers, _ = self.post(self.gws[1], key, fake_delay_ms=str(self.DELAY_MS))
        self.assertEqual((status, headers.get("idempotent-replayed")), (200, "true"))
        self.assertEqual(self.exports(), before + 1)

    def test_a_5xx_is_not_kept_for_the_fleet(self):
        key = "fleet-500-%d" % next(_serial)
        before = self.exports()
        for gw in self.gws:
            status, headers, _ = self.post(gw, key, fake_answer="500")
            self.assertEqual(status, 500)
            self.assertNotIn("idempotent-replayed", headers)
        self.assertEqual(self.exports(), before + 3)


class TestReload(unittest.TestCase):
    """SIGHUP sets, changes and unsets redis on a running gateway."""

    def test_sighup_sets_and_unsets_redis(self):
        redis = Redis(state["tmp"].path, "redis-reload")
        other = Redis(state["tmp"].path, "redis-reload-b")
        alone = start_gateway("reload-0", fleet_sections(), cache_pending_ttl="30s")
        member = start_member("reload-1", redis, cache_pending_ttl="30s")
        gws = [alone, member]
        try:
            self.assertEqual(metric(alone, UP), 0)

            def config(**redis_settings):
                return ini(base_settings(alone.port, cache_pending_ttl="30s", **redis_settings),
                           fleet_sections())

            alone.reload(config(**fleet_settings(redis)))
            wait_for(lambda: metric(alone, UP) == 1, timeout=10 * SLOW, what="redis_up 1")
            # now one fleet with member: one upstream call for both
            export_id = fresh("states=IN_PROGRESS")
            for gw in (member, alone, member, alone):
                self.assertEqual(gw.request("GET", q(export_id), AUTH)[0], 200)
            self.assertEqual(calls(export_id), 1)
            # another Redis: reconnected there (member stays on the first one)
            alone.reload(config(**fleet_settings(other)))
            wait_for(lambda: metric(alone, UP) == 1, timeout=10 * SLOW, what="redis_up 1 again")
            export_id = fresh("states=IN_PROGRESS")
            for gw in (member, alone):
                self.assertEqual(gw.request("GET", q(export_id), AUTH)[0], 200)
            self.assertEqual(calls(export_id), 2)
            self.assertTrue(other.scan(), "nothing stored in the new Redis")
            # unset: alone again
            alone.reload(config())
            wait_for(lambda: metric(alone, UP) == 0, timeout=10 * SLOW, what="redis_up 0")
            self.assertIn("unset by the reload", alone.logs())
            export_id = fresh("states=IN_PROGRESS")
            for gw in (alone, alone):
                self.assertEqual(gw.request("GET", q(export_id), AUTH)[0], 200)
            self.assertEqual(calls(export_id), 1)
        finally:
            try:
                stop_all(gws, redis)
            finally:
                redis.stop()
                other.stop()


class TestHeldClientsWokenAcrossTheFleet(FleetCase):
    TTL = 1.0
    overrides = {"cache_pending_ttl": "1s", "cache_final_ttl": "30s"}

    def test_held_clients_on_every_instance_answered_when_one_refresh_brings_completed(self):
        per_member = 10 if VALGRIND else 20
        if not raise_fd_limit(per_member * len(self.gws) + 100):
            self.skipTest("RLIMIT_NOFILE too low")
        # IN_PROGRESS until 2.6 s after the fake first sees the id, then COMPLETED
        export_id = fresh("ready=2600")
        started = time.monotonic()
        status, _, body = self.get(self.gws[0], q(export_id))
        self.assertEqual((status, json.loads(body)["state"]), (200, "IN_PROGRESS"), body)
        targets = [(gw.port, q(export_id, wait=10)) for gw in self.gws for _ in range(per_member)]
        results = fire(targets, 10 + 3 * gwtest.SLACK)
        missing = sum(1 for r in results if r is None)
        self.assertEqual(missing, 0, "%d held requests not answered" % missing)
        for status, headers, body, _, _ in results:
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)["state"], "COMPLETED", body)
        sent_ms = state["fake"].stats()["first_final_ms"].get(export_id)
        self.assertIsNotNone(sent_ms, "the fake never sent COMPLETED")
        sent = sent_ms / 1000.0
        # one refresh per window for the whole fleet, however many instances hold
        self.assertLessEqual(calls(export_id), per_window(sent - started, self.TTL),
                             "upstream calls, %.3f s from the first to the final one"
                             % (sent - started))
        # every held client, on every instance, answered right after the one refresh
        # that brought COMPLETED (only one instance made it: the others learnt it
        # through Redis)
        for index, gw in enumerate(self.gws):
            mine = results[index * per_member:(index + 1) * per_member]
            late = max(r[4] for r in mine) - sent
            self.assertLess(late, WAKE_BOUND,
                            "gateway %d: last held client answered %.0f ms after the fake "
                            "sent COMPLETED" % (index, late * 1000))
            self.assertGreater(min(r[4] for r in mine), sent - 0.005)


class TestRedisKilledAndRestarted(FleetCase):
    TTL = 1.0
    PHASE = 3.0
    overrides = {"cache_pending_ttl": "1s"}

    def test_killed_each_serves_alone_then_one_call_per_window_again(self):
        n = len(self.gws)
        export_id = fresh("states=IN_PROGRESS")
        elapsed = self.poll(export_id, self.PHASE)
        self.assertLessEqual(calls(export_id), per_window(elapsed, self.TTL), "Redis up")

        # misses in flight (the fake answers after 800 ms) when Redis dies
        slow_id = fresh("states=IN_PROGRESS;delay=800")
        in_flight = {}
        thread = threading.Thread(target=lambda: in_flight.setdefault("r", fire(
            [(self.gws[i % n].port, q(slow_id)) for i in range(30)], 10 * SLOW)))
        thread.start()
        time.sleep(0.3)
        killed = time.monotonic()
        self.redis.kill()
        export_id = fresh("states=IN_PROGRESS")
        elapsed = self.poll(export_id, self.PHASE)
        thread.join()
        for result in in_flight["r"]:
            self.assertIsNotNone(result, "a request in flight when Redis died was not answered")
            self.assertEqual(result[0], 200, result[2])
            self.assertEqual(json.loads(result[2])["state"], "IN_PROGRESS")
        self.assertLessEqual(calls(slow_id), n)
        self.assertLessEqual(calls(export_id), n * per_window(elapsed, self.TTL), "Redis dead")
        for gw in self.gws:
            self.assertEqual(metric(gw, UP), 0, "%.1f s after the kill: %s"
                             % (time.monotonic() - killed, gw.conf))

        self.redis.restart()
        restarted = time.monotonic()
        self.assert_redis_up(1, 6 * SLOW)
        back = time.monotonic() - restarted
        export_id = fresh("states=IN_PROGRESS")
        elapsed = self.poll(export_id, self.PHASE)
        self.assertLessEqual(calls(export_id), per_window(elapsed, self.TTL),
                             "Redis restarted (redis_up 1 after %.1f s)" % back)
        self.assertTrue(self.redis.scan(self.prefix + "*"), "nothing stored in the new Redis")


class TestRedisLoading(FleetCase):
    """Redis restarted with a dump to load answers -LOADING meanwhile: each instance
    serves alone, says so once, and the fleet shares again once it is loaded."""

    TTL = 1.0
    overrides = {"cache_pending_ttl": "1s"}
    KEYS = 80000 if VALGRIND else 40000  # about 3 s of loading (6 s under valgrind)

    def test_loading_redis_serves_each_alone_then_the_fleet_again(self):
        n = len(self.gws)
        logged = [len(redis_log_lines(gw)) for gw in self.gws]
        self.redis.restart_loading(self.KEYS, 20)
        loading_seen = time.monotonic()
        self.assert_redis_up(0, 5 * SLOW)
        export_id = fresh("states=IN_PROGRESS")
        elapsed = self.poll(export_id, 1.5)
        still_loading = not self.redis.loaded()
        self.assertTrue(still_loading, "Redis loaded its dump in %.1f s: too fast for this "
                        "test" % (time.monotonic() - loading_seen))
        self.assertLessEqual(calls(export_id), n * per_window(elapsed, self.TTL), "loading")
        wait_for(self.redis.loaded, timeout=60, what="Redis done loading")
        self.assert_redis_up(1, 8 * SLOW)
        export_id = fresh("states=IN_PROGRESS")
        elapsed = self.poll(export_id, 2.5)
        self.assertLessEqual(calls(export_id), per_window(elapsed, self.TTL), "loaded")
        for gw, before in zip(self.gws, logged):
            lines = redis_log_lines(gw)[before:]
            # the restart and the -LOADING refusals are one outage: one line for it
            self.assertEqual(len(lines), 1, "%s logged:\n%s" % (gw.conf, "\n".join(lines)))
            self.assertIn("back; the fleet shares its state again", gw.logs())


class TestRedisOutOfMemory(FleetCase):
    """Redis at maxmemory (noeviction) refuses every write with -OOM: requests are
    still answered, each instance coalesces alone, one line per instance, errors
    counted; the fleet shares again once Redis has room."""

    TTL = 1.0
    overrides = {"cache_pending_ttl": "1s"}

    def test_oom_redis_serves_each_alone_then_the_fleet_again(self):
        n = len(self.gws)
        errors = [metric(gw, ERRORS) for gw in self.gws]
        logged = [len(redis_log_lines(gw)) for gw in self.gws]
        self.redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        self.redis.command("CONFIG", "SET", "maxmemory", "1")
        try:
            export_id = fresh("states=IN_PROGRESS")
            elapsed = self.poll(export_id, 2.5)
            self.assertLessEqual(calls(export_id), n * per_window(elapsed, self.TTL), "OOM")
            # concurrent misses on every instance while Redis refuses: all answered
            shared = fresh("states=IN_PROGRESS;delay=300")
            results = fire([(self.gws[i % n].port, q(shared)) for i in range(30)], 10 * SLOW)
            for result in results:
                self.assertIsNotNone(result, "not answered while Redis refuses writes")
                self.assertEqual(result[0], 200, result[2])
            self.assertLessEqual(calls(shared), n)
            self.assertEqual(self.redis.scan(self.prefix + "*"), [])
        finally:
            self.redis.command("CONFIG", "SET", "maxmemory", "0")
        for gw, before, old in zip(self.gws, logged, errors):
            lines = redis_log_lines(gw)[before:]
            self.assertEqual(len(lines), 1, "%s logged:\n%s" % (gw.conf, "\n".join(lines)))
            self.assertRegex(lines[0], r"OOM")
            self.assertGreater(metric(gw, ERRORS), old, gw.conf)
        export_id = fresh("states=IN_PROGRESS")
        elapsed = self.poll(export_id, 2.5)
        self.assertLessEqual(calls(export_id), per_window(elapsed, self.TTL), "room again")
        self.assertTrue(self.redis.scan(self.prefix + "*"), "nothing stored after OOM")


class TestStaleIfErrorAcrossTheFleet(FleetCase):
    """An answer one instance stored is served stale by every instance when the
    fleet's one refresh fails."""

    TTL = 1.0
    overrides = {"cache_pending_ttl": "1s", "cache_stale_if_error": "1m"}

    def test_failed_refresh_serves_the_stale_answer_on_every_instance(self):
        n = len(self.gws)
        # IN_PROGRESS, then 503 for every later call; each answer after 300 ms
        export_id = fresh("states=IN_PROGRESS,503;delay=300")
        status, headers, body = self.get(self.gws[0], q(export_id))
        self.assertEqual((status, headers["x-cache"]), (200, "MISS"), body)
        time.sleep(self.TTL + 0.2)
        # the other instances never saw it: what they serve stale came from Redis
        results = fire([(self.gws[1 + i % (n - 1)].port, q(export_id)) for i in range(20)],
                       10 * SLOW)
        for result in results:
            self.assertIsNotNone(result, "not answered")
            status, headers, stale = result[:3]
            self.assertEqual((status, headers.get("x-cache"), stale), (200, "STALE", body))
        self.assertEqual(calls(export_id), 2, "one refresh for the fleet")
        # and the instance that fetched it, without a call of its own meanwhile
        status, headers, stale = self.get(self.gws[0], q(export_id))
        self.assertEqual((status, headers["x-cache"], stale), (200, "STALE", body))
        self.assertLessEqual(calls(export_id), 3)


class TestRedisStalled(FleetCase):
    """Redis that does not answer costs a request at most redis_timeout."""

    overrides = {"cache_pending_ttl": "2s"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # the same requests to a gateway without Redis: the baseline
        try:
            cls.alone = start_gateway(cls.__name__ + "-alone", fleet_sections())
        except BaseException:
            cls.tearDownClass()
            raise
        cls.baseline = max(cls.timed(cls.alone, q(fresh("states=IN_PROGRESS")))[1]
                           for _ in range(6))

    @classmethod
    def tearDownClass(cls):
        alone = getattr(cls, "alone", None)
        try:
            super().tearDownClass()
        finally:
            if alone is not None:
                assert alone.stop() == 0

    @staticmethod
    def timed(gw, path):
        start = time.monotonic()
        status, _, body = gw.request("GET", path, AUTH, timeout=30)
        return status, time.monotonic() - start, body

    def check_stalled(self, stall, resume):
        bound = self.baseline + REDIS_TIMEOUT + 0.15 * SLOW
        n = len(self.gws)
        before = [metric(gw, ERRORS) for gw in self.gws]
        for value in before:
            self.assertIsNotNone(value, "no %s: %s" % (ERRORS, metrics_text(self.gws)))
        stall()
        try:
            took = []
            for i in range(2 * n):
                status, seconds, body = self.timed(self.gws[i % n], q(fresh("states=IN_PROGRESS")))
                self.assertEqual(status, 200, body)
                took.append(seconds)
            shared = fresh("states=IN_PROGRESS")
            targets = [(self.gws[i % n].port, q(fresh("states=IN_PROGRESS"))) for i in range(15)]
            targets += [(self.gws[i % n].port, q(shared)) for i in range(15)]
            for result in fire(targets, 10 * SLOW):
                self.assertIsNotNone(result, "not answered while Redis is stalled")
                self.assertEqual(result[0], 200, result[2])
                took.append(result[4] - result[3])
        finally:
            resume()
        self.assertLess(max(took), bound, "slowest request %.0f ms, baseline without Redis "
                        "%.0f ms, redis_timeout %.0f ms" % (max(took) * 1000, self.baseline * 1000,
                                                           REDIS_TIMEOUT * 1000))
        after = [metric(gw, ERRORS) for gw in self.gws]
        for index, (old, new) in enumerate(zip(before, after)):
            self.assertGreater(new, old, "%s on gateway %d" % (ERRORS, index))

    def test_sigstopped_redis(self):
        self.check_stalled(self.redis.pause, self.redis.resume)

    def test_client_pause(self):
        # CLIENT PAUSE ALL holds CLIENT UNPAUSE too: resuming is waiting it out
        seconds = 3.0 * min(SLOW, 3.0)
        end = {}

        def stall():
            end["at"] = time.monotonic() + seconds
            self.redis.client_pause(int(seconds * 1000))
        self.check_stalled(stall, lambda: time.sleep(max(0.0, end["at"] - time.monotonic())))


class TestRedisRefuses(unittest.TestCase):
    """A gateway that Redis does not accept serves alone, says so once, redis_up 0."""

    TTL = 20.0 if VALGRIND else 5.0  # all 30 polls of one id fit in one window

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis(state["tmp"].path, "redis-" + cls.__name__)

    @classmethod
    def tearDownClass(cls):
        cls.redis.stop()

    def check_alone(self, name, pattern, **overrides):
        gw = start_member(name, self.redis, cache_pending_ttl="%ds" % self.TTL, **overrides)
        try:
            wait_for(lambda: redis_log_lines(gw), timeout=5 * SLOW, what="a log line about Redis")
            wait_for(lambda: metric(gw, UP) == 0, timeout=5 * SLOW, what=UP + " 0")
            export_id = fresh("states=IN_PROGRESS")
            for round_ in range(3):
                for _ in range(10):
                    status, _, body = self.get(gw, q(export_id))
                    self.assertEqual((status, json.loads(body)["state"]), (200, "IN_PROGRESS"))
                    status, _, body = self.get(gw, q(fresh("states=COMPLETED")))
                    self.assertEqual((status, json.loads(body)["state"]), (200, "COMPLETED"))
                time.sleep(0.7)  # reconnections, with their backoff, happen meanwhile
            # alone, with its own cache: one call for 30 polls within the window
            self.assertEqual(calls(export_id), 1)
            self.assertEqual(metric(gw, UP), 0)
            lines = redis_log_lines(gw)
            self.assertEqual(len(lines), 1, "logged %d times:\n%s" % (len(lines), "\n".join(lines)))
            self.assertRegex(lines[0], pattern)
            self.assertEqual(self.redis.scan("*"), [])
        finally:
            code = gw.stop()
        logs = gw.logs()
        for secret in SECRETS + [self.redis.password, self.redis.user_password,
                                 overrides.get("redis_password", "")]:
            self.assertNotIn(secret or "\0", logs)
        self.assertEqual(code, 0, logs)

    def get(self, gw, path):
        return gw.request("GET", path, AUTH)

    def test_wrong_password(self):
        self.check_alone("wrong-password", r"(?i)wrongpass|auth|password",
                         redis_password="not-the-password-3f8a1c")

    def test_acl_forbids_the_prefix(self):
        # the ACL user may only touch gumloop-gateway:*
        self.check_alone("noperm", r"(?i)noperm|permission", redis_prefix="elsewhere:")


class TestCheckConfig(unittest.TestCase):
    """gumloop-gateway -t checks that Redis answers."""

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis(state["tmp"].path, "redis-" + cls.__name__)

    @classmethod
    def tearDownClass(cls):
        cls.redis.stop()

    def check(self, name, **overrides):
        path = os.path.join(state["tmp"].path, name + ".conf")
        with open(path, "w") as f:
            f.write(ini(base_settings(free_port(), **fleet_settings(self.redis, **overrides)),
                        fleet_sections()))
        environment = dict(os.environ)
        environment.update(ENV)
        start = time.monotonic()
        result = subprocess.run([gwtest.GATEWAY_BIN, "-t", "-c", path], capture_output=True,
                                text=True, env=environment, timeout=30)
        for secret in SECRETS + [self.redis.password, self.redis.user_password]:
            self.assertNotIn(secret, result.stdout + result.stderr)
        return result, time.monotonic() - start

    def test_ok_when_redis_answers(self):
        result, _ = self.check("check-redis-ok")
        self.assertEqual((result.returncode, result.stdout), (0, "config ok\n"), result.stderr)

    def test_ok_on_a_unix_socket(self):
        result, _ = self.check("check-redis-unix", redis="unix:" + self.redis.unix_path)
        self.assertEqual((result.returncode, result.stdout), (0, "config ok\n"), result.stderr)

    def test_fails_when_nothing_listens(self):
        address = "127.0.0.1:%d" % free_port()
        result, _ = self.check("check-redis-refused", redis=address)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("config ok", result.stdout)
        self.assertIn("redis", result.stderr.lower())
        self.assertIn(address, result.stderr)

    def test_fails_when_redis_does_not_answer(self):
        self.redis.pause()
        try:
            result, took = self.check("check-redis-stopped")
        finally:
            self.redis.resume()
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("config ok", result.stdout)
        self.assertIn("redis", result.stderr.lower())
        self.assertIn(self.redis.address, result.stderr)
        self.assertLess(took, 5 * SLOW)


class Monitor:
    """Every command Redis runs, as MONITOR lines, read in a thread of its own."""

    def __init__(self, redis):
        self.conn = redis.connect(timeout=None)
        self.conn.call("MONITOR")
        self.lines = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while True:
                reply = self.conn.read()
                if isinstance(reply, str):
                    self.lines.append(reply)
        except (OSError, ValueError):
            pass

    def stop(self):
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(5)
        self.conn.close()
        return self.lines


class TestNothingInClear(FleetCase):
    members = 2
    prefix = "gwtest-fleet:"
    overrides = {"cache_pending_ttl": "1s", "cache_final_ttl": "30s", "cache_error_ttl": "5s"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.monitor = Monitor(cls.redis)

    @classmethod
    def tearDownClass(cls):
        cls.monitor.stop()
        super().tearDownClass()

    def test_no_id_token_or_key_in_keys_channels_or_values(self):
        ids = [fresh("states=IN_PROGRESS"), fresh("states=COMPLETED"),
               fresh("states=IN_PROGRESS:1,COMPLETED"), fresh("status=404")]
        for gw in self.gws:
            for export_id in ids:
                for user in ("", PERSONAL_USER, OAUTH_USER):
                    path = q(export_id, user_id=user) if user else q(export_id)
                    self.assertIn(self.get(gw, path)[0], (200, 404))
        # held on one instance, the refresh's answer published to the other
        held = fire([(gw.port, q(ids[2], wait=5)) for gw in self.gws], 10 * SLOW)
        self.assertTrue(all(r is not None and r[0] == 200 for r in held), held)
        channels = self.redis.command("PUBSUB", "CHANNELS", "*")
        lines = self.monitor.stop()

        keys = []
        for db in range(16):
            keys += [(db, key) for key in self.redis.scan("*", db=db)]
        self.assertTrue(keys, "nothing stored in Redis")
        self.assertTrue(channels, "no gateway subscribed to a channel")
        in_clear = [s.encode() for s in SECRETS + [PERSONAL_USER, OAUTH_USER]]
        for export_id in ids:
            name = export_id.split(";")[0]
            in_clear += [export_id.encode(), name.encode(),
                         urllib.parse.quote(export_id, safe="").encode()]
        for db, key in keys:
            self.assertTrue(key.startswith(self.prefix.encode()), (db, key))
            for text in in_clear:
                self.assertNotIn(text, key, "in the key %r (db %d)" % (key, db))
            for part in self.redis.value(key, db=db):
                for secret in SECRETS:
                    self.assertNotIn(secret.encode(), part, "in the value of %r" % key)
        for channel in channels:
            self.assertTrue(channel.startswith(self.prefix.encode()), channel)
            for text in in_clear:
                self.assertNotIn(text, channel, "in the channel %r" % channel)
        # every command the gateways sent, arguments and published messages included
        self.assertTrue(any(self.prefix in line for line in lines), "MONITOR saw nothing")
        for line in lines:
            for secret in SECRETS:
                self.assertNotIn(secret, line)
            match = re.search(r'"(?i:publish|subscribe|psubscribe)" "([^"]*)"', line)
            if match:
                for text in in_clear:
                    self.assertNotIn(text.decode(), match.group(1), line)


if __name__ == "__main__":
    gwtest.main()
