"""scenario_cache -- bench/run cache: warm-cache throughput of the gateway,
nginx (bench/nginx-cache.conf.in), the floor (bench/floor.c, a bare evhttp
handler sending the gateway's hit) and the fake itself, then request
coalescing of a cold id under N pollers, gateway against nginx."""

import os
import re
import subprocess
import time
import urllib.parse

from benchlib import (API_KEY, BENCH_DIR, HOST, TTL_S, USER_ID, Report, Target, fmt_errors,
                      fmt_ms, free_port, http_get_ordered, log, port_open, quote, read_text,
                      median, wait_for)

WARM_ID = "warm;states=IN_PROGRESS"
# Headers whose values follow the cache entry's age (and the clock): the floor's
# are compared with the gateway's digits aside.
TIME_HEADERS = ("age", "cache-status", "cache-control", "date")


def verify(bench, targets):
    """Same answer from all three, and both proxies forward exactly user_id and
    data_export_id plus the credential headers."""
    export_id = "bench;states=IN_PROGRESS"
    answers = {}
    for t in targets:
        status, ctype, body = bench.get(t, export_id)
        if status != 200 or not (ctype or "").startswith("application/json"):
            raise RuntimeError("%s answered %s %s: %r" % (t.name, status, ctype, body[:200]))
        answers[t.name] = body
    if len(set(answers.values())) != 1:
        raise RuntimeError("different bodies: %r" % answers)
    lines = ["GET /export_status?data_export_id=%s → 200 from %s, identical bodies:"
             % (quote(export_id), ", ".join(answers)), "", "```json",
             answers["gateway"].decode(), "```"]
    for t in targets:
        if t.name == "direct":
            continue
        fid = "fwd-%s;states=IN_PROGRESS" % t.name
        # nginx ignores the client's query apart from data_export_id; the gateway
        # would (rightly) answer 403 for a foreign user_id, so only junk there
        junk = "&extra=1" + ("&user_id=intruder&download=true" if t.name == "nginx" else "")
        status, _, _ = bench.get(t, fid, junk)
        last = bench.fake_stats()["last"]
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(last["uri"]).query,
                                       keep_blank_values=True)
        want = [("user_id", USER_ID), ("data_export_id", fid)]
        hdrs = last["headers"]
        if (status != 200 or query != want
                or hdrs.get("authorization") != "Bearer " + API_KEY
                or hdrs.get("x-auth-key") != USER_ID):
            raise RuntimeError("%s forwarded %r (status %s)" % (t.name, last, status))
        lines.append("- %s, asked with `%s`, sent upstream `%s` (headers: %s)"
                     % (t.name, junk, last["uri"], ", ".join(sorted(hdrs))))
    return "\n".join(lines)


# --- the floor: a bare evhttp handler ----------------------------------------

def gateway_hit(gateway, export_id):
    """The gateway's answer to export_id once it is cached: (headers as sent, body)."""
    path = "/export_status?data_export_id=" + quote(export_id)
    for _ in range(3):
        status, headers, body = http_get_ordered(gateway.port, path)
        if status != 200:
            raise RuntimeError("gateway answered %d for %s" % (status, export_id))
        if dict((k.lower(), v) for k, v in headers).get("x-cache") == "HIT":
            return headers, body
    raise RuntimeError("gateway did not answer %s from its cache" % export_id)


def build_floor(bench):
    """bench/floor.c compiled into the temp dir, warnings as errors."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libevent"], text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if flags.returncode != 0:
        raise RuntimeError("pkg-config libevent failed (libevent-dev installed?): "
                           + flags.stdout)
    binary = bench.path("floor")
    cmd = (["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", binary,
            os.path.join(BENCH_DIR, "floor.c")] + flags.stdout.split())
    bench.record("floor, built", cmd)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError("building the floor failed:\n" + r.stdout)
    return binary


def start_floor(bench, body, etag):
    """The floor on a free port, answering body with the gateway's hit headers."""
    binary = build_floor(bench)
    port = free_port(HOST)
    cmd = [binary, HOST, str(port), body.decode(), etag]
    bench.record("floor", cmd)
    log_path = bench.path("floor.log")
    bench.logs.append(("floor", log_path))
    proc = bench.procs.start("floor", cmd, log_path)

    def ready():
        if proc.poll() is not None:
            raise RuntimeError("floor exited with %s:\n%s" % (proc.returncode,
                                                             read_text(log_path)))
        return port_open(port)
    wait_for(ready, 10, "the floor")
    return Target("floor", port, proc.pid)


