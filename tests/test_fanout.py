"""Integration tests for download fan-out: concurrent download=true requests of
one (user id, export id) share one upstream transfer, spooled to an unnamed
file and sent to each client at its own pace; a complete spool may be kept for
later full and Range downloads. The built gateway in front of the fake
upstream, whose request counts say how many transfers were made. Run by
`make check` (TAP)."""

import hashlib
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from fixtures import *  # noqa: E402,F401,F403 (setUpModule, state, q, GatewayCase, ...)
from gwtest import RawResponse, wait_for  # noqa: E402

_serial = itertools.count(1)
# valgrind runs the gateway ~30x slower: smaller files there
BIG = 20 << 20 if gwtest.GATEWAY_WRAPPER else 200 << 20


def fresh(script):
    """A new COMPLETED export id for the fake, never seen by any cache before."""
    return "f%d-%d;states=COMPLETED;%s" % (os.getpid(), next(_serial), script)


def expected_md5(size):
    digest = hashlib.md5()
    for start in range(0, size, 1 << 20):
        digest.update(gwtest.csv_bytes(start, min(size, start + (1 << 20))))
    return digest.hexdigest()


def spool_fds(pid):
    """The gateway's open spools: unnamed files (O_TMPFILE) show as '/dir/#N (deleted)'."""
    found = []
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if "/#" in target and target.endswith("(deleted)"):
            found.append(target)
    return found


