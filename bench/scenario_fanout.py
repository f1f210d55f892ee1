"""scenario_fanout -- bench/run fanout: N clients (default 20) download one
export's CSV (default csv=1g) at the same time, through the gateway (download
fan-out: one upstream transfer, spooled, sent with sendfile), through nginx
relaying (proxy_buffering off: one upstream transfer per client), through
nginx with proxy_cache + proxy_cache_lock (one transfer fills the cache, the
others wait for it), and straight from the fake (one transfer per client).
Per target: upstream transfers and bytes, time until the last client has all
of it, aggregate throughput, the server's peak RSS and CPU per GiB delivered,
and that every client got every byte right.

The clients are one child process (this file run as a script, `client` mode):
asyncio, one connection per client, read straight into a buffer
(BufferedProtocol), each body checked as it arrives (length, and 64 bytes at
every MiB and at the end against the fake's CSV, whose lines carry their line
number, so a byte at a wrong offset shows), and client 0's whole body hashed
with SHA-256, which must be the same for every target."""

import asyncio
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.parse

if __name__ != "__main__":
    from benchlib import (API_KEY, HOST, USER_ID, Report, RssSampler, Target,
                          children_cpu_seconds, cpu_seconds, fmt_mib, log,
                          machine_busy_seconds, median)

MB = 1000 * 1000
MIB = 1024 * 1024
GIB = 1 << 30
RSS_GOAL_MIB = 64
SPEEDUP_GOAL = 5.0        # gateway aggregate ÷ nginx (relay) aggregate
SAMPLE_EVERY = MIB        # a checked window at every MiB of the body
SAMPLE_BYTES = 64         # ... of this many bytes, and one at the very end
READ_BUF = 1 << 20        # each client's receive buffer
RUN_TIMEOUT_S = 900
OTHER_CPU_WARN = 20
CSV_TAIL = b",abcdefghijklmnopqrst\n"   # the fake's lines: "%010llu,abcdefghijklmnopqrst\n"
LINE = 32

TARGETS = (
    # (key, label)
    ("gateway", "gateway (fan-out)"),
    ("nginx", "nginx, proxy_buffering off"),
    ("nginx-cache", "nginx, proxy_cache + lock"),
    ("direct", "direct (fake)"),
)


# --- the clients: a child process ---------------------------------------------

def expected_bytes(first, last):
    """Bytes [first, last) of the fake's CSV."""
    a, b = first // LINE, (last - 1) // LINE
    text = b"".join(b"%010d" % i + CSV_TAIL for i in range(a, b + 1))
    return text[first - a * LINE:last - a * LINE]


