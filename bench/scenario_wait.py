"""scenario_wait -- bench/run wait: N clients follow one export until they know
it is COMPLETED, in three ways: held by the gateway (`wait=25`), polling the
gateway once a second, and polling nginx (bench/nginx-cache.conf.in) once a
second. Counts the upstream calls and the clients' requests, and times how late
each client learns COMPLETED after the fake upstream first sent it.

The clients are this process: asyncio with raw non-blocking sockets (add_reader
and recvmsg), one keep-alive connection each, so 5,000 of them fit in one
Python process. Receipt is timed by the kernel (SO_TIMESTAMPNS on each client
socket: when the answer's last bytes reached the socket), not by when this
loop got round to reading it; the loop's own reading time is shown beside it."""

import asyncio
import json
import math
import socket
import struct
import time
import urllib.parse

import benchlib
from benchlib import HOST, Report, fmt_ms, log, quote

READY_MS = 10000        # the export is COMPLETED this long after the fake first sees it
TTL_S = 1               # gateway cache_pending_ttl and nginx proxy_cache_valid: the window
WAIT_S = 25             # what the waiting clients ask for (wait=25), and the gateway's wait_max
POLL_S = 1.0            # the pollers' interval
# A non-final answer to a wait= request sooner than this means the gateway did
# not hold it (a build without wait=): the client sleeps before asking again, so
# that the run stays a once-a-second poll instead of a busy loop.
UNHELD_S = 0.5
UNHELD_SLEEP_S = 1.0
RETRY_S = 1.0           # after an error answer or a lost connection
CONNECT_AT_ONCE = 256   # connects in flight: stays under the listen backlogs
RUN_TIMEOUT_S = READY_MS / 1000.0 + WAIT_S + 15
DELAY_GOAL_MS = 50.0
RECV_SIZE = 65536
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python 3.11 lacks the name
TIMESPEC = struct.Struct("qq")

MODES = (
    # (key, label, target, wait)
    ("gw-wait", "gateway, wait=%d" % WAIT_S, "gateway", True),
    ("gw-poll", "gateway, polling 1/s", "gateway", False),
    ("nginx-poll", "nginx, polling 1/s", "nginx", False),
)


# --- HTTP/1.1 answers, just enough of them ----------------------------------

