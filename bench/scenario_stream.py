"""scenario_stream -- bench/run stream: download=true CSVs through the gateway
and through nginx (bench/nginx-stream.conf.in, proxy_buffering off) against
curl straight at the fake: one 1 GiB download (throughput, CPU per byte, the
same bytes), then 100 concurrent 100 MiB downloads with fast and with slow
clients while the servers' RSS is sampled."""

import hashlib
import os
import shlex
import subprocess
import time
import urllib.parse

from benchlib import (API_KEY, USER_ID, Report, RssSampler, children_cpu_seconds, cpu_seconds,
                      family, fmt_mib, log, machine_busy_seconds, median, memory_kib,
                      parse_curl, pct, quote, write_syscalls)

MB = 1000 * 1000  # throughput in MB/s, 1 MB = 10^6 bytes
MIB = 1024 * 1024
BIG_SIZE = 1 << 30        # csv=1g
BIG_RUNS = 5
CONC_N = 100
CONC_SIZE = 100 * MIB     # csv=100m
SLOW_RATE = "1M"          # curl --limit-rate: 1 MiB/s per slow client
SLOW_SECONDS = 5          # curl --max-time: the slow client goes away after this
RSS_GOAL_MIB = 64
OTHER_CPU_WARN = 20  # % of one core used by other processes: warn that numbers are disturbed


def verify_stream(bench, targets):
    """All three serve the same small CSV; both proxies send the upstream exactly
    user_id, data_export_id and download=true plus the credential headers."""
    export_id = "check;states=COMPLETED;csv=4k"
    bodies = {}
    for t in targets:
        r = subprocess.run(bench.curl_cmd(t, export_id, out="-", extra=["-D", "/dev/stdout"]),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        res = parse_curl(r.stderr.decode(errors="replace"))
        if r.returncode != 0 or res is None or res["code"] != 200:
            raise RuntimeError("%s: check download failed (exit %d): %s"
                               % (t.name, r.returncode, r.stderr.decode(errors="replace")))
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        if b"content-type: text/csv" not in head.lower() or len(body) != 4096:
            raise RuntimeError("%s: unexpected check answer %r" % (t.name, r.stdout[:300]))
        bodies[t.name] = body
    if len(set(bodies.values())) != 1:
        raise RuntimeError("the check CSV differs between %s" % ", ".join(bodies))
    lines = ["GET …export_status?data_export_id=%s&download=true → 200 text/csv, "
             "4096 identical bytes from %s." % (quote(export_id), ", ".join(bodies)), ""]
    for t in targets:
        if t.name == "direct":
            continue
        fid = "fwd-%s;states=COMPLETED;csv=4k" % t.name
        junk = "&extra=1" + ("&user_id=intruder" if t.name == "nginx" else "")
        url = t.url(fid) + junk + "&download=true"
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=30)
        last = bench.fake_stats()["last"]
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(last["uri"]).query,
                                       keep_blank_values=True)
        want = [("user_id", USER_ID), ("data_export_id", fid), ("download", "true")]
        hdrs = last["headers"]
        if (r.stdout.strip() != "200" or query != want
                or hdrs.get("authorization") != "Bearer " + API_KEY
                or hdrs.get("x-auth-key") != USER_ID):
            raise RuntimeError("%s forwarded %r (curl: %s)" % (t.name, last, r.stdout))
        lines.append("- %s, asked with `%s&download=true`, sent upstream `%s` (headers: %s)"
                     % (t.name, junk, last["uri"], ", ".join(sorted(hdrs))))
    return "\n".join(lines)


def checksum(bench, target, export_id, size):
    """sha256 of one whole download, hashed as it arrives."""
    cmd = bench.curl_cmd(target, export_id, out="-")
    h = hashlib.sha256()
    got = 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:
            block = proc.stdout.read(1 << 20)
            if not block:
                break
            h.update(block)
            got += len(block)
        err = proc.stderr.read().decode(errors="replace")
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    res = parse_curl(err)
    if rc != 0 or res is None or res["code"] != 200 or got != size:
        raise RuntimeError("%s: checksum download failed (exit %d, %d bytes): %s"
                           % (target.name, rc, got, err))
    return h.hexdigest(), cmd