class Reader(asyncio.BufferedProtocol):
    """One download: the request, the head, then the body into one buffer,
    checked (and for client 0 hashed) as it comes."""

    def __init__(self, index, request, size, full_hash, done):
        self.index = index
        self.request = request
        self.size = size
        self.buf = bytearray(READ_BUF)
        self.view = memoryview(self.buf)
        self.head = bytearray()
        self.in_body = False
        self.status = None
        self.length = None
        self.got = 0
        self.hash = hashlib.sha256() if full_hash else None
        self.windows = sorted(set(list(range(0, size, SAMPLE_EVERY))
                                  + [max(0, size - SAMPLE_BYTES)]))
        self.next_window = 0
        self.checked = 0
        self.bad = []          # offsets of windows that differ
        self.error = None
        self.first_byte = None
        self.finished = None
        self.done = done       # asyncio.Future, set when this client is over
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def start(self):
        self.sent = time.monotonic()
        self.transport.write(self.request)

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        if self.first_byte is None:
            self.first_byte = time.monotonic()
        data = self.view[:nbytes]
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.fail("no end of the head in 64 KiB")
                return
            self.parse_head(bytes(self.head[:end]))
            rest = bytes(self.head[end + 4:])
            self.head = None
            self.in_body = True
            if self.error is None and rest:
                self.body(memoryview(rest))
            return
        self.body(data)

    def parse_head(self, head):
        lines = head.decode("latin-1").split("\r\n")
        try:
            self.status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self.fail("bad status line %r" % lines[0])
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.content_type = headers.get("content-type")
        if self.status != 200:
            self.fail("HTTP %d" % self.status)
        elif "content-length" not in headers:
            self.fail("no Content-Length (%s)" % headers.get("transfer-encoding", "?"))
        else:
            self.length = int(headers["content-length"])
            if self.length != self.size:
                self.fail("Content-Length %d, not %d" % (self.length, self.size))

    def body(self, data):
        if self.error is not None:
            return
        pos, n = self.got, len(data)
        end = pos + n
        if end > self.size:
            self.fail("more than %d bytes" % self.size)
            return
        windows = self.windows
        while self.next_window < len(windows) and windows[self.next_window] < end:
            ws = windows[self.next_window]
            we = min(ws + SAMPLE_BYTES, self.size)
            a, b = max(ws, pos), min(we, end)
            if a < b:
                if data[a - pos:b - pos] != expected_bytes(a, b):
                    self.bad.append(a)
            if we > end:
                break  # the rest of this window comes with the next read
            self.checked += 1
            self.next_window += 1
        if self.hash is not None:
            self.hash.update(data)
        self.got = end
        if self.got == self.size:
            self.finished = time.monotonic()
            self.transport.close()
            self.over()

    def fail(self, what):
        if self.error is None:
            self.error = what
        if self.transport is not None:
            self.transport.close()
        self.over()

    def over(self):
        if not self.done.done():
            self.done.set_result(None)

    def eof_received(self):
        if self.finished is None:
            self.fail("closed after %d bytes" % self.got)
        return False

    def connection_lost(self, exc):
        if self.finished is None:
            self.fail("connection lost after %d bytes (%s)" % (self.got, exc))

    def result(self, t0):
        rel = lambda t: None if t is None else t - t0  # noqa: E731
        return {"index": self.index, "status": self.status, "length": self.length,
                "got": self.got, "checked": self.checked, "bad": self.bad[:5],
                "bad_count": len(self.bad), "error": self.error,
                "first_byte": rel(self.first_byte), "finished": rel(self.finished),
                "sha256": self.hash.hexdigest() if self.hash is not None
                and self.finished is not None else None}


async def clients_main(spec):
    loop = asyncio.get_running_loop()
    ctx = None
    if spec["scheme"] == "https":
        ctx = ssl.create_default_context(cafile=spec["ca"])
    request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\n%sConnection: close\r\n\r\n"
               % (spec["path"], spec["host"], spec["port"],
                  "".join(h + "\r\n" for h in spec["headers"]))).encode()
    readers = []
    # connect (and TLS handshake) all first, then send every request in one go
    for i in range(spec["clients"]):
        done = loop.create_future()
        reader = Reader(i, request, spec["size"], i == 0, done)
        await loop.create_connection(lambda r=reader: r, spec["host"], spec["port"], ssl=ctx,
                                     server_hostname=spec["host"] if ctx else None)
        readers.append(reader)
    t0 = time.monotonic()
    for r in readers:
        r.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(r.done for r in readers)), spec["timeout"])
    except asyncio.TimeoutError:
        for r in readers:
            if r.finished is None:
                r.fail("not done after %d s (%d bytes)" % (spec["timeout"], r.got))
    end = time.monotonic()
    return {"t0": t0, "wall": end - t0, "clients": [r.result(t0) for r in readers]}


def client_process():
    """`python3 scenario_fanout.py client SPEC_JSON`: runs the clients and prints
    their results as JSON."""
    spec = json.loads(sys.argv[2])
    print(json.dumps(asyncio.run(clients_main(spec))), flush=True)


# --- the scenario ---------------------------------------------------------

def parse_size(text):
    """SIZE[k|m|g], powers of 1024, as the fake's csv= reads it."""
    text = text.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "kmg" else text
    if not digits.isdigit() or int(digits) == 0:
        raise ValueError("--size wants SIZE[k|m|g], e.g. 1g or 256m: %r" % text)
    return int(digits) * mult


