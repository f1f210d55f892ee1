"""scenario_fleet -- bench/run fleet: the design doc's "Fleet mode" against its
performance target. Three targets of three instances each, all in front of ONE
fake upstream: three gateways on one Redis (fleet mode), three standalone
gateways (no Redis) and three nginx (each its own proxy_cache +
proxy_cache_lock, one worker, bench/nginx-cache.conf.in).

1. Coalescing across instances: N pollers (default 300 and 3000) of one cold
   export, spread evenly over a target's three instances (one wrk per instance,
   started together), for --duration seconds (default 10: five 2 s windows).
   Upstream calls (the fake's /_stats by_id, a fresh id per run) in all and in
   each 2 s of the run, client requests, p50/p99 over all three wrk (merged from
   their latency quantiles), errors, CPU, and the Redis commands of the run.
2. Warm-cache req/s per instance: wrk -t1 -c50 on a cached COMPLETED export,
   one fleet gateway against one standalone gateway. A hit never touches Redis,
   so the goal is within 5%; the Redis commands during the fleet's run show it.

The targets are interleaved within each round (--rounds, default 2); medians
are reported, the goal on upstream calls is checked in every round."""

import math
import os
import shutil
import threading
import time

from benchlib import gwtest  # tests/gwtest.py, on the path benchlib set
from benchlib import (HOST, TTL_S, Report, children_cpu_seconds, cpu_seconds, fmt_errors,
                      fmt_ms, free_port, http_get, log, machine_busy_seconds, median, quote,
                      read_text, wait_for)

INSTANCES = 3
GROUPS = (
    # (key, label)
    ("fleet", "fleet (3 gateways + Redis)"),
    ("standalone", "3 standalone gateways"),
    ("nginx", "3 nginx"),
)
REDIS_PASSWORD = "bench-redis-password-0123456789"  # a secret in the gateway's config
WARM_ID = "fleet-warm;states=COMPLETED"             # lives cache_final_ttl (60 s)
POLL_STATES = "states=IN_PROGRESS;delay=50"          # pending: cache_pending_ttl; >= 50 ms each
WARM_GOAL = 0.95          # fleet gateway's warm req/s ÷ a standalone gateway's
SAMPLE_S = 0.25           # how often the fake's /_stats is read during a run
SETTLE_S = 0.5            # after the run, before the last count
OTHER_CPU_WARN = 20
SLICES = 1000             # latency quantiles per wrk, at the midpoints of equal slices

# wrk -s: only done() is defined, so wrk still sends its prebuilt request and runs
# no Lua per request. It prints the latency quantiles (µs) at the midpoints of
# SLICES equal slices: each stands for requests/SLICES of that wrk's requests, so
# the three wrk of a run merge into one distribution (p50, p99 over all clients).
QUANTILES_LUA = """-- bench/scenario_fleet.py: latency quantiles for merging three wrk runs
done = function(summary, latency, requests)
  local out = {}
  for i = 0, %d do
    out[#out + 1] = string.format("%%d", latency:percentile((i + 0.5) * 100 / %d))
  end
  io.write("QUANTILES " .. table.concat(out, " ") .. "\\n")
end
""" % (SLICES - 1, SLICES)


# --- Redis --------------------------------------------------------------------

