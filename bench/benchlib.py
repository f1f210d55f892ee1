"""benchlib -- what bench/run's scenarios share: the tools, the machine's
description, CPU and memory of processes from /proc, the Bench (temp dir, the
fake, the gateway and nginx started and stopped, wrk and curl run and recorded)
and the Report. Not a scenario; and not a harness of its own: the CA, the fake,
the gateway, free ports and config text are tests/gwtest.py's, shared with the
integration tests. Python standard library only."""

import datetime
import hashlib
import http.client
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(REPO, "tests"))
import gwtest  # noqa: E402
from gwtest import free_port, ini, wait_for  # noqa: E402

BUILD = os.environ.get("BUILD_DIR", os.path.join(REPO, "build"))
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", os.path.join(BUILD, "gumloop-gateway"))
FAKE_BIN = os.environ.get("FAKE_UPSTREAM_BIN", os.path.join(BUILD, "tests", "fake-upstream"))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

HOST = "127.0.0.1"  # the only address anything here talks to
USER_ID = "bench-user"
API_KEY = "bench-key-0123456789"
TTL_S = 2  # gateway cache_pending_ttl == nginx proxy_cache_valid 200
WANT_NOFILE = 65536
MAX_WRK_SECONDS = 10


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so every finally block runs."""


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# --- tools and environment ----------------------------------------------

def ensure_tools():
    """wrk, nginx and curl from Debian's packages (Debian 12: `nginx`; `nginx-light`
    there is only a metapackage that adds the echo module)."""
    missing = [p for p, exe in (("wrk", "wrk"), ("nginx", "nginx"), ("curl", "curl"))
               if shutil.which(exe) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit("bench: %s missing; run as root or: apt-get install %s"
                 % (", ".join(missing), " ".join(missing)))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends"] + missing
    log("installing " + " ".join(missing))
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)


def ensure_binaries():
    if os.access(GATEWAY_BIN, os.X_OK) and os.access(FAKE_BIN, os.X_OK):
        return
    if not os.path.exists(os.path.join(BUILD, "Makefile")):
        sys.exit("bench: %s or %s missing and %s is not configured; build first "
                 "(scripts/test or ./autogen.sh && ../configure && make)"
                 % (GATEWAY_BIN, FAKE_BIN, BUILD))
    log("building the gateway and the fake upstream in " + BUILD)
    subprocess.run(["make", "-j%d" % (os.cpu_count() or 2), "all"],
                   cwd=BUILD, check=True)


def raise_nofile():
    """Raises RLIMIT_NOFILE for this process; every child inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in ((WANT_NOFILE, max(hard, WANT_NOFILE)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def output_of(cmd):
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=10)
        return r.stdout.strip()
    except OSError as e:
        return "(%s)" % e


def machine_info(nofile):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    wrk_v = output_of(["wrk", "-v"]).splitlines()
    git_env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=git_env).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env=git_env).stdout.strip()
        git = (rev or "?") + ("+dirty" if dirty else "")
    except OSError:
        git = "?"
    return [
        ("nproc", str(os.cpu_count())),
        ("CPU", cpu),
        ("kernel", platform.release()),
        ("RLIMIT_NOFILE (all children)", str(nofile)),
        ("somaxconn", read_text("/proc/sys/net/core/somaxconn")),
        ("nginx", output_of(["nginx", "-v"])),
        ("wrk", wrk_v[0] if wrk_v else "?"),
        ("curl", (output_of(["curl", "--version"]).splitlines() or ["?"])[0]),
        ("gateway", output_of([GATEWAY_BIN, "-V"]) + " (git " + git + ")"),
        ("gateway binary", binary_identity(GATEWAY_BIN)),
    ]


def binary_identity(path):
    """sha256 prefix and mtime of a binary: the tree may be rebuilt between runs,
    and "git HEAD+dirty" does not tell such builds apart."""
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        mtime = datetime.datetime.fromtimestamp(os.stat(path).st_mtime)
        return "%s, sha256 %s…, built %s" % (path, h.hexdigest()[:12],
                                             mtime.strftime("%Y-%m-%d %H:%M:%S"))
    except OSError as e:
        return "%s (%s)" % (path, e)


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