def size_text(size):
    for unit, mult in (("g", GIB), ("m", MIB), ("k", 1024)):
        if size % mult == 0:
            return "%d%s" % (size // mult, unit)
    return str(size)


def fmt_size(size):
    return ("%g GiB" % (size / GIB)) if size >= GIB else ("%g MiB" % (size / MIB))


def free_bytes(path):
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def wchar(pid):
    """Bytes the process passed to write()-type syscalls (/proc/PID/io wchar):
    for the fake, its TLS records as they left it."""
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def gateway_metric(bench, gateway, name):
    return bench.gateway_metrics(gateway).get(name, 0.0)


def downloads_total(bench, gateway):
    m = bench.gateway_metrics(gateway)
    return {r: m.get('gumloop_gateway_downloads_total{result="%s"}' % r, 0.0)
            for r in ("complete", "joined", "aborted", "failed")}


def wait_idle(bench, gateway, timeout=20):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if gateway_metric(bench, gateway, "gumloop_gateway_downloads_active") == 0:
            return True
        time.sleep(0.05)
    return False


def verify(bench, targets, size):
    """Every target serves the same small CSV; the proxies send upstream exactly
    user_id, data_export_id and download=true plus the credential headers."""
    lines = []
    bodies = {}
    for t in targets:
        export_id = "fcheck-%s;states=COMPLETED;csv=4k" % t.name
        if t.name == "direct":
            cmd = bench.curl_cmd(t, export_id, out="-", extra=["-D", "/dev/stdout"])
        else:
            # what the client adds must not reach the upstream (the gateway answers a
            # client's user_id with 400, so only nginx gets that one)
            junk = "&extra=1" + ("&user_id=intruder" if t.name.startswith("nginx") else "")
            cmd = ["curl", "-sS", "-o", "-", "-D", "/dev/stdout",
                   t.url(export_id) + junk + "&download=true"]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        if (r.returncode != 0 or not head.startswith(b"HTTP/1.1 200")
                or b"content-type: text/csv" not in head.lower() or len(body) != 4096):
            raise RuntimeError("%s: check download failed (exit %d): %r %s"
                               % (t.label, r.returncode, r.stdout[:300],
                                  r.stderr.decode(errors="replace")))
        if body != expected_bytes(0, 4096):
            raise RuntimeError("%s: the check CSV is not the fake's" % t.label)
        bodies[t.name] = body
        if t.name == "direct":
            continue
        last = bench.fake_stats()["last"]
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(last["uri"]).query,
                                       keep_blank_values=True)
        want = [("user_id", USER_ID), ("data_export_id", export_id), ("download", "true")]
        hdrs = last["headers"]
        if (query != want or hdrs.get("authorization") != "Bearer " + API_KEY
                or hdrs.get("x-auth-key") != USER_ID):
            raise RuntimeError("%s forwarded %r, not %s" % (t.label, last, want))
        lines.append("- %s, asked with `%s&download=true`: 200 text/csv, the fake's 4096 "
                     "bytes; sent upstream `%s` (headers: %s)"
                     % (t.label, junk, last["uri"], ", ".join(sorted(hdrs))))
    lines.insert(0, "`…data_export_id=fcheck-TARGET;states=COMPLETED;csv=4k&download=true` "
                    "from each target:\n")
    lines.append("- direct: 200 text/csv, the same 4096 bytes")
    return "\n".join(lines)