class Redis:
    """redis-server on a free port, nothing saved, the default user behind a
    password; started and stopped through bench.procs."""

    def __init__(self, bench):
        exe = shutil.which(gwtest.REDIS_SERVER)
        if exe is None:
            raise RuntimeError("%s missing (apt-get install redis-server)" % gwtest.REDIS_SERVER)
        self.port = free_port(HOST)
        self.address = "%s:%d" % (HOST, self.port)
        directory = bench.path("redis")
        os.makedirs(directory, exist_ok=True)
        cmd = [exe, "--bind", HOST, "--port", str(self.port), "--save", "",
               "--appendonly", "no", "--requirepass", REDIS_PASSWORD, "--dir", directory]
        log_path = bench.path("redis", "redis.log")
        bench.record("redis-server", cmd)
        bench.logs.append(("redis-server", log_path))
        self.proc = bench.procs.start("redis-server", cmd, log_path)
        self.pid = self.proc.pid

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited with %s:\n%s"
                                   % (self.proc.returncode, read_text(log_path)))
            try:
                return self.call("PING") == "PONG"
            except (OSError, gwtest.RedisError):
                return False
        wait_for(ready, 10, "redis-server")
        # one connection for the readings: between two, only the INFO is ours
        self.conn = gwtest.Resp(self.address, REDIS_PASSWORD)
        bench.procs.adopt("redis connection", self.conn.close)
        self.version = self.info("server").get("redis_version", "?")

    def call(self, *args):
        conn = gwtest.Resp(self.address, REDIS_PASSWORD)
        try:
            return conn.call(*args)
        finally:
            conn.close()

    def info(self, section):
        out = {}
        for line in self.conn.call("INFO", section).decode().splitlines():
            key, sep, value = line.partition(":")
            if sep and not key.startswith("#"):
                out[key] = value.strip()
        return out

    def commands(self):
        """{command: calls} from INFO commandstats (the INFO asking counts from the
        next reading on). Commands a script runs (EVAL) count under their own names
        too."""
        out = {}
        for key, value in self.info("commandstats").items():
            if key.startswith("cmdstat_"):
                fields = dict(f.split("=", 1) for f in value.split(",") if "=" in f)
                out[key[len("cmdstat_"):]] = int(fields.get("calls", 0))
        return out


def command_delta(before, after):
    """{command: calls} between two commands() readings, less the INFO that read
    `before` (counted in `after`)."""
    delta = {k: v - before.get(k, 0) for k, v in after.items()}
    delta["info"] = delta.get("info", 0) - 1
    return {k: v for k, v in delta.items() if v > 0}


def fmt_commands(delta):
    return ", ".join("%s %d" % kv for kv in sorted(delta.items(), key=lambda kv: -kv[1])) or "none"


# --- the targets ------------------------------------------------------------