def comparable(headers):
    """[(name, value)] with the digits of time-dependent values and Date's value aside."""
    out = []
    for name, value in headers:
        key = name.lower()
        if key == "date":
            value = "…"
        elif key in TIME_HEADERS:
            value = re.sub(r"\d+", "N", value)
        out.append((key, value))
    return out


def verify_floor(floor, hit_headers, hit_body):
    """The floor sends what the gateway sends on a hit: the same headers in the same
    order, the same values (digits of Age, ttl, max-age aside) and the same body."""
    status, headers, body = http_get_ordered(floor.port, "/export_status?data_export_id="
                                             + quote(WARM_ID))
    if status != 200 or body != hit_body or comparable(headers) != comparable(hit_headers):
        raise RuntimeError("the floor answered %d %r %r; the gateway's hit: %r %r"
                           % (status, headers, body, hit_headers, hit_body))
    return ("- floor, asked for `%s`, answered as the gateway does on a hit: the same "
            "%d-byte body and, in the same order, %s"
            % (WARM_ID, len(body), ", ".join("`%s: %s`" % kv for kv in headers)))


# --- the scenario ------------------------------------------------------------


def run(bench, args, nofile):
    report = Report("cache")
    direct = bench.start_fake()
    extra = list(getattr(args, "gateway_conf", []))  # bench/run --gateway-conf KEY=VALUE
    gateway = bench.start_gateway(extra)
    nginx = bench.start_nginx(nofile, "nginx-cache.conf.in",
                              {"STALE": "" if args.nginx_use_stale else "#"},
                              label="nginx+stale" if args.nginx_use_stale else "nginx")
    hit_headers, hit_body = gateway_hit(gateway, WARM_ID)
    floor = start_floor(bench, hit_body,
                        dict((k.lower(), v) for k, v in hit_headers).get("etag", '""'))
    log("fake upstream :%d, gateway :%d, nginx :%d, floor :%d"
        % (direct.port, gateway.port, nginx.port, floor.port))
    report.text("Check", verify(bench, [gateway, nginx, direct]) + "\n"
                + verify_floor(floor, hit_headers, hit_body)
                + ("\n\nGateway settings from `--gateway-conf`: %s."
                   % ", ".join("`%s = %s`" % kv for kv in extra) if extra else ""))
    duration = args.duration

    # a. warm-cache throughput: the targets interleaved, round after round, so a
    # neighbour's burst on this shared machine hits them all alike; medians reported
    rounds = max(1, args.rounds)
    targets = (gateway, nginx, floor, direct)
    runs = {t.name: [] for t in targets}
    for t in targets:
        status = bench.get(t, WARM_ID)[0]
        if status != 200:
            raise RuntimeError("warm-up on %s answered %d" % (t.label, status))
    for round_number in range(1, rounds + 1):
        for t in targets:
            before = bench.upstream_calls(WARM_ID)
            log("warm, round %d/%d: %s, wrk -t1 -c50 -d%ds"
                % (round_number, rounds, t.label, duration))
            res = bench.wrk("warm-cache throughput, %s, round %d" % (t.label, round_number),
                            t, WARM_ID, 1, 50, duration)
            time.sleep(0.3)
            res["calls"] = bench.upstream_calls(WARM_ID) - before
            report.raw.append(res["raw"])
            runs[t.name].append(res)
            time.sleep(1)
    warm = {}
    for name, results in runs.items():
        warm[name] = {key: median([r[key] for r in results])
                      for key in ("rps", "p50", "p99", "cpu_pct")}
        warm[name]["calls"] = sum(r["calls"] for r in results)
    base = warm["nginx"]["rps"] or float("nan")
    floor_rps = warm["floor"]["rps"] or float("nan")
    rows = []
    for t in targets:
        r = warm[t.name]
        # each round's ratio to the floor's run just after it, then their median:
        # a paired comparison, steadier than the ratio of medians when the machine
        # drifts from round to round
        paired = median([x["rps"] / f["rps"] if x["rps"] and f["rps"] else None
                         for x, f in zip(runs[t.name], runs["floor"])])
        rows.append([t.label, "%.0f" % r["rps"],
                     " / ".join("%.0f" % x["rps"] for x in runs[t.name]),
                     "%.2f" % (r["rps"] / base), "%.2f" % (r["rps"] / floor_rps),
                     "%.2f" % paired if paired is not None else "–",
                     fmt_ms(r["p50"]), fmt_ms(r["p99"]),
                     "–" if t.name == "floor" else r["calls"], "%.0f%%" % r["cpu_pct"],
                     " / ".join(fmt_errors(x) for x in runs[t.name])])
    report.table(
        "Warm-cache throughput",
        ["target", "req/s (median)", "req/s by round", "vs nginx", "vs floor",
         "vs floor, paired", "p50", "p99", "upstream calls", "server CPU", "wrk errors"], rows,
        "wrk -t1 -c50 -d%ds --latency per run, export id `%s` warmed with one request "
        "first; %d rounds, each running the targets one after the other in this order; "
        "req/s, p50, p99 and CPU are medians over the rounds, upstream calls their sum. "
        "`vs floor` is the ratio of the medians; `vs floor, paired` the median over the "
        "rounds of each round's ratio to the floor's run in the same round. "
        "`floor` is bench/floor.c, a bare evhttp handler that sends the gateway's hit "
        "(same headers, same body) without a cache or an upstream: the floor of the "
        "gateway's stack. "
        "`direct` is wrk straight at the fake upstream over HTTPS (no cache; reference). "
        "Upstream calls = requests the fake saw for that id during the runs; ideal for a "
        "cache is one per %d s TTL window (%d)."
        % (duration, WARM_ID, rounds, TTL_S, rounds * (duration // TTL_S)))

    # b. coalescing: a cold id, N concurrent pollers
    windows = max(1.0, duration / TTL_S)  # a run shorter than the TTL is one window
    tag = time.strftime("%H%M%S")
    rows = []
    for n in args.conns:
        for t in (gateway, nginx):
            cid = "coal-%s-%s-%d;states=IN_PROGRESS;delay=50" % (tag, t.name, n)
            before = bench.upstream_calls(cid)
            log("coalescing: %s, N=%d, wrk -t2 -c%d -d%ds" % (t.label, n, n, duration))
            res = bench.wrk("coalescing, %s, N=%d" % (t.label, n), t, cid, 2, n, duration,
                            timeout=10)
            time.sleep(0.3)
            calls = bench.upstream_calls(cid) - before
            report.raw.append(res["raw"])
            rows.append([n, t.label, calls, "%.1f" % (calls / windows), fmt_ms(res["p50"]),
                         fmt_ms(res["p99"]), "%.0f" % res["rps"], "%.0f%%" % res["cpu_pct"],
                         fmt_errors(res)])
            time.sleep(2)  # let the closed connections drain
    report.table(
        "Coalescing",
        ["N", "target", "upstream calls", "calls per %d s window" % TTL_S, "p50", "p99",
         "req/s", "server CPU", "wrk errors"], rows,
        "A cold export id (`coal-…-TARGET-N;states=IN_PROGRESS;delay=50`: every upstream "
        "answer takes ≥ 50 ms) polled by N connections: wrk -t2 -cN -d%ds --latency "
        "--timeout 10s. %d s / %d s TTL = %g windows: the ideal is 1 call per window "
        "(%d–%d calls in all)." % (duration, duration, TTL_S, windows, int(windows),
                                   int(windows) + 1))
    return report
