"""gwtest -- harness for the integration tests: a test CA made with the openssl
CLI, the fake upstream and the built gateway on free loopback ports, and plain
HTTP helpers over real sockets. TAP output so automake counts every case."""

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

GATEWAY_BIN = os.environ.get("GATEWAY_BIN", "./gumloop-gateway")
FAKE_BIN = os.environ.get("FAKE_UPSTREAM_BIN", "./tests/fake-upstream")
OPENSSL = os.environ.get("OPENSSL_CLI", "openssl")
# Set by .ci/run for the valgrind pass: a command line prefix for the gateway.
GATEWAY_WRAPPER = os.environ.get("GATEWAY_WRAPPER", "").split()
START_TIMEOUT = 30.0 if GATEWAY_WRAPPER else 10.0
# Extra seconds a timing bound allows for scheduling; valgrind runs ~30x slower.
SLACK = 3.0 if GATEWAY_WRAPPER else 1.0
REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")


def sanitized():
    """Whether the gateway binary was built with AddressSanitizer (slower: timing
    bounds that are tight in a plain build allow more there)."""
    try:
        with open(GATEWAY_BIN, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def free_port(host="127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=START_TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, **kwargs)


class TestCA:
    """A CA and a server certificate for 127.0.0.1/::1/localhost, made now by
    certs/make-dev-certs.sh (the one recipe) in directory/name. The script is
    looked up in top_srcdir, by default $TOP_SRCDIR or the current directory."""

    def __init__(self, directory, name="ca", top_srcdir=None):
        self.dir = os.path.join(directory, name)
        top = top_srcdir or os.environ.get("TOP_SRCDIR", ".")
        script = os.path.join(top, "certs", "make-dev-certs.sh")
        run(["sh", script, self.dir], env=dict(os.environ, OPENSSL=OPENSSL))
        self.ca_key = os.path.join(self.dir, "ca.key")
        self.ca_cert = os.path.join(self.dir, "ca.crt")
        self.key = os.path.join(self.dir, "server.key")
        self.cert = os.path.join(self.dir, "server.crt")

    def context(self):
        return ssl.create_default_context(cafile=self.ca_cert)


class Fake:
    """The fake Gumloop upstream (tests/fake/server.c), a real HTTPS server.
    binary: the program to run (default: $FAKE_UPSTREAM_BIN)."""

    def __init__(self, ca, directory, credentials, name="fake", binary=None):
        self.ca = ca
        port_file = os.path.join(directory, name + ".port")
        cmd = [binary or FAKE_BIN, "--listen", "127.0.0.1:0", "--cert", ca.cert, "--key", ca.key,
               "--port-file", port_file]
        for kind, key, user_id in credentials:
            cmd += ["--credential", "%s:%s:%s" % (kind, key, user_id)]
        self.log = open(os.path.join(directory, name + ".log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        wait_for(lambda: os.path.exists(port_file) or self.proc.poll() is not None,
                 what="the fake upstream")
        if self.proc.poll() is not None:
            raise AssertionError("fake upstream exited with %s" % self.proc.returncode)
        with open(port_file) as f:
            self.port = int(f.read())
        self.url = "https://127.0.0.1:%d/api/v1" % self.port

    def _call(self, method, path):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port,
                                           context=self.ca.context(), timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return json.loads(resp.read())
        finally:
            conn.close()

    def stats(self):
        return self._call("GET", "/_stats")

    def raw(self, name, data, trickle=None, every=None, after=None):
        """Stores bytes the fake sends as they are for an id scripted raw=NAME."""
        params = {"name": name}
        for key, value in (("trickle", trickle), ("every", every), ("after", after)):
            if value is not None:
                params[key] = value
        conn = http.client.HTTPSConnection("127.0.0.1", self.port,
                                           context=self.ca.context(), timeout=10)
        try:
            conn.request("POST", "/_raw?" + urllib.parse.urlencode(params), body=data)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise AssertionError("POST /_raw: %d %r" % (resp.status, body))
        finally:
            conn.close()

    def reset(self):
        self._call("POST", "/_reset")

    def get_direct(self, query, headers):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port,
                                           context=self.ca.context(), timeout=10)
        try:
            conn.request("GET", "/api/v1/export_status?" + query, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type"), resp.read()
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def ini(settings, sections=()):
    """Config text: settings is a list of (key, value); sections of (header, pairs)."""
    lines = ["%s = %s" % kv for kv in settings]
    for header, pairs in sections:
        lines.append("")
        lines.append("[%s]" % header)
        lines += ["%s = %s" % kv for kv in pairs]
    return "\n".join(lines) + "\n"


class Gateway:
    """The built daemon, started on a config file; stderr captured to a file.
    binary: the program to run (default: $GATEWAY_BIN)."""

    def __init__(self, directory, config_text, name="gateway", env=None, wait=True,
                 host="127.0.0.1", port=None, preexec_fn=None, binary=None):
        self.dir = directory
        self.conf = os.path.join(directory, name + ".conf")
        self.log_path = os.path.join(directory, name + ".log")
        self.host = host
        self.port = port
        self.write_config(config_text)
        self.log = open(self.log_path, "a")
        environment = dict(os.environ)
        environment.update(env or {})
        self.proc = subprocess.Popen(GATEWAY_WRAPPER + [binary or GATEWAY_BIN, "-c", self.conf],
                                     stdout=self.log, stderr=self.log, env=environment,
                                     preexec_fn=preexec_fn)
        if wait:
            wait_for(self.ready, what="the gateway to answer /healthz")

    def write_config(self, text):
        with open(self.conf, "w") as f:
            f.write(text)

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("gateway exited with %s:\n%s" %
                                 (self.proc.returncode, self.logs()))
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def logs(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def connection(self, timeout=15, host=None, port=None):
        return http.client.HTTPConnection(host or self.host, port or self.port,
                                          timeout=timeout)

    def request(self, method, path, headers=None, host=None, port=None, timeout=15, body=None):
        conn = self.connection(timeout, host, port)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), resp.read()
        finally:
            conn.close()

    def get_json(self, path, headers=None):
        status, headers_out, body = self.request("GET", path, headers)
        return status, headers_out, json.loads(body)

    def signal(self, number):
        self.proc.send_signal(number)

    def reload(self, config_text=None, expect="reload: "):
        """SIGHUP and wait for the log line that says how it went."""
        if config_text is not None:
            self.write_config(config_text)
        before = self.logs().count(expect)
        self.signal(signal.SIGHUP)
        wait_for(lambda: self.logs().count(expect) > before, what="the reload log line")

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def raw_exchange(host, port, data, timeout=5):
    """Sends bytes as they are and returns everything read until close or timeout."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
        return b"".join(chunks)


def csv_bytes(start, end):
    """Bytes [start, end) of the fake's CSV: 32-byte lines "%010d,abcdefghijklmnopqrst\\n"."""
    first, last = start // 32, (end + 31) // 32
    text = b"".join(b"%010d,abcdefghijklmnopqrst\n" % n for n in range(first, last))
    return text[start - first * 32:end - first * 32]


class RawResponse:
    """An HTTP/1.1 response read off a socket by hand, so truncation shows."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise AssertionError("connection closed before the headers: %r" % self.buffer)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            self.headers[name.strip().lower()] = value.strip()

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        self.buffer += chunk
        return bool(chunk)

    def read_all(self):
        """(body bytes, complete?): complete means the framing said the end came."""
        if "content-length" in self.headers:
            length = int(self.headers["content-length"])
            while len(self.buffer) < length and self._fill():
                pass
            return self.buffer[:length], len(self.buffer) >= length
        if self.headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    if not self._fill():
                        return body, False
                size_line, rest = self.buffer.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(rest) < size + 2:
                    if not self._fill():
                        return body + rest[:size], False
                    size_line, rest = self.buffer.split(b"\r\n", 1)
                if size == 0:
                    return body, True
                body += rest[:size]
                self.buffer = rest[size + 2:]
        while self._fill():
            pass
        return self.buffer, None


def raw_get(port, path, headers=None, timeout=30, method="GET", version="1.1"):
    """Sends one request on a new socket; returns the socket and its response head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    lines = ["%s %s HTTP/%s" % (method, path, version), "Host: gateway"]
    lines += ["%s: %s" % kv for kv in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock, RawResponse(sock)


class RedisError(Exception):
    """An error reply from Redis (ERR, NOPERM, WRONGPASS, ...)."""


class Resp:
    """A tiny blocking RESP2 client over one socket: enough for assertions.
    address: "HOST:PORT" or a unix socket path."""

    def __init__(self, address, password=None, user=None, timeout=5.0):
        if address.startswith("/"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            host, port = address.rsplit(":", 1)
            self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.file = self.sock.makefile("rb")
        try:
            if password is not None:
                self.call("AUTH", *([user] if user else []), password)
        except BaseException:
            self.close()
            raise

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            arg = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        self.sock.sendall(b"".join(out))

    def read(self):
        """One reply: str (status), int, bytes or None (bulk), list, RedisError."""
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            if int(rest) < 0:
                return None
            data = self.file.read(int(rest) + 2)
            if len(data) != int(rest) + 2:
                raise ConnectionError("redis closed the connection")
            return data[:-2]
        if kind == b"*":
            return None if int(rest) < 0 else [self.read() for _ in range(int(rest))]
        raise AssertionError("not RESP: %r" % line)

    def call(self, *args):
        self.send(*args)
        reply = self.read()
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def close(self):
        self.file.close()
        self.sock.close()


class Redis:
    """A redis-server of its own in directory/name, on a free loopback port and a
    unix socket: nothing saved, the default user behind `password`, and an ACL user
    `user` (password `user_password`) whose keys and channels are prefix* only.
    stop, kill (SIGKILL), pause/resume (SIGSTOP/SIGCONT), restart (same port, empty)."""

    def __init__(self, directory, name="redis", prefix="gumloop-gateway:", user="gw"):
        self.dir = os.path.join(directory, name)
        os.makedirs(self.dir, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.address = "%s:%d" % (self.host, self.port)
        self.unix_path = os.path.join(self.dir, "redis.sock")
        self.prefix = prefix
        self.password = "redis-default-" + secrets.token_hex(8)
        self.user = user
        self.user_password = "redis-gw-" + secrets.token_hex(8)
        self.log_path = os.path.join(self.dir, "redis.log")
        self.conf = os.path.join(self.dir, "redis.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join([
                "bind 127.0.0.1", "port %d" % self.port, "unixsocket " + self.unix_path,
                "unixsocketperm 700", "dir " + self.dir, "logfile " + self.log_path,
                "daemonize no", "databases 16", "requirepass " + self.password,
                "user %s on >%s resetkeys ~%s* resetchannels &%s* +@all"
                % (user, self.user_password, prefix, prefix),
            ]) + "\n")
        self.proc = None
        self.start()

    def start(self, extra=(), wait=True):
        """Starts redis-server (extra: more of its options, as arguments); with wait,
        returns once it answers PING (not while it is loading a dump)."""
        self.proc = subprocess.Popen([REDIS_SERVER, self.conf, "--save", "",
                                      "--appendonly", "no"] + list(extra),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            wait_for(self._answers, what="redis-server on port %d" % self.port)

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError("redis-server exited with %s:\n%s"
                                 % (self.proc.returncode, self.logs()))
        try:
            return self.command("PING") == "PONG"
        except (OSError, RedisError):
            return False

    def logs(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def connect(self, timeout=5.0, db=None):
        """A Resp connection authenticated as the default user."""
        conn = Resp(self.address, self.password, timeout=timeout)
        if db:
            conn.call("SELECT", db)
        return conn

    def command(self, *args, db=None, timeout=5.0):
        conn = self.connect(timeout, db)
        try:
            return conn.call(*args)
        finally:
            conn.close()

    def scan(self, match="*", db=None):
        """Every key (bytes) matching match in db."""
        conn = self.connect(db=db)
        try:
            keys, cursor = [], b"0"
            while True:
                cursor, batch = conn.call("SCAN", cursor, "MATCH", match, "COUNT", 1000)
                keys += batch
                if cursor == b"0":
                    return keys
        finally:
            conn.close()

    def value(self, key, db=None):
        """Everything stored under key, as a list of bytes, whatever its type."""
        kind = self.command("TYPE", key, db=db)
        read = {"string": ("GET",), "hash": ("HGETALL",), "list": ("LRANGE", 0, -1),
                "set": ("SMEMBERS",), "zset": ("ZRANGE", 0, -1, "WITHSCORES"),
                "stream": ("XRANGE", "-", "+")}.get(kind)
        if read is None:
            return []
        reply = self.command(read[0], key, *read[1:], db=db)
        out, stack = [], [reply]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack += item
            elif item is not None:
                out.append(item if isinstance(item, bytes) else str(item).encode())
        return out

    def client_pause(self, ms, mode="ALL"):
        """CLIENT PAUSE: Redis holds every client's commands for ms (with ALL, CLIENT
        UNPAUSE too, so the pause is waited out)."""
        return self.command("CLIENT", "PAUSE", ms, mode)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self):
        """Stopped (if running) and started again on the same port, empty."""
        self.stop()
        self.start()

    def restart_loading(self, keys, per_key_us):
        """Fills the server with keys throwaway keys (outside any prefix), saves them
        and restarts it loading that dump slowly (per_key_us per key, answering
        clients meanwhile): until it is loaded, Redis answers most commands -LOADING.
        Returns once a command has been answered -LOADING. The dump is removed, so
        the next restart is empty again."""
        script = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'fill:' .. i, i) end"
        self.command("EVAL", script, 0, keys, timeout=60)
        self.command("SAVE", timeout=60)
        self.stop()
        self.start(["--key-load-delay", str(per_key_us),
                    "--loading-process-events-interval-bytes", "1024"], wait=False)

        def loading():
            try:
                self.command("PING", timeout=1)
            except RedisError as e:
                return str(e).startswith("LOADING")
            except OSError:
                return False
            raise AssertionError("redis-server loaded its dump before a client saw it loading")
        wait_for(loading, what="redis-server answering -LOADING")
        os.unlink(os.path.join(self.dir, "dump.rdb"))  # read from the open file

    def loaded(self):
        """True once the server answers PING (no longer -LOADING)."""
        return self._answers()


class TapResult(unittest.TextTestResult):
    """unittest results as TAP lines, numbered as they finish."""

    def __init__(self, stream, descriptions, verbosity):
        super().__init__(stream, descriptions, verbosity)
        self.number = 0

    def _line(self, ok, test, note=""):
        self.number += 1
        print("%s %d - %s%s" % ("ok" if ok else "not ok", self.number, test.id(), note),
              flush=True)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._line(True, test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._line(False, test)
        self._diagnose(test, err)

    def addError(self, test, err):
        super().addError(test, err)
        self._line(False, test)
        self._diagnose(test, err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._line(True, test, " # SKIP " + reason)

    def _diagnose(self, test, err):
        for line in self._exc_info_to_string(err, test).splitlines():
            print("# " + line, flush=True)


def main():
    """Runs the calling module's tests as TAP; exit status 1 on any failure."""
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromModule(sys.modules["__main__"])
    if len(sys.argv) > 1:
        suite = unittest.TestSuite(t for t in _flatten(suite)
                                   if any(a in t.id() for a in sys.argv[1:]))
    runner = unittest.TextTestRunner(stream=open(os.devnull, "w"), resultclass=TapResult,
                                     verbosity=0)
    result = runner.run(suite)
    print("1..%d" % result.testsRun, flush=True)
    sys.exit(0 if result.wasSuccessful() else 1)


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


class TempDir:
    def __init__(self, prefix):
        self.path = tempfile.mkdtemp(prefix=prefix)

    def cleanup(self):
        if os.environ.get("GWTEST_KEEP"):  # logs and configs kept for a post-mortem
            print("# kept " + self.path, flush=True)
            return
        shutil.rmtree(self.path, ignore_errors=True)