class Download:
    """One download=true request on a raw socket, read in a thread of its own:
    the body's md5, its length and whether its framing said it was whole."""

    def __init__(self, port, path, rate=None, rcvbuf=None, headers=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(60)
        self.sock.connect(("127.0.0.1", port))
        lines = ["GET %s HTTP/1.1" % path, "Host: x"]
        lines += ["%s: %s" % kv for kv in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.rate = rate
        self.md5 = hashlib.md5()
        self.length = 0
        self.complete = None
        self.status = None
        self.headers = None
        self.finished = None
        self.error = None
        self.stop = False
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        try:
            response = RawResponse(self.sock)
            self.status, self.headers = response.status, response.headers
            declared = int(response.headers.get("content-length", "-1"))
            chunked = response.headers.get("transfer-encoding") == "chunked"
            if chunked:
                body, self.complete = response.read_all()
                self.md5.update(body)
                self.length = len(body)
            else:
                self._take(response.buffer[:declared] if declared >= 0 else response.buffer)
                while (declared < 0 or self.length < declared) and not self.stop:
                    chunk = self.sock.recv(65536 if self.rate else 1 << 20)
                    if not chunk:
                        break
                    self._take(chunk[:declared - self.length] if declared >= 0 else chunk)
                    if self.rate:
                        time.sleep(len(chunk) / self.rate)
                self.complete = declared >= 0 and self.length == declared
        except OSError as error:
            self.error = error
        self.finished = time.monotonic()

    def _take(self, data):
        self.md5.update(data)
        self.length += len(data)

    def join(self, timeout=120):
        self.thread.join(timeout)
        self.sock.close()
        return self

    def close(self):
        self.stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(30)
        self.sock.close()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int([line.split()[1] for line in f if line.startswith("VmRSS:")][0])


class FanoutCase(GatewayCase):
    overrides = {"client_timeout": "10s", "max_downloads": "64"}
    # In the ASan build, freed memory waits in a quarantine and would show as RSS.
    extra_env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"}

    def calls(self, export_id):
        return self.fake_stats()["by_id"].get(export_id, 0)

    def download(self, export_id, **kwargs):
        return Download(self.gw.port, q(export_id, download="true"), **kwargs)

    def metric(self, name):
        return metrics(self.gw)[0][name]


class TestOneTransfer(FanoutCase):
    def test_twenty_clients_one_transfer_identical_bodies(self):
        # upstream at 100 MB/s: every client starts while the transfer runs
        export_id = fresh("csv=%d;throttle=%d" % (BIG, 100 << 20))
        joined = self.metric('gumloop_gateway_downloads_total{result="joined"}')
        downloads = [self.download(export_id) for _ in range(20)]
        for d in downloads:
            d.join()
        want = expected_md5(BIG)
        for d in downloads:
            self.assertEqual((d.status, d.length, d.complete, d.error), (200, BIG, True, None))
            self.assertEqual(d.md5.hexdigest(), want)
            self.assertEqual(d.headers["content-length"], str(BIG))
        self.assertEqual(self.calls(export_id), 1)
        self.assertEqual(self.metric('gumloop_gateway_downloads_total{result="joined"}') - joined,
                         19)
        wait_for(lambda: not spool_fds(self.gw.proc.pid), timeout=5, what="the spool closed")
        self.assertIn(" joined", self.gw.logs())

    def test_a_client_joining_halfway_gets_the_whole_file(self):
        size = 20 << 20
        export_id = fresh("csv=%d;throttle=%d" % (size, 8 << 20))
        first = self.download(export_id)
        wait_for(lambda: self.metric("gumloop_gateway_spool_bytes") >= size // 2, timeout=10,
                 what="half the file spooled")
        late = self.download(export_id)
        for d in (first, late):
            d.join()
            self.assertEqual((d.status, d.length, d.complete), (200, size, True))
            self.assertEqual(d.md5.hexdigest(), expected_md5(size))
        self.assertEqual(self.calls(export_id), 1)

    def test_a_slow_client_does_not_hold_back_the_others(self):
        size = 50 << 20
        export_id = fresh("csv=%d" % size)
        baseline = rss_kib(self.gw.proc.pid)
        slow = self.download(export_id, rate=1 << 20, rcvbuf=64 * 1024)
        try:
            time.sleep(0.2)
            fast = [self.download(export_id) for _ in range(3)]
            started = time.monotonic()
            for d in fast:
                d.join()
                self.assertEqual((d.length, d.complete), (size, True))
            took = time.monotonic() - started
            self.assertLess(took, 10 * gwtest.SLACK)
            self.assertIsNone(slow.finished)  # still at ~1 MiB/s
            self.assertLess(slow.length, size // 2)
            # the spool holds the bytes, not the heap: 50 MiB went through
            self.assertLess(rss_kib(self.gw.proc.pid) - baseline, 16 * 1024)
            self.assertEqual(self.calls(export_id), 1)
        finally:
            slow.close()

    def test_a_lone_client_that_keeps_up_goes_direct_after_16_mib(self):
        size = 64 << 20
        export_id = fresh("csv=%d;throttle=%d" % (size, 24 << 20))
        joined = self.metric('gumloop_gateway_downloads_total{result="joined"}')
        first = self.download(export_id)
        wait_for(lambda: first.length > 24 << 20, timeout=20 * gwtest.SLACK, what="24 MiB")
        # past 16 MiB with one client that has it all: no spool any more ...
        wait_for(lambda: not spool_fds(self.gw.proc.pid), timeout=5, what="the spool closed")
        self.assertEqual(self.metric("gumloop_gateway_spool_bytes"), 0)
        self.assertIsNone(first.finished)
        # ... so a later client cannot join it, and gets a transfer of its own
        late = self.download(export_id)
        for d in (first.join(), late.join()):
            self.assertEqual((d.status, d.length, d.complete, d.error), (200, size, True, None))
            self.assertEqual(d.md5.hexdigest(), expected_md5(size))
        self.assertEqual(self.calls(export_id), 2)
        self.assertEqual(self.metric('gumloop_gateway_downloads_total{result="joined"}'), joined)

    def test_a_cut_after_going_direct_is_a_cut(self):
        for script in ("csv=40m;cut=30000000;throttle=%d" % (32 << 20),
                       "csv=40m;cut=30000000;length=0;throttle=%d" % (32 << 20)):
            export_id = fresh(script)
            failed = self.metric('gumloop_gateway_downloads_total{result="failed"}')
            d = self.download(export_id).join()
            self.assertEqual((d.status, d.complete, d.length), (200, False, 30000000), script)
            self.assertEqual(d.md5.hexdigest(),
                             hashlib.md5(gwtest.csv_bytes(0, 30000000)).hexdigest())
            wait_for(lambda: self.metric('gumloop_gateway_downloads_total{result="failed"}')
                     - failed == 1, timeout=5, what="one failed transfer")

    def test_a_cut_is_a_cut_for_every_client_in_both_framings(self):
        for script in ("csv=10m;cut=3000000;throttle=%d" % (2 << 20),
                       "csv=10m;cut=3000000;length=0;throttle=%d" % (2 << 20)):
            export_id = fresh(script)
            failed = self.metric('gumloop_gateway_downloads_total{result="failed"}')
            aborted = self.metric('gumloop_gateway_downloads_total{result="aborted"}')
            downloads = [self.download(export_id) for _ in range(3)]
            for d in downloads:
                d.join()
                self.assertEqual(d.status, 200, script)
                self.assertFalse(d.complete, script)
                self.assertEqual(d.length, 3000000, script)
                self.assertEqual(d.md5.hexdigest(),
                                 hashlib.md5(gwtest.csv_bytes(0, 3000000)).hexdigest())
            self.assertEqual(self.calls(export_id), 1)
            wait_for(lambda: self.metric('gumloop_gateway_downloads_total{result="aborted"}')
                     - aborted == 3, timeout=5, what="three aborted clients")
            self.assertEqual(
                self.metric('gumloop_gateway_downloads_total{result="failed"}') - failed, 1)

    def test_all_clients_leaving_aborts_the_transfer_and_closes_the_spool(self):
        export_id = fresh("csv=1g;throttle=%d" % (4 << 20))
        aborts = self.fake_stats()["client_aborts"]
        downloads = [self.download(export_id, rate=1 << 20) for _ in range(3)]
        wait_for(lambda: all(d.length > 0 for d in downloads), timeout=10, what="bytes")
        self.assertTrue(spool_fds(self.gw.proc.pid))
        for d in downloads:
            d.close()
        wait_for(lambda: self.fake_stats()["client_aborts"] > aborts, timeout=5 * gwtest.SLACK,
                 what="the upstream transfer aborted")
        wait_for(lambda: not spool_fds(self.gw.proc.pid), timeout=5, what="the spool closed")
        self.assertEqual(self.metric("gumloop_gateway_spool_bytes"), 0)

    def test_two_user_ids_never_share(self):
        export_id = fresh("csv=1m;throttle=%d" % (1 << 20))
        a = Download(self.gw.port, q(export_id, download="true"))
        b = Download(self.gw.port, q(export_id, download="true", user_id=OAUTH_USER))
        for d in (a.join(), b.join()):
            self.assertEqual((d.status, d.length, d.complete), (200, 1 << 20, True))
        self.assertEqual(self.calls(export_id), 2)

    def test_range_and_head_still_go_upstream(self):
        export_id = fresh("csv=1m;throttle=%d" % (1 << 20))
        running = self.download(export_id)
        status, headers, body = self.gw.request("GET", q(export_id, download="true"),
                                                {"Range": "bytes=10-19"})
        self.assertEqual((status, body), (206, gwtest.csv_bytes(10, 20)))
        status, _, _ = self.gw.request("HEAD", q(export_id, download="true"))
        self.assertEqual(status, 200)
        running.join()
        self.assertEqual(self.calls(export_id), 3)


class TestKeptSpool(FanoutCase):
    overrides = dict(FanoutCase.overrides, download_cache_ttl="2s")

    def test_later_full_and_range_downloads_come_from_the_spool_until_it_expires(self):
        size = 1 << 20
        export_id = fresh("csv=%d" % size)
        first = self.download(export_id).join()
        self.assertEqual((first.length, first.complete), (size, True))
        again = self.download(export_id).join()
        self.assertEqual((again.length, again.md5.hexdigest()), (size, first.md5.hexdigest()))
        status, headers, body = self.gw.request("GET", q(export_id, download="true"),
                                                {"Range": "bytes=1000-1999"})
        self.assertEqual((status, body), (206, gwtest.csv_bytes(1000, 2000)))
        self.assertEqual(headers["content-range"], "bytes 1000-1999/%d" % size)
        status, headers, body = self.gw.request("GET", q(export_id, download="true"),
                                                {"Range": "bytes=-10"})
        self.assertEqual((status, body), (206, gwtest.csv_bytes(size - 10, size)))
        # If-Range with the file's ETag: the range; with another: the whole file
        etag = first.headers["etag"]
        status, _, body = self.gw.request("GET", q(export_id, download="true"),
                                          {"Range": "bytes=0-9", "If-Range": etag})
        self.assertEqual((status, body), (206, gwtest.csv_bytes(0, 10)))
        status, _, body = self.gw.request("GET", q(export_id, download="true"),
                                          {"Range": "bytes=0-9", "If-Range": '"other"'})
        self.assertEqual((status, len(body)), (200, size))
        self.assertEqual(self.calls(export_id), 1)
        self.assertTrue(spool_fds(self.gw.proc.pid))
        time.sleep(2.5)
        wait_for(lambda: not spool_fds(self.gw.proc.pid), timeout=5, what="the kept spool closed")
        self.assertEqual(self.download(export_id).join().length, size)
        self.assertEqual(self.calls(export_id), 2)


class TestFullDisk(FanoutCase):
    """The spool's file system fills up mid-transfer (a 1 MiB tmpfs)."""
    spool_dir = None

    @classmethod
    def setUpClass(cls):
        cls.spool_dir = os.path.join(state["tmp"].path, "small-spool")
        os.makedirs(cls.spool_dir, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                  cls.spool_dir], capture_output=True)
        if mounted.returncode != 0:
            raise unittest.SkipTest("cannot mount a small tmpfs: %s" % mounted.stderr.decode())
        cls.overrides = dict(FanoutCase.overrides, download_spool_dir=cls.spool_dir)
        try:
            super().setUpClass()
        except BaseException:
            subprocess.run(["umount", cls.spool_dir])
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            subprocess.run(["umount", cls.spool_dir])

    def test_enospc_cuts_every_client_after_what_was_spooled(self):
        export_id = fresh("csv=4m;throttle=%d" % (8 << 20))
        downloads = [self.download(export_id) for _ in range(2)]
        for d in downloads:
            d.join()
            self.assertEqual(d.status, 200)
            self.assertFalse(d.complete)
            self.assertGreater(d.length, 0)
            self.assertLessEqual(d.length, 1 << 20)
            self.assertEqual(d.md5.hexdigest(),
                             hashlib.md5(gwtest.csv_bytes(0, d.length)).hexdigest())
        self.assertIn("cannot write its spool", self.gw.logs())
        self.assertEqual(self.calls(export_id), 1)
        # the spool is gone with its clients: the next download has the room again
        wait_for(lambda: not spool_fds(self.gw.proc.pid), timeout=5, what="the spool closed")
        small = self.download(fresh("csv=%d" % (256 << 10))).join()
        self.assertEqual((small.length, small.complete), (256 << 10, True))


class TestNoSpool(FanoutCase):
    overrides = dict(FanoutCase.overrides, download_spool_dir="/nonexistent-spool-dir")

    def test_unusable_spool_dir_still_downloads_and_logs_once(self):
        export_id = fresh("csv=1m;throttle=%d" % (2 << 20))
        downloads = [self.download(export_id) for _ in range(3)]
        for d in downloads:
            d.join()
            self.assertEqual((d.status, d.length, d.complete), (200, 1 << 20, True))
        self.assertEqual(self.calls(export_id), 3)
        self.assertEqual(self.gw.logs().count("cannot make a download spool"), 1)


class TestFanoutOff(FanoutCase):
    overrides = dict(FanoutCase.overrides, download_spool_dir="off")

    def test_off_relays_each_download(self):
        export_id = fresh("csv=1m;throttle=%d" % (2 << 20))
        downloads = [self.download(export_id) for _ in range(3)]
        for d in downloads:
            d.join()
            self.assertEqual((d.length, d.complete), (1 << 20, True))
        self.assertEqual(self.calls(export_id), 3)
        self.assertNotIn("download spool", self.gw.logs())


if __name__ == "__main__":
    gwtest.main()