def parse_answer(buf):
    """(status, body, bytes used) of the first whole answer in buf, or None while
    it is incomplete. Content-Length or chunked bodies."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if "content-length" in headers:
        stop = start + int(headers["content-length"])
        return (status, bytes(buf[start:stop]), stop) if len(buf) >= stop else None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, pos = bytearray(), start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:  # no trailers from either server
                return (status, bytes(body), eol + 4) if len(buf) >= eol + 4 else None
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
    if status in (204, 304):
        return status, b"", start
    raise ValueError("an answer with neither Content-Length nor chunks: %r" % lines[0])


def state_of(body):
    try:
        return json.loads(body).get("state")
    except (ValueError, AttributeError):
        return None


# --- one run: N clients, one export id -----------------------------------------

class Run:
    """N clients of one target following export_id until each knows it is COMPLETED."""

    def __init__(self, port, export_id, n, wait):
        self.port = port
        self.export_id = export_id
        self.n = n
        self.wait = wait
        path = "/export_status?data_export_id=" + quote(export_id)
        if wait:
            path += "&wait=%d" % WAIT_S
        self.path = path
        self.request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path, HOST, port)).encode()
        self.requests = 0
        self.unheld = 0        # non-final answers to wait= sooner than UNHELD_S
        self.errors = {}       # what went wrong -> how often
        self.done = 0
        self.first_sent = None
        self.finished = None   # asyncio.Event, set when the last client knows
        # realtime - monotonic, to put the kernel's receive stamps on time.monotonic()
        self.clock_offset_ns = time.time_ns() - time.monotonic_ns()

    def error(self, what):
        self.errors[what] = self.errors.get(what, 0) + 1

    def client_done(self):
        self.done += 1
        if self.done == self.n:
            self.finished.set()


class Client:
    """One keep-alive connection asking again until the answer says COMPLETED."""

    def __init__(self, run, index, loop, connect_slots):
        self.run = run
        self.loop = loop
        self.slots = connect_slots
        self.sock = None
        self.buf = bytearray()
        self.sent_at = None
        self.rx_ns = None          # kernel stamp of the last bytes read (CLOCK_REALTIME)
        self.told_at = None        # monotonic s: COMPLETED reached the socket
        self.read_at = None        # monotonic s: this loop parsed it
        # pollers start spread evenly over the first second and keep that phase
        self.start_offset = 0.0 if run.wait else POLL_S * index / run.n
        self.next_poll = None
        self.timer = None

    async def start(self, t0):
        await asyncio.sleep(max(0.0, t0 + self.start_offset - time.monotonic()))
        self.next_poll = t0 + self.start_offset
        await self.connect_and_send()

    async def connect_and_send(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            async with self.slots:
                await self.loop.sock_connect(sock, (HOST, self.run.port))
        except OSError as e:
            sock.close()
            self.run.error("connect: %s" % (e.strerror or e))
            self.later(RETRY_S, self.reconnect)
            return
        self.sock = sock
        self.buf.clear()
        self.loop.add_reader(sock.fileno(), self.readable)
        self.send()

    def reconnect(self):
        self.timer = None
        self.loop.create_task(self.connect_and_send())

    def later(self, delay, callback):
        self.timer = self.loop.call_later(max(0.0, delay), callback)

    def drop(self, what):
        """Counts what went wrong, closes, and connects again in RETRY_S; a send
        still pending for the lost connection is dropped with it."""
        self.run.error(what)
        if self.timer is not None:
            self.timer.cancel()
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        self.later(RETRY_S, self.reconnect)

    def send(self):
        self.timer = None
        if self.sock is None:  # lost meanwhile: drop() has a reconnect under way
            return
        self.sent_at = time.monotonic()
        self.rx_ns = None  # a stamp of an earlier answer must not time this one
        if self.run.first_sent is None:
            self.run.first_sent = self.sent_at
        self.run.requests += 1
        try:
            # A request of ~150 bytes into an empty socket buffer: all or an error.
            if self.sock.send(self.run.request) != len(self.run.request):
                self.drop("short send")
        except OSError as e:
            self.drop("send: %s" % (e.strerror or e))

    def readable(self):
        try:
            data, ancillary, _, _ = self.sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(TIMESPEC.size))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.drop("recv: %s" % (e.strerror or e))
            return
        if not data:
            self.drop("closed by the server")
            return
        for level, kind, stamp in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= 16:
                sec, nsec = TIMESPEC.unpack(stamp[:16])
                self.rx_ns = sec * 1000000000 + nsec
        self.buf += data
        try:
            answer = parse_answer(self.buf)
        except ValueError as e:
            self.drop(str(e))
            return
        if answer is not None:
            status, body, used = answer
            del self.buf[:used]
            self.answered(status, body)

    def answered(self, status, body):
        now = time.monotonic()
        state = state_of(body) if status == 200 else None
        if status != 200:
            self.run.error("HTTP %d" % status)
            self.later(RETRY_S, self.send)
            return
        if state == "COMPLETED":
            self.read_at = now
            self.told_at = ((self.rx_ns - self.run.clock_offset_ns) / 1e9
                            if self.rx_ns is not None else now)
            # The connection stays open (and unread) until the run ends, so that
            # closing it costs the server nothing while it answers the others.
            self.loop.remove_reader(self.sock.fileno())
            self.run.client_done()
            return
        if state is None:
            self.run.error("no state in the answer")
        if self.run.wait:
            if now - self.sent_at < UNHELD_S:
                self.run.unheld += 1
                self.later(UNHELD_SLEEP_S, self.send)
            else:
                self.send()
            return
        while self.next_poll <= now:
            self.next_poll += POLL_S
        self.later(self.next_poll - now, self.send)

    def close(self):
        if self.timer is not None:
            self.timer.cancel()
        if self.sock is not None:
            if self.told_at is None:
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


async def run_clients(run):
    """Every client until it knows, or RUN_TIMEOUT_S; the clients for their figures."""
    loop = asyncio.get_running_loop()
    run.finished = asyncio.Event()
    slots = asyncio.Semaphore(CONNECT_AT_ONCE)
    clients = [Client(run, i, loop, slots) for i in range(run.n)]
    t0 = time.monotonic() + 0.05
    tasks = [loop.create_task(c.start(t0)) for c in clients]
    try:
        await asyncio.wait_for(run.finished.wait(), RUN_TIMEOUT_S)
    except asyncio.TimeoutError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            c.close()
    return clients


# --- figures ------------------------------------------------------------------

def percentile(sorted_values, p):
    """Nearest-rank percentile of a sorted list (p in 0..100); None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def fmt_delay(v):
    return "–" if v is None else ("%.1f ms" % v if v < 1000 else "%.2f s" % (v / 1000))