# --- processes seen through /proc ----------------------------------------

def _stats_of_family(pid):
    """[(pid, fields after the command name)] of pid and its direct children."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15
        if int(entry) == pid or int(fields[1]) == pid:
            out.append((int(entry), fields))
    return out


def family(pid):
    """pid and its direct children (nginx: master + workers)."""
    return [p for p, _ in _stats_of_family(pid)]


def cpu_seconds(pid):
    """utime+stime of pid and its direct children (nginx: master + workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum(int(f[11]) + int(f[12]) for _, f in _stats_of_family(pid)) / tick


def children_cpu_seconds():
    """utime+stime of every child this process has reaped so far (curl clients:
    the servers keep running, so the delta around a run is the clients' CPU)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def machine_busy_seconds():
    """CPU time the whole machine spent busy (all cores, /proc/stat): with the
    processes we measure subtracted, what else ran on the box meanwhile."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields))
    return busy / os.sysconf("SC_CLK_TCK")


def write_syscalls(pid):
    """write-type syscalls (syscw of /proc/PID/io) of pid and its direct children."""
    total = 0
    for p in family(pid):
        try:
            with open("/proc/%d/io" % p) as f:
                for line in f:
                    if line.startswith("syscw:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def memory_kib(pids):
    """Sum of VmRSS and of VmHWM (kB) over pids; processes gone count 0."""
    rss = hwm = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            pass
    return rss, hwm


def reset_hwm(pids):
    """Resets VmHWM to the current RSS (echo 5 > /proc/PID/clear_refs, Linux >= 4.0,
    needs the right to ptrace PID). False if that is not possible here."""
    ok = True
    for pid in pids:
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


class RssSampler:
    """Samples VmRSS (and reads VmHWM) of a server every `interval` seconds in a
    thread, from start() to stop(). For nginx, master + workers are summed."""

    def __init__(self, pid, interval=0.05):
        self.pids = family(pid)
        self.interval = interval
        self.samples = []  # (seconds since start, VmRSS kB)
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.hwm_reset = reset_hwm(self.pids)
        self.before = memory_kib(self.pids)[0]
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self.t0, memory_kib(self.pids)[0]))
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.after, self.hwm = memory_kib(self.pids)
        self.peak = max([kb for _, kb in self.samples] + [self.before, self.after])
        return self

    def timeline(self, step=1.0):
        """max VmRSS per `step` seconds, as 'MiB' strings."""
        buckets = {}
        for t, kb in self.samples:
            k = int(t / step)
            buckets[k] = max(buckets.get(k, 0), kb)
        return ["%.0f" % (buckets[k] / 1024) for k in sorted(buckets)]


# --- processes started and stopped -----------------------------------------

class Procs:
    """Everything long-running the bench started, stopped in reverse order: its
    own children (nginx, the floor), each in its own session and process group,
    and gwtest's Fake and Gateway, which stop themselves."""

    def __init__(self):
        self.stops = []  # (name, function)

    def start(self, name, cmd, log_path, stop_signal=signal.SIGTERM):
        logf = open(log_path, "ab")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            logf.close()
        self.stops.append((name, lambda: _stop_group(name, proc, stop_signal)))
        return proc

    def adopt(self, name, stop):
        """stop() is called at the end, in turn with the others."""
        self.stops.append((name, stop))

    def stop_all(self):
        for name, stop in reversed(self.stops):
            try:
                stop()
            except (OSError, subprocess.SubprocessError) as e:
                log("stopping %s: %s" % (name, e))
        self.stops = []


def _stop_group(name, proc, sig):
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            log("%s (pid %d) did not stop, killing its process group" % (name, proc.pid))
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
    # nginx workers and helpers share the master's process group
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