def start_targets(bench, nofile, redis, max_n):
    per = -(-max_n // INSTANCES)
    extra = []
    if per + 1024 > 10000:  # the gateway's default max_connections
        extra.append(("max_connections", str(per + 1024)))
    groups = {"fleet": [], "standalone": [], "nginx": []}
    for i in range(1, INSTANCES + 1):
        groups["fleet"].append(bench.start_gateway(
            extra + [("redis", redis.address), ("redis_password", REDIS_PASSWORD)],
            name="fleet-%d" % i))
    for i in range(1, INSTANCES + 1):
        groups["standalone"].append(bench.start_gateway(extra, name="standalone-%d" % i))
    for i in range(1, INSTANCES + 1):
        groups["nginx"].append(bench.start_nginx(nofile, "nginx-cache.conf.in", {"STALE": "#"},
                                                 label="nginx-%d" % i, name="nginx-%d" % i))
    return groups


def redis_metrics(bench, gateway):
    m = bench.gateway_metrics(gateway)
    return (m.get("gumloop_gateway_redis_up"),
            sum(v for k, v in m.items() if k.startswith("gumloop_gateway_redis_errors_total")))


def check(bench, direct, groups, redis):
    """Every instance answers as the fake does; the fleet's instances are on Redis
    and share an entry (one upstream call for three instances), the standalone
    gateways and the nginx do not (three)."""
    lines = ["- redis-server %s on %s (`--save '' --appendonly no --requirepass …`)"
             % (redis.version, redis.address)]
    for g in groups["fleet"]:
        up, errors = redis_metrics(bench, g)
        if up != 1:
            raise RuntimeError("%s: gumloop_gateway_redis_up is %s, not 1 (logs: %s)"
                               % (g.label, up, read_text(bench.path(g.label + ".log"))[-2000:]))
        lines.append("- %s: `gumloop_gateway_redis_up 1`, redis_errors_total %d"
                     % (g.label, errors))
    tag = time.strftime("%H%M%S")
    for key, label in GROUPS:
        export_id = "check-%s-%s;states=IN_PROGRESS" % (tag, key)
        bodies = set()
        for t in groups[key]:
            status, ctype, body = bench.get(t, export_id)
            if status != 200 or not (ctype or "").startswith("application/json"):
                raise RuntimeError("%s answered %s %s: %r" % (t.label, status, ctype, body[:200]))
            bodies.add(body)
        time.sleep(0.1)
        calls = bench.upstream_calls(export_id)
        status, _, body = bench.get(direct, export_id)
        if status != 200 or bodies != {body}:
            raise RuntimeError("%s: the instances' answers %r differ from the fake's %r"
                               % (label, bodies, body))
        want = 1 if key == "fleet" else INSTANCES
        lines.append("- %s: `%s` asked of each instance in turn (within the %d s TTL): the "
                     "fake's body from all three, %d upstream call%s (expected %d)%s"
                     % (label, export_id, TTL_S, calls, "" if calls == 1 else "s", want,
                        "" if calls == want else " — **unexpected**"))
    return "\n".join(lines)


def ensure_hit(bench, target, export_id):
    """export_id cached on target: asked until it answers X-Cache: HIT."""
    path = "/export_status?data_export_id=" + quote(export_id)
    for _ in range(3):
        status, headers, _ = http_get(target.port, path)
        if status != 200:
            raise RuntimeError("%s answered %d for %s" % (target.label, status, export_id))
        if headers.get("x-cache") == "HIT":
            return
    raise RuntimeError("%s did not answer %s from its cache" % (target.label, export_id))


# --- one polling run ------------------------------------------------------------

def split(n):
    """n pollers over the instances, as evenly as they go."""
    return [n // INSTANCES + (1 if i < n % INSTANCES else 0) for i in range(INSTANCES)]


def strip_quantiles(raw):
    keep, quantiles = [], None
    for line in raw.splitlines():
        if line.startswith("QUANTILES "):
            quantiles = [float(v) / 1000.0 for v in line.split()[1:]]  # µs -> ms
        else:
            keep.append(line)
    return "\n".join(keep) + "\n", quantiles


def merged_percentiles(results, percents):
    """p-th percentiles (ms) over every request of several wrk runs: each run's
    SLICES quantiles weigh requests/SLICES."""
    points = []
    for r in results:
        if r["quantiles"] and r["requests"]:
            w = r["requests"] / len(r["quantiles"])
            points += [(v, w) for v in r["quantiles"]]
    if not points:
        return [None] * len(percents)
    points.sort()
    total = sum(w for _, w in points)
    out = []
    for p in percents:
        goal, acc = total * p / 100.0, 0.0
        value = points[-1][0]
        for v, w in points:
            acc += w
            if acc >= goal - 1e-9:
                value = v
                break
        out.append(value)
    return out


def poll_run(bench, redis, group, key, label, export_id, n, duration, script, round_number):
    """N pollers of export_id over group's instances; the run's figures."""
    counts = split(n)
    pids = [t.pid for t in group] + ([redis.pid] if key == "fleet" else [])
    results, failed = [None] * INSTANCES, []

    def one(i):
        t = group[i]
        try:
            results[i] = bench.wrk("polling, %s, N=%d: %s (%d of %d), round %d"
                                   % (label, n, t.label, counts[i], n, round_number),
                                   t, export_id, 1, counts[i], duration, timeout=10,
                                   script=script)
        except Exception as e:  # noqa: BLE001 (re-raised in the bench's thread)
            failed.append(e)
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(INSTANCES)]
    commands0 = redis.commands() if key == "fleet" else None
    cpu0 = sum(cpu_seconds(p) for p in pids)
    fake0 = cpu_seconds(bench.fake.proc.pid)
    cc0, busy0 = children_cpu_seconds(), machine_busy_seconds()
    t0 = time.monotonic()
    for th in threads:
        th.start()
    samples = []  # (seconds since t0, calls so far)
    while any(th.is_alive() for th in threads):
        time.sleep(SAMPLE_S)
        try:
            samples.append((time.monotonic() - t0, bench.upstream_calls(export_id)))
        except OSError:
            pass  # a busy fake: the next sample counts it
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    if failed:
        raise failed[0]
    time.sleep(SETTLE_S)
    calls = bench.upstream_calls(export_id)
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    fake_cpu = cpu_seconds(bench.fake.proc.pid) - fake0
    wrk_cpu = children_cpu_seconds() - cc0
    other = max(0.0, machine_busy_seconds() - busy0 - cpu - fake_cpu - wrk_cpu)
    commands = command_delta(commands0, redis.commands()) if key == "fleet" else None

    # calls per TTL slice of the run, by when a sample first saw them
    slices = [0] * max(1, math.ceil(duration / TTL_S))
    seen = 0
    for t, c in samples:
        if c > seen:
            slices[min(int(t // TTL_S), len(slices) - 1)] += c - seen
            seen = c
    late = max(0, calls - seen)

    for r in results:
        r["raw"], r["quantiles"] = strip_quantiles(r["raw"])
    p50, p99 = merged_percentiles(results, (50, 99))
    errors = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "calls": calls, "slices": slices, "late": late,
        "requests": sum(r["requests"] for r in results),
        "per_instance": [r["requests"] for r in results],
        "rps": sum(r["rps"] for r in results),
        "p50": p50, "p99": p99,
        "inst_p99": [r["p99"] for r in results],
        "errors": {"errors": errors, "non2xx": sum(r["non2xx"] for r in results)},
        "cpu_pct": 100.0 * cpu / wall, "other_pct": 100.0 * other / wall,
        "commands": commands, "counts": counts, "wall": wall,
        "raw": [r["raw"] for r in results],
    }


def fmt_slices(r):
    return " ".join(str(c) for c in r["slices"]) + (" (+%d after)" % r["late"] if r["late"] else "")


# --- the scenario ---------------------------------------------------------------

def run(bench, args, nofile):
    report = Report("fleet")
    clients = args.fleet_clients
    rounds = args.fleet_rounds
    duration = args.duration
    warm_s = max(2, duration // 2)
    windows = max(1.0, duration / TTL_S)
    lo, hi = max(1, int(windows)), int(windows) + 1   # one call per window, +1 at the end

    direct = bench.start_fake()
    redis = Redis(bench)
    groups = start_targets(bench, nofile, redis, max(clients))
    log("fake upstream :%d, redis :%d, fleet %s, standalone %s, nginx %s" % (
        direct.port, redis.port,
        *(" ".join(":%d" % t.port for t in groups[k]) for k, _ in GROUPS)))
    script = bench.path("quantiles.lua")
    with open(script, "w") as f:
        f.write(QUANTILES_LUA)
    bench.configs.append(("quantiles.lua (wrk -s, written by bench/scenario_fleet.py)",
                          QUANTILES_LUA, "lua"))
    report.text("Check", check(bench, direct, groups, redis))
    errors0 = {t.label: redis_metrics(bench, t)[1] for t in groups["fleet"]}

    labels = dict(GROUPS)
    tag = time.strftime("%H%M%S")
    polls = {(n, k): [] for n in clients for k, _ in GROUPS}
    warm = {"fleet": [], "standalone": []}
    warm_targets = {"fleet": groups["fleet"][0], "standalone": groups["standalone"][0]}
    for round_number in range(1, rounds + 1):
        for n in clients:
            for key, label in GROUPS:
                export_id = "fl-%s-%d-%s-%d;%s" % (tag, round_number, key, n, POLL_STATES)
                log("fleet, round %d/%d: N=%d over %s (%s), %d s"
                    % (round_number, rounds, n, label,
                       "+".join(str(c) for c in split(n)), duration))
                r = poll_run(bench, redis, groups[key], key, label, export_id, n, duration,
                             script, round_number)
                r["id"] = export_id
                polls[(n, key)].append(r)
                report.raw += r["raw"]
                log("  %d upstream calls (%s per %d s), %d requests, p50 %s p99 %s, errors %s%s"
                    % (r["calls"], fmt_slices(r), TTL_S, r["requests"], fmt_ms(r["p50"]),
                       fmt_ms(r["p99"]), fmt_errors(r["errors"]),
                       ", Redis: " + fmt_commands(r["commands"]) if r["commands"] is not None
                       else ""))
                time.sleep(2)  # let the closed connections go
        for key in ("fleet", "standalone"):
            t = warm_targets[key]
            ensure_hit(bench, t, WARM_ID)
            before = bench.upstream_calls(WARM_ID)
            commands0 = redis.commands()
            log("fleet, round %d/%d: warm, %s, wrk -t1 -c50 -d%ds"
                % (round_number, rounds, t.label, warm_s))
            res = bench.wrk("warm-cache throughput, %s, round %d" % (t.label, round_number),
                            t, WARM_ID, 1, 50, warm_s)
            res["commands"] = command_delta(commands0, redis.commands())
            time.sleep(0.3)
            res["calls"] = bench.upstream_calls(WARM_ID) - before
            report.raw.append(res["raw"])
            warm[key].append(res)
            log("  %.0f req/s, p99 %s, Redis: %s" % (res["rps"], fmt_ms(res["p99"]),
                                                    fmt_commands(res["commands"])))
            time.sleep(1)

    # --- coalescing table and goal
    rows, goal_lines, all_met = [], [], True
    for n in clients:
        for key, label in GROUPS:
            rs = polls[(n, key)]
            calls = [r["calls"] for r in rs]
            mc = median(calls)
            rows.append([
                n, label, "%g" % mc + (" (%s)" % " / ".join(map(str, calls)) if len(rs) > 1
                                       else ""),
                "%.1f" % (mc / windows), " / ".join(fmt_slices(r) for r in rs),
                "%.0f" % median([r["requests"] for r in rs]),
                fmt_ms(median([r["p50"] for r in rs])), fmt_ms(median([r["p99"] for r in rs])),
                "%.0f%%" % median([r["cpu_pct"] for r in rs]),
                fmt_commands(rs[len(rs) // 2]["commands"]) if key == "fleet" else "–",
                " / ".join(fmt_errors(r["errors"]) for r in rs),
                "%.0f%%" % max(r["other_pct"] for r in rs)])
            if key == "fleet":
                ok = all(lo <= c <= hi for c in calls)
                all_met &= ok
                goal_lines.append(
                    "  - N=%d: %s upstream calls in %d s (%s per %d s of the run), allowed "
                    "%d–%d — %s" % (n, " / ".join(map(str, calls)), duration, " / ".join(fmt_slices(r) for r in rs), TTL_S,
                                    lo, hi, "met" if ok else "NOT met"))
    others = ["N=%d: standalone %s, nginx %s" % (
        n, " / ".join(str(r["calls"]) for r in polls[(n, "standalone")]),
        " / ".join(str(r["calls"]) for r in polls[(n, "nginx")])) for n in clients]
    report.table(
        "Coalescing across three instances",
        ["N", "target", "upstream calls", "calls per %d s window" % TTL_S,
         "calls in each %d s of the run" % TTL_S, "client requests", "p50", "p99",
         "server CPU", "Redis commands", "wrk errors", "other CPU"], rows,
        "A cold export id per run (`fl-TIME-ROUND-TARGET-N;%s`: pending, so "
        "`cache_pending_ttl = %d s` / `proxy_cache_valid 200 %ds`; every upstream answer takes "
        "≥ 50 ms), polled by N connections spread evenly over the target's three instances: "
        "one `wrk -t1 -cN/3 -d%ds --latency --timeout 10s` per instance, started together. "
        "%d s / %d s TTL = %g windows: the ideal is one call per window for the whole fleet "
        "(%d–%d calls), three for three standalone gateways. Upstream calls: the fake's "
        "`/_stats` by_id count for the id (median over %d round%s, then each round); "
        "`calls in each %d s of the run`: when the fake's count (read every %.2f s) rose, "
        "per round. Client requests: all three wrk together (median). p50, p99: over every "
        "request of the three wrk (their latency quantiles merged), median over the rounds. "
        "Server CPU: the three instances' CPU time (fleet: plus redis-server) ÷ wall time, "
        "100%% = one core. Redis commands: what redis-server ran during the run (INFO "
        "commandstats, median round). Other CPU: the rest of the machine (busy time in "
        "/proc/stat minus servers, fake and wrk), the highest round."
        % (POLL_STATES, TTL_S, TTL_S, duration, duration, TTL_S, windows, lo, hi, rounds,
           "" if rounds == 1 else "s", TTL_S, SAMPLE_S))

    # --- warm table and goal
    base = median([r["rps"] for r in warm["standalone"]]) or float("nan")
    rows = []
    for key in ("fleet", "standalone"):
        rs = warm[key]
        rps = median([r["rps"] for r in rs])
        paired = median([f["rps"] / s["rps"] if f["rps"] and s["rps"] else None
                         for f, s in zip(warm[key], warm["standalone"])])
        rows.append([warm_targets[key].label + (" (Redis)" if key == "fleet" else " (no Redis)"),
                     "%.0f" % rps, " / ".join("%.0f" % r["rps"] for r in rs),
                     "%.3f" % (rps / base), "%.3f" % paired if paired is not None else "–",
                     fmt_ms(median([r["p50"] for r in rs])),
                     fmt_ms(median([r["p99"] for r in rs])),
                     sum(r["calls"] for r in rs),
                     " / ".join(fmt_commands(r["commands"]) for r in rs),
                     "%.0f%%" % median([r["cpu_pct"] for r in rs]),
                     " / ".join(fmt_errors(r) for r in rs)])
    report.table(
        "Warm-cache req/s per instance",
        ["target", "req/s (median)", "req/s by round", "vs standalone",
         "vs standalone, paired", "p50", "p99", "upstream calls", "Redis commands",
         "server CPU", "wrk errors"], rows,
        "`wrk -t1 -c50 -d%ds --latency` on `%s` (final: kept `cache_final_ttl`, 60 s), "
        "asked until it answered `X-Cache: HIT` first; one fleet gateway, then one "
        "standalone gateway, in each of %d round%s. `vs standalone`: the ratio of the "
        "medians; `paired`: the median of each round's ratio. Upstream calls: the fake's "
        "count for the id during the runs (sum). Redis commands: what redis-server ran "
        "during each run (INFO commandstats): a hit should cost none."
        % (warm_s, WARM_ID, rounds, "" if rounds == 1 else "s"))
    fleet_rps = median([r["rps"] for r in warm["fleet"]])
    ratio = fleet_rps / base
    warm_ok = ratio >= WARM_GOAL

    goals = ["- **Exactly one upstream call per window with Redis** (%d s / %d s TTL: %d–%d "
             "calls per run, every round) — **%s**" % (duration, TTL_S, lo, hi,
                                                      "met" if all_met else "NOT met")]
    goals += goal_lines
    goals.append("  - for comparison, upstream calls: " + "; ".join(others))
    goals.append("- **Warm req/s per instance within 5%% of a gateway without Redis**: "
                 "fleet gateway %.0f, standalone %.0f req/s (medians), %.3f× (goal ≥ %.2f×) "
                 "— **%s**" % (fleet_rps, base, ratio, WARM_GOAL, "met" if warm_ok else "NOT met"))
    troubles = []
    for t in groups["fleet"]:
        up, errors = redis_metrics(bench, t)
        if up != 1 or errors != errors0[t.label]:
            troubles.append("%s: redis_up %s, redis_errors_total +%d during the runs"
                            % (t.label, up, errors - errors0[t.label]))
    goals.append("- Redis during the runs: " + ("; ".join(troubles) if troubles else
                 "every fleet gateway `redis_up 1`, no `redis_errors_total` added"))
    report.text("Goals", "\n".join(goals))

    details = []
    for round_number in range(rounds):
        for n in clients:
            for key, label in GROUPS:
                r = polls[(n, key)][round_number]
                details.append(
                    "- round %d, N=%d, %s: `%s`, pollers %s, requests %s, p99 per instance %s, "
                    "%d upstream calls (%s per %d s), %.1f s%s"
                    % (round_number + 1, n, label, r["id"], "+".join(map(str, r["counts"])),
                       "+".join(map(str, r["per_instance"])),
                       " / ".join(fmt_ms(v) for v in r["inst_p99"]), r["calls"], fmt_slices(r),
                       TTL_S, r["wall"],
                       "; Redis: " + fmt_commands(r["commands"]) if r["commands"] is not None
                       else ""))
    report.text("Runs", "\n".join(details))

    worst = max(r["other_pct"] for rs in polls.values() for r in rs)
    if worst > OTHER_CPU_WARN:
        msg = ("other processes used up to %.0f%% CPU (one core = 100%%) during the polling "
               "runs: latencies and CPU are disturbed; rerun on a quiet machine" % worst)
        log("warning: " + msg)
        report.sections.insert(0, ("Warning", msg))
    return report