def one_run(bench, target, export_id, args, size, servers, gateway):
    """The clients against one target on a fresh export id; the figures."""
    url = urllib.parse.urlsplit(target.url(export_id) + "&download=true")
    spec = {"scheme": target.scheme, "host": HOST, "port": target.port,
            "path": url.path + "?" + url.query,
            "headers": target.headers, "clients": args.fanout_clients, "size": size,
            "timeout": RUN_TIMEOUT_S, "ca": bench.ca.ca_cert}
    cmd = [sys.executable, "-B", os.path.abspath(__file__), "client", json.dumps(spec)]
    fake_pid = servers["fake"]
    server_pid = target.pid if target.name != "direct" else None
    calls0 = bench.upstream_calls(export_id)
    metrics0 = downloads_total(bench, gateway) if target.name == "gateway" else None
    w0 = wchar(fake_pid)
    cpu0 = {name: cpu_seconds(pid) for name, pid in servers.items()}
    cc0, busy0 = children_cpu_seconds(), machine_busy_seconds()
    sampler = RssSampler(server_pid).start() if server_pid else None
    t_start = time.monotonic()
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=RUN_TIMEOUT_S + 60)
    finally:
        if sampler:
            sampler.stop()
    elapsed = time.monotonic() - t_start
    if r.returncode != 0:
        raise RuntimeError("the client process failed (%d):\n%s" % (r.returncode, r.stderr))
    out = json.loads(r.stdout)
    res = {"target": target, "export_id": export_id, "wall": out["wall"],
           "clients": out["clients"], "rss": sampler, "cmd": cmd, "spec": spec}
    # the fake's TLS bytes may still be on their way out of a transfer nginx or the
    # gateway aborts; by now all are done, but let the counters settle
    if target.name == "gateway":
        res["idle"] = wait_idle(bench, gateway)
    time.sleep(0.3)
    res["upstream_calls"] = bench.upstream_calls(export_id) - calls0
    res["upstream_bytes"] = wchar(fake_pid) - w0
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in servers.items()}
    cpu["clients"] = children_cpu_seconds() - cc0
    cpu["other"] = max(0.0, machine_busy_seconds() - busy0 - sum(cpu.values()))
    res["cpu"] = cpu
    res["cpu_wall"] = elapsed
    if metrics0 is not None:
        m1 = downloads_total(bench, gateway)
        res["downloads"] = {k: int(m1[k] - metrics0[k]) for k in m1}
    ok = [c for c in out["clients"]
          if c["error"] is None and c["got"] == size and not c["bad_count"]]
    res["ok"] = len(ok)
    res["delivered"] = sum(c["got"] for c in out["clients"])
    res["mbps"] = res["delivered"] / res["wall"] / MB if res["wall"] else 0.0
    res["sha256"] = out["clients"][0]["sha256"]
    res["errors"] = ["client %d: %s%s" % (c["index"], c["error"] or "",
                                          " %d windows differ (first at %s)"
                                          % (c["bad_count"], c["bad"]) if c["bad_count"] else "")
                     for c in out["clients"] if c not in ok]
    return res


def drop_nginx_cache(bench):
    """Deletes the downloads' cache files (each run has its own export id)."""
    root = bench.path("nginx", "cache", "dl")
    removed = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                removed += os.path.getsize(os.path.join(dirpath, name))
                os.unlink(os.path.join(dirpath, name))
            except OSError:
                pass
    return removed