def probe_wait(bench, gateway):
    """How the gateway treats wait=: a wait=1 on an export that stays IN_PROGRESS
    is held about a second by a gateway with wait= support, answered at once by
    one without. (seconds taken, Preference-Applied or None)."""
    export_id = "probe;ready=3600000"  # IN_PROGRESS for an hour
    bench.get(gateway, export_id)  # a plain request first: the wait=1 one finds it cached
    started = time.monotonic()
    status, headers, body = benchlib.http_get(
        gateway.port, "/export_status?data_export_id=%s&wait=1" % quote(export_id))
    took = time.monotonic() - started
    if status != 200 or state_of(body) != "IN_PROGRESS":
        raise RuntimeError("gateway answered the wait=1 probe %d %r" % (status, body[:200]))
    return took, headers.get("preference-applied")


def verify(bench, targets):
    """Both proxies answer a COMPLETED ready=0 id with 200 and its JSON state."""
    lines = []
    for t in targets:
        export_id = "check-%s;ready=0" % t.name
        status, ctype, body = bench.get(t, export_id)
        if status != 200 or state_of(body) != "COMPLETED":
            raise RuntimeError("%s answered %s %s: %r" % (t.name, status, ctype, body[:200]))
        lines.append("- %s: `%s` → 200 `%s`" % (t.name, export_id, body.decode()))
    return "\n".join(lines)


def start_gateway(bench, max_n):
    """The gateway with the waiting settings; a build that does not know them yet
    (wait= not landed) is started without them, and the report says so."""
    waiting = [("wait_max", "%ds" % WAIT_S), ("max_waiting", str(max_n + 1024))]
    base = [("max_connections", str(max(10000, max_n + 1024)))]
    try:
        return bench.start_gateway(base + waiting), True
    except AssertionError as e:
        if "wait_max" not in str(e) and "max_waiting" not in str(e):
            raise
        log("this gateway does not know wait_max/max_waiting; started without them")
        bench.configs.pop()  # the config that did not start
        bench.logs.pop()
        return bench.start_gateway(base), False


def run(bench, args, nofile):
    report = Report("wait")
    report.raw_title = "Runs"
    # benchlib's start_gateway and start_nginx take the window from benchlib.TTL_S
    # (2 s, the cache scenario's); this scenario's window is 1 s.
    saved_ttl = benchlib.TTL_S
    benchlib.TTL_S = TTL_S
    try:
        return run_scenario(bench, args, nofile, report)
    finally:
        benchlib.TTL_S = saved_ttl