def one_download(bench, target, export_id, size, servers):
    """One timed download to /dev/null: CPU of the servers, of curl and of the
    rest of the machine over it, and the average write() of the process that
    sends to curl."""
    cmd = bench.curl_cmd(target, export_id)
    sender = target.pid
    cpu0 = {name: cpu_seconds(pid) for name, pid in servers.items()}
    cc0, busy0, w0 = children_cpu_seconds(), machine_busy_seconds(), write_syscalls(sender)
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300)
    wall = time.monotonic() - t0
    res = parse_curl(r.stdout)
    if r.returncode != 0 or res is None or res["code"] != 200 or res["size"] != size:
        raise RuntimeError("%s: download of %s failed (exit %d): %s"
                           % (target.name, export_id, r.returncode, r.stdout))
    writes = write_syscalls(sender) - w0
    res["cpu"] = {name: cpu_seconds(pid) - cpu0[name] for name, pid in servers.items()}
    res["cpu"]["curl"] = children_cpu_seconds() - cc0
    res["cpu"]["other"] = max(0.0, machine_busy_seconds() - busy0 - sum(res["cpu"].values()))
    res["avg_write"] = size / writes if writes else None
    res["wall"] = wall
    res["mbps"] = res["speed"] / MB
    res["cmd"] = cmd
    return res


def metrics_patiently(bench, gateway, timeout=60):
    """The gateway's /metrics; a gateway too busy to answer within benchlib's 15 s is
    asked again (up to timeout), so that a slow answer is a figure, not an error."""
    t0 = time.monotonic()
    while True:
        try:
            return bench.gateway_metrics(gateway)
        except OSError as e:  # socket.timeout, a refused or reset connection
            if time.monotonic() - t0 >= timeout:
                raise RuntimeError("the gateway's /metrics did not answer within %d s (%s)"
                                   % (timeout, e))
            log("the gateway's /metrics did not answer (%s); asking again" % e)