def run(bench, args, nofile):
    report = Report("fanout")
    report.raw_title = "Runs"
    n = args.fanout_clients
    size = parse_size(args.size)
    spool_dir = dict(args.gateway_conf).get("download_spool_dir", "/var/tmp")
    notes = []

    # disk: the gateway's spool (spool_dir) and nginx's cache file (the temp dir)
    need = 3 * size
    frees = {}
    for what, path in (("download_spool_dir " + spool_dir, spool_dir),
                       ("the bench's temp dir (nginx's cache)", bench.dir)):
        if path == "off":
            continue
        frees[what] = free_bytes(path)
    low = min([f for f in frees.values() if f is not None] or [need])
    if low < need:
        new = max(64 * MIB, (low // 3) // MIB * MIB)
        msg = ("only %.1f GiB free (%s); the size is reduced from %s to %s (the bench wants "
               "3x the size free)" % (low / GIB, ", ".join(
                   "%s: %.1f GiB" % (k, v / GIB) for k, v in frees.items() if v is not None),
                   fmt_size(size), fmt_size(new)))
        log("warning: " + msg)
        notes.append("**Size reduced**: " + msg)
        size = new
    else:
        notes.append("Free space: " + ", ".join("%s %.1f GiB" % (k, v / GIB)
                                                for k, v in frees.items() if v is not None)
                     + " (3x the size wanted).")
    csv = size_text(size)

    direct = bench.start_fake()
    gateway = bench.start_gateway([("client_timeout", "60s"), ("upstream_idle_timeout", "60s"),
                                   ("max_downloads", "256")] + list(args.gateway_conf))
    nginx = bench.start_nginx(nofile, "nginx-fanout.conf.in")
    nginx_cache = Target("nginx-cache", nginx.port, nginx.pid, path="/cached/export_status",
                         label="nginx, proxy_cache + lock")
    nginx.label = "nginx, proxy_buffering off"
    gateway.label = "gateway (fan-out)"
    direct.label = "direct (fake)"
    log("fake upstream :%d, gateway :%d, nginx :%d" % (direct.port, gateway.port, nginx.port))
    targets = {"gateway": gateway, "nginx": nginx, "nginx-cache": nginx_cache, "direct": direct}
    order = [targets[k] for k, _ in TARGETS]
    report.text("Check", verify(bench, order, size) + "\n\n" + "\n".join(notes))

    servers = {"fake": direct.pid, "gateway": gateway.pid, "nginx": nginx.pid}
    tag = time.strftime("%H%M%S")
    runs = {k: [] for k, _ in TARGETS}
    details = []
    for rnd in range(1, args.fanout_rounds + 1):
        for t in order:
            export_id = "fan-%s-%d-%s;states=COMPLETED;csv=%s" % (tag, rnd, t.name, csv)
            log("fanout: %d clients x %s, %s, round %d/%d"
                % (n, fmt_size(size), t.label, rnd, args.fanout_rounds))
            res = one_run(bench, t, export_id, args, size, servers, gateway)
            if t.name == "nginx-cache":
                res["cache_file"] = drop_nginx_cache(bench)
            runs[t.name].append(res)
            cl = res["clients"]
            fins = sorted(c["finished"] for c in cl if c["finished"] is not None)
            fbs = sorted(c["first_byte"] for c in cl if c["first_byte"] is not None)
            log("  %.2f s, %.0f MB/s, %d upstream calls, %.2f GiB from the fake, %d/%d ok%s, "
                "other CPU %.0f%%"
                % (res["wall"], res["mbps"], res["upstream_calls"],
                   res["upstream_bytes"] / GIB, res["ok"], n,
                   ", peak RSS %s" % fmt_mib(res["rss"].peak) if res["rss"] else "",
                   100 * res["cpu"]["other"] / res["cpu_wall"]))
            details.append(
                "%s, round %d: `%s`, %d clients; %.3f s; upstream calls %d, fake wrote %d "
                "bytes; first byte %s; finished %s; CPU s: %s%s%s%s" % (
                    t.label, rnd, export_id, n, res["wall"], res["upstream_calls"],
                    res["upstream_bytes"], spread(fbs), spread(fins),
                    ", ".join("%s %.2f" % kv for kv in res["cpu"].items()),
                    "; gateway downloads_total: " + ", ".join(
                        "%s %d" % kv for kv in res["downloads"].items())
                    if "downloads" in res else "",
                    "; cache file %d bytes" % res["cache_file"] if "cache_file" in res else "",
                    "; ERRORS: " + "; ".join(res["errors"][:5]) if res["errors"] else ""))
            time.sleep(1)
    bench.record("clients (bench/scenario_fanout.py as a child, one asyncio process for all "
                 "%d; spec shown for the gateway's last run)" % n,
                 runs["gateway"][-1]["cmd"])
    report.raw = ["\n".join(details)]

    # the table: medians over the rounds
    gib_delivered = n * size / GIB
    med = {}
    rows = []
    for key, _ in TARGETS:
        rs = runs[key]
        t = targets[key]
        m = {
            "mbps": median([r["mbps"] for r in rs]),
            "wall": median([r["wall"] for r in rs]),
            "calls": median([r["upstream_calls"] for r in rs]),
            "ubytes": median([r["upstream_bytes"] for r in rs]),
            "peak": median([r["rss"].peak for r in rs]) if rs[0]["rss"] else None,
            "hwm": median([r["rss"].hwm for r in rs]) if rs[0]["rss"] and rs[0]["rss"].hwm_reset
            else None,
            "server_cpu": median([r["cpu"][key if key != "nginx-cache" else "nginx"]
                                  for r in rs]) if key != "direct" else None,
            "fake_cpu": median([r["cpu"]["fake"] for r in rs]),
            "client_cpu": median([r["cpu"]["clients"] for r in rs]),
            "other": median([r["cpu"]["other"] / r["cpu_wall"] for r in rs]),
            "first_byte_max": median([max(c["first_byte"] or 0 for c in r["clients"])
                                      for r in rs]),
            "first_done": median([min(c["finished"] or r["wall"] for c in r["clients"])
                                  for r in rs]),
        }
        med[key] = m
        ok = sum(r["ok"] for r in rs)
        rows.append([
            t.label, "**%.0f**" % m["mbps"],
            " / ".join("%.0f" % r["mbps"] for r in rs),
            "%.2f s" % m["wall"], "%.2f s" % m["first_done"],
            "%.0f" % m["calls"],
            "%.2f GiB (%.2fx the file)" % (m["ubytes"] / GIB, m["ubytes"] / size),
            ("**%s**" % fmt_mib(m["peak"])) if m["peak"] is not None else "–",
            fmt_mib(m["hwm"]) if m["hwm"] is not None else "–",
            "%.2f s/GiB" % (m["server_cpu"] / gib_delivered) if m["server_cpu"] is not None
            else "–",
            "%.2f s" % m["fake_cpu"], "%.2f s" % m["client_cpu"],
            "%.0f%%" % (100 * m["other"]),
            "%d/%d" % (ok, n * len(rs)),
        ])
    g, ng = med["gateway"], med["nginx"]
    goals = [
        "- gateway: one upstream transfer for %d concurrent downloads: %s upstream calls "
        "(median; per round %s), %.2f GiB from the fake — **%s**"
        % (n, "%.0f" % g["calls"], " / ".join(str(r["upstream_calls"]) for r in runs["gateway"]),
           g["ubytes"] / GIB,
           "met" if all(r["upstream_calls"] == 1 for r in runs["gateway"]) else "missed"),
        "- gateway: aggregate ≥ %.0fx nginx's without cache: %.0f ÷ %.0f MB/s = %.2fx — **%s**"
        % (SPEEDUP_GOAL, g["mbps"], ng["mbps"], g["mbps"] / ng["mbps"],
           "met" if g["mbps"] >= SPEEDUP_GOAL * ng["mbps"] else "missed"),
        "- gateway: peak RSS < %d MiB: %s (max over rounds %s) — **%s**"
        % (RSS_GOAL_MIB, fmt_mib(g["peak"]),
           fmt_mib(max(r["rss"].peak for r in runs["gateway"])),
           "met" if max(r["rss"].peak for r in runs["gateway"]) < RSS_GOAL_MIB * 1024
           else "missed"),
        "- for reference: gateway ÷ nginx with proxy_cache + lock = %.2fx; gateway ÷ direct "
        "= %.2fx" % (g["mbps"] / med["nginx-cache"]["mbps"], g["mbps"] / med["direct"]["mbps"]),
    ]
    cores = os.cpu_count() or 1
    ceiling = []
    for key, _ in TARGETS:
        per_gib = ((med[key]["server_cpu"] or 0) + med[key]["fake_cpu"]
                   + med[key]["client_cpu"]) / gib_delivered
        ceiling.append("%s %.2f s/GiB, at most %.0f MB/s" % (
            targets[key].label, per_gib, cores * GIB / per_gib / MB if per_gib else 0))
    goals.append("- CPU ceiling: the CPU seconds per GiB delivered of server + fake + clients "
                 "(medians), and what %d cores, all busy with nothing else, could deliver at "
                 "that cost: %s. The kernel's loopback work is charged to whichever of them "
                 "was running." % (cores, "; ".join(ceiling)))
    report.text("Goals", "\n".join(goals))
    report.table(
        "%d concurrent downloads of one %s export" % (n, fmt_size(size)),
        ["target", "aggregate MB/s (median)", "per round", "last client done",
         "first client done", "upstream calls", "bytes from the fake", "peak RSS",
         "VmHWM", "server CPU per GiB delivered", "fake CPU", "clients CPU", "other CPU",
         "clients complete and correct"], rows,
        "%d clients (one asyncio child process) connect, then all send `GET …"
        "data_export_id=fan-TAG-ROUND-TARGET;states=COMPLETED;csv=%s&download=true` at "
        "once; a fresh export id per run; %d round(s), the targets interleaved (gateway, "
        "nginx, nginx cache, direct), medians shown. Aggregate MB/s = %d × %d bytes ÷ the "
        "time from sending the requests to the last client's last byte (10^6 bytes/s). "
        "Upstream calls: the fake's `/_stats` count for the id (every one is a download "
        "transfer). Bytes from the fake: what it wrote (`wchar` of /proc/PID/io: TLS "
        "records, about 0.1%% over the CSV). Peak RSS: VmRSS of the server (nginx: master, "
        "worker, cache manager and loader) every 50 ms; VmHWM the kernel's peak since a "
        "reset before the run. Server CPU: gateway or nginx CPU seconds ÷ GiB delivered to "
        "the clients (%g GiB). Fake, clients: CPU seconds over the run; other: the rest of "
        "the machine (busy time from /proc/stat minus the processes measured), %% of one "
        "core. Correct: HTTP 200, Content-Length and exactly %d bytes, 64 bytes at every "
        "MiB and the last 64 as the fake's CSV has them. Direct: TLS handshakes are done "
        "before the requests go out; the proxies' upstream handshakes count."
        % (n, csv, args.fanout_rounds, n, size, gib_delivered, size))

    lines = []
    for key, _ in TARGETS:
        r = sorted(runs[key], key=lambda x: x["mbps"])[len(runs[key]) // 2]
        cl = r["clients"]
        fins = sorted(c["finished"] for c in cl if c["finished"] is not None)
        fbs = sorted(c["first_byte"] for c in cl if c["first_byte"] is not None)
        extra = ""
        if "downloads" in r:
            extra = "; gateway downloads_total: " + ", ".join(
                "%s +%d" % kv for kv in r["downloads"].items())
        if r["rss"]:
            step = 0.5 if r["wall"] < 15 else 2.0
            extra += "; max RSS per %g s (MiB): %s" % (step, " ".join(r["rss"].timeline(step)))
        lines.append("- %s: first byte %s; finished %s%s" % (targets[key].label, spread(fbs),
                                                             spread(fins), extra))
    report.text("Clients (median round)", "Seconds from sending the requests, min / median / "
                "max over the %d clients:\n\n" % n + "\n".join(lines))

    sums = {key: runs[key][0]["sha256"] for key, _ in TARGETS}
    same = len(set(sums.values())) == 1 and None not in sums.values()
    report.text("Same bytes", "\n".join(
        ["Client 0's whole body, hashed with SHA-256 as it arrived (round 1):", ""]
        + ["- %s: `%s`" % (targets[k].label, sums[k]) for k, _ in TARGETS]
        + ["", "**identical**" if same else "**DIFFERENT**"]))

    others = [100 * r["cpu"]["other"] / r["cpu_wall"] for rs in runs.values() for r in rs]
    if max(others) > OTHER_CPU_WARN:
        msg = ("other processes used up to %.0f%% CPU (one core = 100%%) during the runs: the "
               "numbers are disturbed (page-cache writeback of the spool and of nginx's cache "
               "file counts here too); rerun on a quiet machine" % max(others))
        log("warning: " + msg)
        report.sections.insert(0, ("Warning", msg))
    if not same:
        report.failures.append("the downloads differ between targets")
    for key, rs in runs.items():
        for r in rs:
            if r["errors"]:
                report.failures.append("%s: %d of %d clients did not get the file right (%s)"
                                       % (targets[key].label, len(r["errors"]), n,
                                          r["errors"][0]))
    return report


def spread(values):
    if not values:
        return "–"
    return "%.2f / %.2f / %.2f" % (values[0], values[len(values) // 2], values[-1])


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "client":
    client_process()