def run_scenario(bench, args, nofile, report):
    clients_list = args.clients
    need = max(clients_list) + 256
    if nofile < need:
        log("warning: RLIMIT_NOFILE is %d, N=%d needs about %d" % (nofile, max(clients_list), need))
    direct = bench.start_fake()
    gateway, wait_settings = start_gateway(bench, max(clients_list))
    nginx = bench.start_nginx(nofile, "nginx-cache.conf.in", {"STALE": "#"})
    targets = {"gateway": gateway, "nginx": nginx}
    log("fake upstream :%d, gateway :%d, nginx :%d" % (direct.port, gateway.port, nginx.port))
    took, applied = probe_wait(bench, gateway)
    held = took >= 0.5
    check = [verify(bench, [gateway, nginx]),
             "- gateway, `wait=1` on an IN_PROGRESS export: answered after %.2f s, "
             "`Preference-Applied: %s` — %s"
             % (took, applied or "(none)",
                "wait= is held" if held else
                "wait= is NOT held by this build: the wait mode runs as a once-a-second poll "
                "(a non-final answer sooner than %.1f s makes the client sleep %.0f s)"
                % (UNHELD_S, UNHELD_SLEEP_S))]
    if not wait_settings:
        check.append("- the gateway did not know `wait_max`/`max_waiting` and runs without them")
    report.text("Check", "\n".join(check))

    rows, goals, details = [], [], []
    number = 0
    for n in clients_list:
        for round_number in range(1, args.wait_rounds + 1):
            for key, label, target_name, wait in MODES:
                number += 1
                target = targets[target_name]
                export_id = "w%d-%d-%s;ready=%d" % (n, number, key, READY_MS)
                log("wait: N=%d, %s%s" % (n, label,
                                          ", round %d/%d" % (round_number, args.wait_rounds)
                                          if args.wait_rounds > 1 else ""))
                r = Run(target.port, export_id, n, wait)
                bench.commands.append((
                    "clients, N=%d, %s (this process, bench/scenario_wait.py)" % (n, label),
                    "%d x keep-alive GET http://%s:%d%s until COMPLETED"
                    % (n, HOST, target.port, r.path)))
                cpu0 = benchlib.cpu_seconds(target.pid)
                clients = asyncio.run(run_clients(r))
                cpu = benchlib.cpu_seconds(target.pid) - cpu0
                drift_ms = (time.time_ns() - time.monotonic_ns() - r.clock_offset_ns) / 1e6
                time.sleep(0.3)
                stats = bench.fake_stats()
                calls = stats["by_id"].get(export_id, 0)
                final_ms = stats.get("first_final_ms", {}).get(export_id)
                told = [c for c in clients if c.told_at is not None]
                last = max((c.told_at for c in told), default=time.monotonic())
                duration = last - (r.first_sent or last)
                if final_ms is not None:
                    delays = sorted(c.told_at * 1000.0 - final_ms for c in told)
                    read_delays = sorted(c.read_at * 1000.0 - final_ms for c in told)
                else:
                    delays, read_delays = [], []
                p50, p99 = percentile(delays, 50), percentile(delays, 99)
                worst = delays[-1] if delays else None
                worst_read = read_delays[-1] if read_delays else None
                missing = n - len(told)
                errors = ", ".join("%s %d" % kv for kv in sorted(r.errors.items())) or "0"
                if missing:
                    errors += "; %d never told" % missing
                    report.failures.append("N=%d %s: %d clients never got COMPLETED"
                                           % (n, label, missing))
                if abs(drift_ms) > 1.0:
                    log("warning: CLOCK_REALTIME moved %.1f ms against CLOCK_MONOTONIC "
                        "during the run; kernel receive stamps are off by that" % drift_ms)
                budget = math.ceil(duration) + 1
                row = [n, label + (" (round %d)" % round_number if args.wait_rounds > 1 else ""),
                       calls, "%.1f s" % duration, r.requests, fmt_delay(p50), fmt_delay(p99),
                       fmt_delay(worst), fmt_delay(worst_read),
                       r.unheld if wait else "–", "%.0f%%" % (100.0 * cpu / duration)
                       if duration else "–", errors]
                rows.append(row)
                if target_name == "gateway":
                    goals.append("- N=%d, %s: %d upstream calls over %.1f s, at most %d "
                                 "(one per %d s window) — **%s**"
                                 % (n, label, calls, duration, budget, TTL_S,
                                    "met" if calls <= budget else "missed"))
                if wait:
                    ok = (p99 is not None and worst is not None and p99 <= DELAY_GOAL_MS
                          and worst <= DELAY_GOAL_MS and not missing and not r.unheld)
                    # Unheld, the clients poll in step with the refreshes they cause
                    # themselves, and small delays would say nothing about waiting.
                    goals.append("- N=%d, %s: every client told within %.0f ms of the "
                                 "refresh that saw COMPLETED (p99 %s, max %s) — **%s**%s"
                                 % (n, label, DELAY_GOAL_MS, fmt_delay(p99), fmt_delay(worst),
                                    "met" if ok else "missed",
                                    " (wait= not held: %d answers came back non-final in "
                                    "under %.1f s)" % (r.unheld, UNHELD_S) if r.unheld else ""))
                details.append(
                    "N=%d %s: GET %s on :%d, first request at monotonic %.3f s, first "
                    "COMPLETED sent by the fake at %s, last client told at %.3f s; %d "
                    "requests, %d upstream calls, %serrors: %s; delay min %s, p90 %s; "
                    "realtime-monotonic drift %.3f ms"
                    % (n, label, r.path, target.port, r.first_sent or 0.0,
                       "%.3f s" % (final_ms / 1000.0) if final_ms is not None else "never",
                       last, r.requests, calls,
                       "%d unheld wait= answers, " % r.unheld if wait else "", errors,
                       fmt_delay(delays[0] if delays else None),
                       fmt_delay(percentile(delays, 90)), drift_ms))
                log("  %d upstream calls, %d requests, delay p50 %s p99 %s max %s%s"
                    % (calls, r.requests, fmt_delay(p50), fmt_delay(p99), fmt_delay(worst),
                       "" if errors == "0" else ", errors: " + errors))
                time.sleep(1)  # let the closed connections go
    report.table(
        "Waiting and polling",
        ["N", "mode", "upstream calls", "duration", "client requests", "delay p50",
         "delay p99", "delay max", "max, as read", "unheld wait= answers", "server CPU",
         "errors"], rows,
        "N clients, one keep-alive connection each, follow one export id "
        "(`wN-RUN-MODE;ready=%d`: the fake answers IN_PROGRESS until %d s after it first "
        "sees the id, then COMPLETED) until they are told COMPLETED; a fresh id per run. "
        "Gateway: `cache_pending_ttl = %ds`, `wait_max = %ds`. nginx: "
        "bench/nginx-cache.conf.in, `proxy_cache_valid 200 %ds`, cache lock, no stale. "
        "`wait=%d`: each client asks again as soon as a held answer comes back non-final "
        "(or after %.0f s if it came back in under %.1f s: not held). Polling: one request "
        "per second per client, the clients' phases spread evenly over the first second. "
        "Upstream calls: the fake's count for the id. Duration: from the first request to "
        "the last client told. Delay: from the fake's `first_final_ms` (when it sent the "
        "first COMPLETED for the id) to the client's socket receiving its COMPLETED answer "
        "(the kernel's SO_TIMESTAMPNS, on time.monotonic()'s clock); `max, as read` is the "
        "same to when this bench's event loop parsed it, which adds the client's own "
        "reading time. Server CPU: the target's CPU time ÷ duration."
        % (READY_MS, READY_MS // 1000, TTL_S, WAIT_S, TTL_S, WAIT_S, UNHELD_SLEEP_S, UNHELD_S))
    report.text("Goals", "\n".join(goals))
    report.raw = ["\n".join(details)]
    return report