def wait_downloads_idle(bench, gateway, timeout=15):
    """Seconds until the gateway's downloads_active is 0 again (None: not in time)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if metrics_patiently(bench, gateway).get("gumloop_gateway_downloads_active", 1) == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def concurrent(bench, target, fake, tag, slow):
    """CONC_N parallel curls of CONC_SIZE each (distinct export ids), sampling
    the server's RSS every 50 ms. slow: --limit-rate SLOW_RATE, --max-time
    SLOW_SECONDS (curl exits 28 and the connection goes away)."""
    kind = "slow" if slow else "fast"
    extra = ["--limit-rate", SLOW_RATE, "--max-time", str(SLOW_SECONDS)] if slow else []
    ids = ["s%d-%s-%s-%s;states=COMPLETED;csv=100m" % (i, tag, kind, target.name)
           for i in range(CONC_N)]
    cmds = [bench.curl_cmd(target, i, extra=extra) for i in ids]
    bench.record("%d concurrent %s downloads, %s (one of %d; ids s0…s%d)"
                 % (CONC_N, kind, target.label, CONC_N, CONC_N - 1), cmds[0])
    metrics0 = metrics_patiently(bench, target) if target.name == "gateway" else None
    cpu0 = (cpu_seconds(target.pid), cpu_seconds(fake.pid), children_cpu_seconds(),
            machine_busy_seconds())
    sampler = RssSampler(target.pid).start()
    procs = []
    t0 = time.monotonic()
    try:
        for cmd in cmds:
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT))
        deadline = t0 + (SLOW_SECONDS + 30 if slow else 180)
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=max(1, deadline - time.monotonic()))
            outs.append((p.returncode, out.decode(errors="replace")))
        wall = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        sampler.stop()
    cpu = [cpu_seconds(target.pid) - cpu0[0], cpu_seconds(fake.pid) - cpu0[1],
           children_cpu_seconds() - cpu0[2]]
    cpu.append(max(0.0, machine_busy_seconds() - cpu0[3] - sum(cpu)))
    results = [(rc, parse_curl(out), out) for rc, out in outs]
    res = {"kind": kind, "target": target, "wall": wall, "rss": sampler, "cpu": cpu,
           "sizes": [r["size"] if r else 0 for _, r, _ in results],
           "codes": [r["code"] if r else 0 for _, r, _ in results],
           "speeds": [r["speed"] if r else 0.0 for _, r, _ in results],
           "exits": [rc for rc, _, _ in results]}
    res["bytes"] = sum(res["sizes"])
    bad = [out.strip() for rc, r, out in results
           if r is None or r["code"] != 200 or (not slow and (rc != 0 or r["size"] != CONC_SIZE))
           or (slow and rc not in (0, 28))]
    res["bad"] = bad
    if slow:
        # the clients are gone; the upstream transfers must go too, and the memory
        idle = wait_downloads_idle(bench, target) if target.name == "gateway" else None
        time.sleep(0.5 if idle is not None or target.name != "gateway" else 0)
        res["idle_after"] = idle
        res["rss_after_close"] = memory_kib(family(target.pid))[0]
    if metrics0 is not None:
        if not slow:
            wait_downloads_idle(bench, target)
        m1 = metrics_patiently(bench, target)
        res["results"] = {r: int(m1.get('gumloop_gateway_downloads_total{result="%s"}' % r, 0)
                                 - metrics0.get('gumloop_gateway_downloads_total{result="%s"}'
                                                % r, 0))
                          for r in ("complete", "aborted", "failed")}
    return res


def cpu_ceiling(runs, med):
    """What the CPU the runs took allows on this machine. A proxied download runs
    three busy processes (fake, proxy, curl); with the CPU seconds per byte they
    took, all cores busy all the time could move at most cores ÷ (their sum).
    Direct runs two, and the fake alone is the limit: one core ÷ its CPU per byte."""
    cores = os.cpu_count() or 1
    direct = median([BIG_SIZE / r["cpu"]["fake"] for r in runs["direct"] if r["cpu"]["fake"] > 0])
    lines = ["CPU ceiling (%d cores; median over the runs): direct, one core for the fake, "
             "%.0f MB/s." % (cores, direct / MB)]
    for name in ("gateway", "nginx"):
        ceil, used, per_gib = [], [], []
        for r in runs[name]:
            busy = r["cpu"]["fake"] + r["cpu"][name] + r["cpu"]["curl"]
            if busy > 0:
                ceil.append(cores * BIG_SIZE / busy)
            used.append((busy + r["cpu"]["other"]) / (r["wall"] * cores))
            per_gib.append(r["cpu"][name] / (BIG_SIZE / float(1 << 30)))
        if not ceil:
            continue
        lines.append("%s: %.2f CPU s/GiB (mean of %d runs); fake + %s + curl allow at most "
                     "%.0f MB/s (%.2fx direct's median of %.0f); the runs kept %.0f%% of the "
                     "machine busy." % (name, sum(per_gib) / len(per_gib), len(per_gib), name,
                                        median(ceil) / MB,
                                        median(ceil) / MB / med["direct"]["mbps"],
                                        med["direct"]["mbps"], 100 * median(used)))
    return " ".join(lines)


def run(bench, args, nofile):
    report = Report("stream")
    report.raw_title = "Raw curl output (1 GiB downloads)"
    direct = bench.start_fake()
    extra = list(getattr(args, "gateway_conf", []))  # bench/run --gateway-conf KEY=VALUE
    gateway = bench.start_gateway([("client_timeout", "60s"), ("upstream_idle_timeout", "60s"),
                                   ("max_downloads", "256")] + extra)
    nginx = bench.start_nginx(nofile, "nginx-stream.conf.in")
    log("fake upstream :%d, gateway :%d, nginx :%d" % (direct.port, gateway.port, nginx.port))
    targets = (direct, gateway, nginx)
    report.text("Check", verify_stream(bench, targets) + (
        "\n\nGateway settings from `--gateway-conf`: %s."
        % ", ".join("`%s = %s`" % kv for kv in extra) if extra else ""))
    tag = time.strftime("%H%M%S")

    # a. one 1 GiB download, three ways, BIG_RUNS times, interleaved
    servers = {"fake": direct.pid, "gateway": gateway.pid, "nginx": nginx.pid}
    runs = {t.name: [] for t in targets}
    for n in range(1, BIG_RUNS + 1):
        for t in targets:
            bid = "big-%s-%d;states=COMPLETED;csv=1g" % (tag, n)
            log("1 GiB download, %s, run %d/%d" % (t.label, n, BIG_RUNS))
            res = one_download(bench, t, bid, BIG_SIZE, servers)
            runs[t.name].append(res)
            report.raw.append("$ %s\n%s (run %d: %.0f MB/s; CPU s: %s)" % (
                shlex.join(res["cmd"]), " ".join(str(res[k]) for k in
                                                ("code", "size", "speed", "total", "ttfb")),
                n, res["mbps"], ", ".join("%s %.2f" % kv for kv in res["cpu"].items())))
            time.sleep(0.5)
    for t in targets:
        bench.record("1 GiB download, %s (x%d, export id big-TAG-RUN;states=COMPLETED;csv=1g)"
                     % (t.label, BIG_RUNS), runs[t.name][0]["cmd"])
    med = {}
    for t in targets:
        rs = sorted(runs[t.name], key=lambda r: r["mbps"])
        med[t.name] = rs[len(rs) // 2]
    rows = []
    gib = BIG_SIZE / float(1 << 30)
    for t in targets:
        m = med[t.name]
        server = {"direct": None, "gateway": "gateway", "nginx": "nginx"}[t.name]
        rows.append([
            t.label, "**%.0f**" % m["mbps"],
            " / ".join("%.0f" % r["mbps"] for r in runs[t.name]),
            "%.2f" % (m["mbps"] / med["direct"]["mbps"]),
            "%.2f" % (m["mbps"] / med["nginx"]["mbps"]),
            "%.2f s" % m["total"], "%.1f ms" % (m["ttfb"] * 1000),
            "%s (%.2f s/GiB)" % (pct(m["cpu"][server], m["wall"]), m["cpu"][server] / gib)
            if server else "–",
            pct(m["cpu"]["fake"], m["wall"]), pct(m["cpu"]["curl"], m["wall"]),
            pct(m["cpu"]["other"], m["wall"]),
            "%.0f KiB" % (m["avg_write"] / 1024) if m["avg_write"] else "–"])
    g = med["gateway"]["mbps"]
    verdict = "gateway/direct = **%.2f** (goal ≥ 0.90: %s), gateway/nginx = **%.2f** (goal ≥ 1.00: %s)" % (
        g / med["direct"]["mbps"], "met" if g >= 0.9 * med["direct"]["mbps"] else "NOT met",
        g / med["nginx"]["mbps"], "met" if g >= med["nginx"]["mbps"] else "NOT met")
    report.table(
        "Single 1 GiB download",
        ["target", "MB/s (median)", "MB/s per run", "vs direct", "vs nginx", "time",
         "first byte", "server CPU", "fake CPU", "curl CPU", "other CPU",
         "avg write to curl"], rows,
        "`curl -o /dev/null` of `big-…;states=COMPLETED;csv=1g` (1 GiB = 1,073,741,824 "
        "bytes), %d runs per target, interleaved (direct, gateway, nginx, direct, …). "
        "MB/s = curl's speed_download / 10^6. `direct` is curl straight at the fake "
        "over HTTPS with the credential headers; gateway and nginx are plain HTTP on "
        "127.0.0.1 and HTTPS to the fake. Time, first byte and CPU are those of the "
        "median run; CPU = CPU time ÷ wall time, 100%% = one core (server: the gateway "
        "or nginx master+worker, also as CPU seconds per GiB relayed; fake: the fake "
        "upstream; curl: the client; other: everything else the machine ran meanwhile, "
        "from /proc/stat — anything well above 0 means the numbers are disturbed). "
        "Avg write to curl: bytes ÷ write syscalls (`syscw` of /proc/PID/io) of the "
        "process sending to curl (direct: the fake, TLS records included).\n\n%s\n\n%s"
        % (BIG_RUNS, verdict, cpu_ceiling(runs, med)))

    # b. the bytes are the same
    sums = {}
    for t in targets:
        log("sha256 of the 1 GiB download, %s" % t.label)
        sums[t.name], cmd = checksum(bench, t, "sha-%s;states=COMPLETED;csv=1g" % tag, BIG_SIZE)
        bench.record("sha256 check, %s (curl's output hashed by the script)" % t.label, cmd)
    same = len(set(sums.values())) == 1
    report.text("Same bytes", "\n".join(
        ["`sha-…;states=COMPLETED;csv=1g` downloaded once more from each, whole body "
         "hashed as it arrived (%d bytes each):" % BIG_SIZE, ""]
        + ["- %s: `%s`" % (t.label, sums[t.name]) for t in targets]
        + ["", "**identical**" if same else "**DIFFERENT**"]))

    # c. 100 concurrent downloads, fast and slow clients
    conc = []
    for slow in (False, True):
        for t in (gateway, nginx):
            log("%d concurrent %s downloads, %s" % (CONC_N, "slow" if slow else "fast", t.label))
            conc.append(concurrent(bench, t, direct, tag, slow))
            time.sleep(1)
    rows = []
    for r in conc:
        t, rss = r["target"], r["rss"]
        ok = sum(1 for s, c, e in zip(r["sizes"], r["codes"], r["exits"])
                 if c == 200 and e == 0 and s == CONC_SIZE)
        if r["kind"] == "fast":
            got = "%d/%d × 100 MiB" % (ok, CONC_N)
        else:
            sz = sorted(r["sizes"])
            got = "%d/%d got 200; %.1f–%.1f MiB each (median %.1f, %.2f MiB/s)" % (
                sum(1 for c in r["codes"] if c == 200), CONC_N, sz[0] / MIB, sz[-1] / MIB,
                median(sz) / MIB, median(r["speeds"]) / MIB)
        if r["bad"]:
            got += "; %d bad: `%s`" % (len(r["bad"]), r["bad"][0][:80])
        gw = ""
        if "results" in r:
            gw = ", ".join("%s %d" % kv for kv in r["results"].items())
            if r["kind"] == "slow":
                gw += "; idle again %s" % ("after %.2f s" % r["idle_after"]
                                           if r["idle_after"] is not None else "NOT within 15 s")
        peak_ok = rss.peak < RSS_GOAL_MIB * 1024
        rows.append([
            r["kind"], t.label, "%.2f s" % r["wall"], "%.0f" % (r["bytes"] / r["wall"] / MB),
            got, fmt_mib(rss.before), "**%s**%s" % (fmt_mib(rss.peak),
                                                    "" if peak_ok or t.name != "gateway"
                                                    else " (over %d MiB)" % RSS_GOAL_MIB),
            fmt_mib(rss.hwm) if rss.hwm_reset else "–",
            fmt_mib(r["rss_after_close"]) if "rss_after_close" in r else fmt_mib(rss.after),
            pct(r["cpu"][0], r["wall"]), pct(r["cpu"][1], r["wall"]), pct(r["cpu"][2], r["wall"]),
            pct(r["cpu"][3], r["wall"]), gw or "–"])
    report.table(
        "%d concurrent 100 MiB downloads" % CONC_N,
        ["clients", "target", "total time", "aggregate MB/s", "downloads", "RSS before",
         "peak RSS (50 ms samples)", "VmHWM", "RSS after", "server CPU", "fake CPU",
         "curl CPU (all)", "other CPU", "gateway downloads_total"], rows,
        "%d curls started at once, each on its own export id "
        "(`sN-…;states=COMPLETED;csv=100m`, %d bytes). *fast*: `curl -o /dev/null`, "
        "as fast as they can. *slow*: `--limit-rate %s --max-time %d` (about 1 MiB/s "
        "each; curl 7.88's limit overshoots, the table shows the median rate reached), "
        "then curl gives up with exit 28 and closes the connection, as a killed client "
        "would. Total time: from "
        "starting the first curl to the last one exiting; aggregate MB/s = bytes all "
        "clients received ÷ total time. RSS: VmRSS of the server (nginx: master + worker), "
        "sampled every 50 ms from before the first curl starts to after the last one "
        "exits; VmHWM is the kernel's peak, reset before each run (`echo 5 > "
        "/proc/PID/clear_refs`). RSS after: at the end (slow: once the gateway has "
        "dropped the aborted transfers). Goal: the gateway's peak RSS < %d MiB, fast "
        "and slow alike. CPU as above; curl CPU is all %d clients together."
        % (CONC_N, CONC_SIZE, SLOW_RATE, SLOW_SECONDS, RSS_GOAL_MIB, CONC_N))
    lines = []
    for r in conc:
        lines.append("- %s, %s: %s" % (r["kind"], r["target"].label,
                                       " ".join(r["rss"].timeline(0.5))))
    report.text("RSS over time", "Max VmRSS (MiB) per 0.5 s, from the first curl's start:\n\n"
                + "\n".join(lines))
    others = [100.0 * r["cpu"]["other"] / r["wall"] for rs in runs.values() for r in rs]
    others += [100.0 * r["cpu"][3] / r["wall"] for r in conc]
    if max(others) > OTHER_CPU_WARN:
        msg = ("other processes used up to %.0f%% CPU (one core = 100%%) during the "
               "measurements (see the \"other CPU\" columns): the numbers are disturbed; "
               "rerun on a quiet machine" % max(others))
        log("warning: " + msg)
        report.sections.insert(0, ("Warning", msg))
    if not same:
        report.failures.append("the 1 GiB downloads differ between targets")
    for r in conc:
        if r["bad"]:
            report.failures.append("%d %s downloads from %s failed"
                                   % (len(r["bad"]), r["kind"], r["target"].label))
    return report