class Target:
    """A server under test: name, port, the URL prefix wrk gets, its pid."""

    def __init__(self, name, port, pid, scheme="http", path="/export_status", headers=(),
                 label=None):
        self.name = name
        self.label = label or name
        self.port = port
        self.pid = pid
        self.scheme = scheme
        self.path = path
        self.headers = list(headers)

    def url(self, export_id):
        q = "data_export_id=" + quote(export_id)
        if self.name == "direct":
            q = "user_id=" + quote(USER_ID) + "&" + q
        return "%s://%s:%d%s?%s" % (self.scheme, HOST, self.port, self.path, q)


def quote(text):
    # ';' -> %3B and '=' -> %3D: both servers decode; nginx passes it on as is
    return urllib.parse.quote(text, safe="")


def fill_template(path, values):
    """The text of a .conf.in file with every @NAME@ replaced by values[NAME];
    a placeholder without a value is an error, not left in."""
    with open(path) as f:
        text = f.read()

    def value(m):
        if m.group(1) not in values:
            raise RuntimeError("%s: no value for @%s@" % (path, m.group(1)))
        return str(values[m.group(1)])
    return re.sub(r"@([A-Z_]+)@", value, text)


class Bench:
    """Shared state and helpers for scenarios: temp dir, certs, the fake, the
    gateway, nginx, wrk. Scenarios start what they need."""

    def __init__(self, keep=False):
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix="gumloop-bench-")
        self.procs = Procs()
        self.commands = []   # (what, command line) for the report
        self.configs = []    # (title, text, language) for the report
        self.logs = []       # (name, path)
        self.ca = gwtest.TestCA(self.dir, "certs", top_srcdir=REPO)
        self.fake = None

    def close(self):
        try:
            self.procs.stop_all()
        finally:
            if self.keep:
                log("kept " + self.dir)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def record(self, what, cmd):
        self.commands.append((what, shlex.join(cmd)))

    # --- the fake upstream ---

    def start_fake(self):
        self.logs.append(("fake-upstream", self.path("fake.log")))
        self.fake = gwtest.Fake(self.ca, self.dir, [("personal", API_KEY, USER_ID)],
                                binary=FAKE_BIN)
        self.procs.adopt("fake-upstream", self.fake.stop)
        self.record("fake upstream", self.fake.proc.args)
        return Target("direct", self.fake.port, self.fake.proc.pid, scheme="https",
                      path="/api/v1/export_status",
                      headers=["Authorization: Bearer " + API_KEY, "x-auth-key: " + USER_ID])

    def fake_stats(self):
        return self.fake.stats()

    def upstream_calls(self, export_id):
        return self.fake_stats()["by_id"].get(export_id, 0)

    # --- the gateway ---

    def start_gateway(self, extra=(), name="gateway", label=None):
        """extra: more (key, value) settings for the config. name: its config file
        (TMP/NAME.conf), log and record; give each gateway of a scenario its own."""
        port = free_port(HOST)
        settings = dict([("listen", "%s:%d" % (HOST, port)),
                         ("upstream", self.fake.url),
                         ("upstream_ca", self.ca.ca_cert),
                         ("cache_pending_ttl", "%ds" % TTL_S),
                         ("access_log", "off")])
        settings.update(extra)  # a key of extra replaces the default
        conf = ini(list(settings.items()),
                   [("credential default", [("user_id", USER_ID), ("api_key", API_KEY),
                                            ("kind", "personal")])])
        self.configs.append((name + ".conf", conf, "ini"))
        self.logs.append((name, self.path(name + ".log")))
        gateway = gwtest.Gateway(self.dir, conf, name=name, host=HOST, port=port, wait=False,
                                 binary=GATEWAY_BIN)
        self.procs.adopt(name, gateway.stop)
        self.record(name, gateway.proc.args)
        wait_for(gateway.ready, 10, "the gateway")
        return Target("gateway", port, gateway.proc.pid, label=label or name)

    # --- nginx ---

    def start_nginx(self, nofile, template, values=None, label="nginx", name="nginx"):
        """nginx on bench/TEMPLATE (a .conf.in) with its placeholders filled in:
        the paths in the temp dir, the ports, the credential, the CA and the TTL,
        and the scenario's own values. name: its prefix (TMP/NAME: pid, logs, cache)
        and record; give each nginx of a scenario its own."""
        port = free_port(HOST)
        prefix = self.path(name)
        for sub in ("cache", "tmp", "logs"):
            os.makedirs(os.path.join(prefix, sub), exist_ok=True)
        p = lambda *parts: os.path.join(prefix, *parts)  # noqa: E731
        conf = fill_template(os.path.join(BENCH_DIR, template), dict(
            PREFIX=prefix, NOFILE=nofile, WORKER_CONNECTIONS=max(1024, nofile - 64),
            HOST=HOST, PORT=port, FAKE_PORT=self.fake.port, USER_ID=USER_ID,
            API_KEY=API_KEY, CA=self.ca.ca_cert, TTL=TTL_S, **(values or {})))
        conf_path = p("nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        self.configs.append(("%s.conf (from bench/%s)" % (name, template), conf, "nginx"))
        base = ["nginx", "-p", prefix + "/", "-e", p("logs", "error.log"), "-c", conf_path]
        check = subprocess.run(base + ["-t", "-q"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        if check.returncode != 0:
            raise RuntimeError("nginx -t failed:\n" + check.stdout
                               + read_text(p("logs", "error.log")))
        cmd = base + ["-g", "daemon off;"]
        self.record(name, cmd)
        self.logs.append((name, p("logs", "error.log")))
        proc = self.procs.start(name, cmd, p("logs", "stderr.log"))

        def ready():
            if proc.poll() is not None:
                raise RuntimeError("nginx exited with %s:\n%s"
                                   % (proc.returncode, read_text(p("logs", "error.log"))))
            return port_open(port)
        wait_for(ready, 10, "nginx")
        return Target("nginx", port, proc.pid, label=label)

    # --- requests and load ---

    def get(self, target, export_id, extra_query=""):
        """One request as a client would send it; (status, content-type, body)."""
        if target.name == "direct":
            query = "user_id=%s&data_export_id=%s%s" % (quote(USER_ID), quote(export_id),
                                                       extra_query)
            return self.fake.get_direct(query, dict(h.split(": ", 1) for h in target.headers))
        status, headers, body = http_get(
            target.port, "/export_status?data_export_id=%s%s" % (quote(export_id), extra_query))
        return status, headers.get("content-type"), body

    def wrk(self, what, target, export_id, threads, conns, duration, timeout=None,
            script=None):
        """script: a Lua file for wrk's -s (its output lands in res["raw"])."""
        duration = min(duration, MAX_WRK_SECONDS)
        cmd = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency"]
        if timeout:
            cmd += ["--timeout", "%ds" % timeout]
        if script:
            cmd += ["-s", script]
        for h in target.headers:
            cmd += ["-H", h]
        cmd.append(target.url(export_id))
        self.record(what, cmd)
        cpu0 = cpu_seconds(target.pid)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=duration + 60)
        cpu = cpu_seconds(target.pid) - cpu0
        if r.returncode != 0:
            raise RuntimeError("wrk failed (%d):\n%s" % (r.returncode, r.stdout))
        res = parse_wrk(r.stdout)
        res["cpu_pct"] = 100.0 * cpu / res["seconds"] if res["seconds"] else 0.0
        res["raw"] = "$ " + shlex.join(cmd) + "\n" + r.stdout
        return res

    def curl_cmd(self, target, export_id, out="/dev/null", extra=()):
        """curl downloading export_id from target (download=true); curl prints
        CURL_WRITE_OUT (to stderr with out="-")."""
        w = ("%{stderr}" if out == "-" else "") + CURL_WRITE_OUT
        cmd = ["curl", "-sS", "-o", out, "-w", w]
        if target.scheme == "https":
            cmd += ["--cacert", self.ca.ca_cert]
        for h in target.headers:
            cmd += ["-H", h]
        return cmd + list(extra) + [target.url(export_id) + "&download=true"]

    def gateway_metrics(self, gateway):
        """{"name{labels}": value} from the gateway's /metrics."""
        status, _, body = http_get(gateway.port, "/metrics")
        if status != 200:
            raise RuntimeError("gateway /metrics answered %d" % status)
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


def port_open(port):
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def http_get(port, path, timeout=15):
    """(status, {lower-case name: value}, body) of one GET on a new connection."""
    status, headers, body = http_get_ordered(port, path, timeout)
    return status, {k.lower(): v for k, v in headers}, body


def http_get_ordered(port, path, timeout=15):
    """(status, [(name, value)] as sent, body) of one GET on a new connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


# --- curl and wrk output -----------------------------------------------------

# http_code size_download speed_download time_total time_starttransfer
CURL_WRITE_OUT = "%{http_code} %{size_download} %{speed_download} %{time_total} %{time_starttransfer}\n"


def parse_curl(text):
    """CURL_WRITE_OUT -> dict, or None when curl printed nothing usable."""
    parts = text.strip().splitlines()[-1].split() if text.strip() else []
    if len(parts) != 5:
        return None
    return {"code": int(parts[0]), "size": int(float(parts[1])), "speed": float(parts[2]),
            "total": float(parts[3]), "ttfb": float(parts[4])}


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError("cannot parse wrk time %r" % text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out):
    res = {"p50": None, "p75": None, "p90": None, "p99": None, "errors": {}, "non2xx": 0}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out)
    res["requests"] = int(m.group(1)) if m else 0
    res["seconds"] = _ms(m.group(2) + m.group(3)) / 1000.0 if m else 0.0
    for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M):
        res["p" + pct] = _ms(val)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"),
                                                     m.groups()) if int(v)}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    return res


# --- numbers as the tables show them ---------------------------------------

def fmt_ms(v):
    if v is None:
        return "–"
    return "%.2f ms" % v if v < 1000 else "%.2f s" % (v / 1000)


def fmt_errors(res):
    parts = ["%s %d" % kv for kv in res["errors"].items()]
    if res["non2xx"]:
        parts.append("non-2xx %d" % res["non2xx"])
    return ", ".join(parts) or "0"


def fmt_mib(kib):
    return "%.1f MiB" % (kib / 1024.0)


def pct(cpu, seconds):
    return "%.0f%%" % (100.0 * cpu / seconds) if seconds else "–"


def median(values):
    """The median, leaving out runs without a figure (None); None when none has one."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


# --- the report ------------------------------------------------------------

class Report:
    def __init__(self, scenario):
        self.scenario = scenario
        self.started = datetime.datetime.now()
        self.sections = []  # (title, markdown)
        self.raw = []
        self.raw_title = "Raw wrk output"
        self.failures = []  # checks that failed; the report is still written

    def table(self, title, header, rows, note=""):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        self.sections.append((title, (note + "\n\n" if note else "") + "\n".join(lines)))

    def text(self, title, body):
        self.sections.append((title, body))

    def render(self, bench, info):
        out = ["# gumloop-gateway bench: %s — %s" % (
            self.scenario, self.started.strftime("%Y-%m-%d %H:%M:%S"))]
        out.append("")
        out.append("## Machine")
        out.append("")
        out += ["- %s: %s" % kv for kv in info]
        for title, body in self.sections:
            out += ["", "## " + title, "", body]
        out += ["", "## Commands", "", "```sh"]
        out += ["# %s\n%s" % c for c in bench.commands]
        out += ["```"]
        for title, text, lang in bench.configs:
            out += ["", "## " + title, "", "```" + lang, text.rstrip(), "```"]
        if self.raw:
            out += ["", "## " + self.raw_title, "", "```"]
            out += [r.rstrip() + "\n" for r in self.raw]
            out += ["```"]
        logs = []
        for name, path in bench.logs:
            lines = read_text(path).splitlines()
            if lines:
                logs.append("### %s (%d lines, last 15)\n\n```\n%s\n```"
                            % (name, len(lines), "\n".join(lines[-15:])))
        if logs:
            out += ["", "## Logs"]
            for entry in logs:
                out += ["", entry]
        return "\n".join(out) + "\n"
