"""Relay benchmark: the product as shipped beside `ssh -R` and a yardstick, interleaved, on loopback.

Four paths to one nginx, each entered over plain HTTP on loopback so the load client costs the same:

- direct:    wrk -> nginx
- ours:      wrk -> the real plane app (mgmtplane.app.create_app on its public listener,
             mgmtplane.front) -> mTLS WebSocket -> `gateway run` -> nginx. The gateway is enrolled
             with the project's own CLIs and filters with a real policy: the 1 KiB JSON field by
             field, the 64 MiB body an explicit passthrough (the policy of issue 14's harness).
- yardstick: bench/plain_relay.py, a plain multiplexed aiohttp WebSocket relay (per-stream credit,
             no filter, no auth, no batching): what a small Python relay of our shape does here.
- ssh -R:    wrk -> sshd's forwarded port -> SSH -> `ssh` -> nginx

It prints req/s at c=1/16/64 with p50/p99, MB/s for the 64 MiB body, the CPU per request of each
relay's processes (ours: plane and gateway apart), the machine's busy share, peak RSS, then one
line per figure with its target, e.g. `c=64 req/s: 2.05x ssh -R`. The machine is shared: read the
ratios from one run, and the CPU per request (less sensitive to other load) for decisions.
Bounded: fixed rounds, durations and counts (about 3 minutes with the defaults).

The load is wrk with one thread, as in shared/bench (the harness whose table defines issue 14's
targets): one thread drives 48-66k req/s straight at nginx here, five times what any relay
reaches, so it is never the bottleneck. A second thread takes CPU from the relays that need it on
a two-core machine and gives `ssh -R`, which mostly waits, a fifth to a third more
(docs/relay-performance.md). `--wrk-threads 2` shows that run.

    .venv/bin/python bench/relay.py [--rounds 3] [--seconds 5] [--big-reps 3]

Everything runs on 127.0.0.1; every process is started and stopped by this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import shipped

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NGINX = "/usr/sbin/nginx"
SSHD = "/usr/sbin/sshd"
# The issue's harness body: a status and 17 items of four fields, padded to 1 KiB with spaces.
SMALL = json.dumps(
    {
        "status": "ok",
        "items": [{"id": i, "name": f"item-{i:03d}", "ok": i % 2 == 0, "score": i * 1.5} for i in range(17)],
    },
    separators=(",", ":"),
).encode()
# What the gateway applies (the harness's policy): the small body parsed and filtered field by field.
POLICY = """\
kind: http
rules:
  - name: bench-small
    path: /small.json
    json:
      - status
      - items[].id
      - items[].name
      - items[].ok
      - items[].score
  - name: bench-big
    path: /big.bin
    passthrough: true
"""
BIG_SIZE = 64 * 1024 * 1024
CONCURRENCY = (1, 16, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_name(proc: subprocess.Popen[bytes]) -> str:
    """The program a process runs, for error messages (the script, for a Python child)."""
    args = [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)]
    return args[1] if len(args) > 1 and args[0] == sys.executable else args[0]


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc_name(proc)} exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of `pids` and all their descendants, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total / ticks


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Procs:
    items: list[subprocess.Popen[bytes]] = field(default_factory=list)

    log: Path | None = None  # children's stderr goes here, not over the figures

    def start(self, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        if self.log is not None and "stderr" not in kw:
            kw["stderr"] = self.log.open("ab")
        proc: subprocess.Popen[bytes] = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
        self.items.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.items):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.items):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the three paths -----------------------------------------------------------------------------


def start_nginx(work: Path, procs: Procs) -> int:
    root = work / "www"
    root.mkdir()
    (root / "small.json").write_bytes(SMALL + b" " * (1024 - len(SMALL)))
    with (root / "big.bin").open("wb") as f:  # random, as the harness's: no stage can take a short cut
        for _ in range(BIG_SIZE // (1 << 20)):
            f.write(os.urandom(1 << 20))
    for path in (work, root, root / "small.json", root / "big.bin"):
        path.chmod(0o755)
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    types {{ application/json json; application/octet-stream bin; }}
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""
    )
    proc = procs.start([NGINX, "-c", str(conf), "-p", str(work)])
    wait_port(port, proc)
    return port


def start_ssh_tunnel(work: Path, procs: Procs, nginx_port: int) -> tuple[int, list[int]]:
    """The forwarded port, and the PIDs whose CPU is `ssh -R`'s (sshd's children count too)."""
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)], check=True)
    shutil.copy(work / "user_key.pub", work / "authorized_keys")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    sshd_port, fwd_port = free_port(), free_port()
    conf = work / "sshd_config"
    conf.write_text(
        f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {work}/host_key\nPidFile {work}/sshd.pid\n"
        f"AuthorizedKeysFile {work}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n"
        "AllowTcpForwarding yes\nGatewayPorts no\n"
    )
    sshd = procs.start([SSHD, "-D", "-e", "-f", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(sshd_port, sshd)
    user = os.environ.get("USER") or "root"
    ssh = procs.start(
        [
            "ssh", "-N", "-T", "-p", str(sshd_port), "-i", str(work / "user_key"),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
            "-R", f"127.0.0.1:{fwd_port}:127.0.0.1:{nginx_port}", f"{user}@127.0.0.1",
        ]
    )  # fmt: skip
    wait_port(fwd_port, ssh)
    return fwd_port, [sshd.pid, ssh.pid]


def start_plain_relay(work: Path, procs: Procs, nginx_port: int) -> tuple[int, list[int]]:
    """bench/plain_relay.py's plane and gateway: the HTTP port, and the two PIDs."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(work / "plain-cert.pem"))
    cert.private_key_pem.write_to_path(str(work / "plain-key.pem"))
    ca.cert_pem.write_to_path(str(work / "plain-ca.pem"))
    script = str(Path(__file__).resolve().parent / "plain_relay.py")
    tls_port, http_port = free_port(), free_port()
    plane = procs.start(
        [
            sys.executable, script, "plane", "--tls-port", str(tls_port), "--http-port", str(http_port),
            "--cert", str(work / "plain-cert.pem"), "--key", str(work / "plain-key.pem"),
        ]
    )  # fmt: skip
    wait_port(tls_port, plane)
    gateway = procs.start(
        [
            sys.executable, script, "gateway", "--tls-port", str(tls_port),
            "--target", f"http://127.0.0.1:{nginx_port}", "--ca", str(work / "plain-ca.pem"),
        ]
    )  # fmt: skip
    wait_relay("/r/small.json", http_port, gateway)
    return http_port, [plane.pid, gateway.pid]


def wait_relay(path: str, port: int, proc: subprocess.Popen[bytes], header: str = "") -> None:
    """Wait until a relay answers GET `path` with 200: relays answer 503 until their tunnel is up."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\n{header}\r\n".encode())
            if s.recv(12).endswith(b"200"):
                return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc_name(proc)} exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"the relay on port {port} did not come up")


@dataclass
class Ours:
    http_port: int
    prefix: str  # /v1/gateways/{id}/targets/nginx
    header: str  # Authorization: Bearer <admin token>
    plane: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]


def _cli(module: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"{module} {args[0]}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def enrol(work: Path, procs: Procs) -> tuple[Path, Path, str]:
    """A plane state dir and a gateway identity, made by the project's own CLIs as an operator
    would: `mgmtplane serve`, `mgmtplane token create`, `firstboot register`. Returns both dirs and
    the gateway id."""
    plane_dir, gw_dir = work / "plane", work / "gw"
    port = free_port()
    serve = procs.start(
        [
            sys.executable,
            "-m",
            "mgmtplane",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(plane_dir),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert serve.stdout is not None
    if b"listening on" not in serve.stdout.readline():
        raise RuntimeError("mgmtplane serve did not start")
    token = _cli("mgmtplane", "token", "create", "--state-dir", str(plane_dir), "--ttl", "10m")
    _cli("firstboot", "register", "--token", token, "--state-dir", str(gw_dir), "--hostname", "bench")
    serve.send_signal(signal.SIGTERM)
    serve.wait(timeout=15)
    gateway_id = json.loads((gw_dir / "identity.json").read_text())["gateway_id"]
    return plane_dir, gw_dir, str(gateway_id)


def start_ours(work: Path, procs: Procs, nginx_port: int, gateway_kind: str = "auto") -> Ours:
    plane_dir, gw_dir, gateway_id = enrol(work, procs)
    tls_port, http_port = free_port(), free_port()
    plane = procs.start(
        [
            sys.executable, str(REPO / "bench" / "plane_http.py"), str(plane_dir), str(tls_port),
            str(http_port),
        ],
        cwd=REPO,
    )  # fmt: skip
    wait_port(http_port, plane)
    targets = work / "targets.yaml"
    targets.write_text(
        f"targets:\n  - name: nginx\n    url: http://127.0.0.1:{nginx_port}\n    kind: http\n"
        "    allow_private: [127.0.0.1]\n"
    )
    policies = work / "policies"
    policies.mkdir()
    (policies / "bench.yaml").write_text(POLICY)
    config = work / "gateway.yaml"
    config.write_text(
        f"plane_url: https://127.0.0.1:{tls_port}\nstate_dir: {gw_dir}\ntargets: {targets}\n"
        f"policy_dirs: [{policies}]\naudit_log: {work / 'audit.log'}\n"  # as shipped: the file, not logging
    )
    which = shipped.choose(gateway_kind, work)
    print(f"ours' gateway: {which.label}", flush=True)
    gateway = procs.start(which.argv("run", "--config", str(config)), cwd=REPO)
    token = (plane_dir / "admin-token").read_text().strip()
    prefix = f"/v1/gateways/{gateway_id}/targets/nginx"
    header = f"Authorization: Bearer {token}"
    wait_relay(f"{prefix}/small.json", http_port, gateway, header + "\r\n")
    return Ours(http_port, prefix, header, plane, gateway)


# --- load clients (C tools, so the client is never the bottleneck) ------------------------------

_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(text: str) -> float:
    """wrk's latency text (`512.00us`, `1.25ms`, `2.00s`) in seconds."""
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * _UNIT[unit]
    raise ValueError(f"unknown latency unit in {text!r}")


def run_small(
    url: str, concurrency: int, seconds: int, header: str = "", threads: int = 1
) -> tuple[float, dict[int, float], int]:
    """Requests/s, wrk's latency percentiles {50: s, 99: s} and the number of requests, for GETs
    of `url` at `concurrency`, from `threads` wrk threads."""
    threads = max(1, min(concurrency, threads))
    extra = ["-H", header] if header else []
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency", *extra, url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    rate, lat, count = 0.0, {}, 0
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            rate = float(words[1])
        elif len(words) > 2 and words[1:3] == ["requests", "in"]:
            count = int(words[0])
        elif len(words) == 2 and words[0] in ("50%", "99%"):
            lat[int(words[0][:-1])] = _seconds(words[1])
        elif "Non-2xx" in line or line.startswith("  Socket errors"):
            raise RuntimeError(f"{url}: {line.strip()}")
    if not rate or not count or len(lat) != 2:
        raise RuntimeError(f"cannot read wrk's output for {url}:\n{out}")
    return rate, lat, count


def run_big(url: str, header: str = "") -> float:
    """MB/s for one download of the 64 MiB file (curl, written to /dev/null)."""
    extra = ["-H", header] if header else []
    form = "%{http_code} %{size_download} %{speed_download}"
    out = subprocess.run(
        ["curl", "-sS", *extra, "-o", "/dev/null", "-w", form, url],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    if out[0] != "200" or int(out[1]) != BIG_SIZE:
        raise RuntimeError(f"{url}: HTTP {out[0]}, {out[1]} bytes")
    return float(out[2]) / 1e6


def calibrate(runs: int = 5) -> str:
    """The fastest and slowest of `runs` timings of a fixed pure-Python loop: how steady this
    machine's CPU is (a shared host's neighbours show as a spread), to read the figures by."""
    times = []
    for _ in range(runs):
        start, x = time.process_time(), 0
        for i in range(2_000_000):
            x += i
        times.append((time.process_time() - start) * 1000)
    return f"{min(times):.0f}-{max(times):.0f} ms"


def machine_ticks() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


MODES = ("direct", "ours", "yardstick", "ssh -R")


@dataclass
class Figures:
    rps: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    lat: dict[tuple[str, int, int], list[float]] = field(default_factory=dict)  # (mode, c, q) -> s
    busy: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    cpu: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)  # (mode, part, c) -> [s, n]
    mbs: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)


def bench(rounds: int, seconds: int, big_reps: int, wrk_threads: int, gateway: str = "auto") -> Figures:
    figures = Figures()
    with workdir() as work:
        procs = Procs(log=work / "relays.log")
        try:
            nginx = start_nginx(work, procs)
            ssh_port, ssh_pids = start_ssh_tunnel(work, procs, nginx)
            ours = start_ours(work, procs, nginx, gateway)
            plain_port, plain_pids = start_plain_relay(work, procs, nginx)
            base = {
                "direct": f"http://127.0.0.1:{nginx}",
                "ours": f"http://127.0.0.1:{ours.http_port}{ours.prefix}",
                "yardstick": f"http://127.0.0.1:{plain_port}/r",
                "ssh -R": f"http://127.0.0.1:{ssh_port}",
            }
            headers = {"ours": ours.header}
            # The processes whose CPU each relay costs, by part.
            parts = {
                "ours": {"plane": [ours.plane.pid], "gateway": [ours.gateway.pid]},
                "yardstick": {"plane": plain_pids[:1], "gateway": plain_pids[1:]},
                "ssh -R": {"sshd": ssh_pids[:1], "ssh": ssh_pids[1:]},
            }
            t_start = time.monotonic()
            for rnd in range(rounds):
                for c in CONCURRENCY:
                    for mode, url in base.items():  # interleaved: drift hits every path alike
                        before = {part: cpu_seconds(pids) for part, pids in parts.get(mode, {}).items()}
                        ticks = machine_ticks()
                        rate, percentiles, count = run_small(
                            f"{url}/small.json", c, seconds, headers.get(mode, ""), wrk_threads
                        )
                        total, idle = (a - b for a, b in zip(machine_ticks(), ticks, strict=True))
                        for part, pids in parts.get(mode, {}).items():
                            acc = figures.cpu.setdefault((mode, part, c), [0.0, 0])
                            acc[0] += cpu_seconds(pids) - before[part]
                            acc[1] += count
                        figures.rps.setdefault((mode, c), []).append(rate)
                        figures.busy.setdefault((mode, c), []).append(
                            100 * (1 - idle / total) if total else 0.0
                        )
                        for q, v in percentiles.items():
                            figures.lat.setdefault((mode, c, q), []).append(v)
                print(f"round {rnd + 1}/{rounds} done ({time.monotonic() - t_start:.0f}s)", flush=True)
            for _ in range(big_reps):
                for mode, url in base.items():
                    figures.mbs.setdefault(mode, []).append(run_big(f"{url}/big.bin", headers.get(mode, "")))
            figures.rss = {
                "ours": peak_rss_mib(ours.gateway.pid) + peak_rss_mib(ours.plane.pid),
                "ours plane": peak_rss_mib(ours.plane.pid),
                "yardstick": sum(peak_rss_mib(pid) for pid in plain_pids),
            }
        except Exception:
            log = (work / "relays.log").read_text(errors="replace").splitlines()
            print("\n".join(["the relays' last log lines:", *log[-20:]]), file=sys.stderr)
            raise
        finally:
            procs.stop_all()
    return figures


def report(f: Figures) -> None:
    """Medians over the rounds: a table, then one line per figure with its target."""
    med = statistics.median
    rps = {k: med(v) for k, v in f.rps.items()}
    ms = {k: med(v) * 1000 for k, v in f.lat.items()}
    busy = {k: med(v) for k, v in f.busy.items()}
    big = {k: med(v) for k, v in f.mbs.items()}
    cpu = {k: v[0] / v[1] * 1e6 for k, v in f.cpu.items() if v[1]}

    def cpu_sum(mode: str, c: int) -> float:
        return sum(v for (m, _p, cc), v in cpu.items() if m == mode and cc == c)

    def row(name: str, values: dict[str, float | None], fmt: str) -> None:
        cells = "".join(f"{'' if values.get(m) is None else format(values[m], fmt):>13}" for m in MODES)
        print(f"{name:<26}{cells}")

    print()
    print(f"{'figure':<26}" + "".join(f"{m:>13}" for m in MODES))
    for c in CONCURRENCY:
        row(f"c={c} req/s", {m: rps[(m, c)] for m in MODES}, ".0f")
    for c in CONCURRENCY:
        cells = "".join(f"{f'{ms[(m, c, 50)]:.2f}/{ms[(m, c, 99)]:.1f}':>13}" for m in MODES)
        print(f"{f'c={c} p50/p99 ms':<26}{cells}")
    row("64 MiB MB/s", dict(big), ".0f")
    for c in CONCURRENCY:
        row(f"c={c} CPU us/req", {m: cpu_sum(m, c) if m != "direct" else None for m in MODES}, ".0f")
        for part in ("plane", "gateway"):
            row(f"  {part}", {m: cpu.get((m, part, c)) for m in MODES}, ".0f")
    for c in CONCURRENCY:
        row(f"c={c} machine busy %", {m: busy[(m, c)] for m in MODES}, ".0f")
    row("peak RSS MiB", {m: f.rss.get(m) for m in MODES}, ".1f")
    print()
    ssh, yard = "ssh -R", "yardstick"
    for c in CONCURRENCY:
        goal = " (targets: >= 2.0x ssh -R, >= 1.0x yardstick)" if c == 64 else ""
        vs_ssh, vs_yard = rps[("ours", c)] / rps[(ssh, c)], rps[("ours", c)] / rps[(yard, c)]
        print(f"c={c} req/s: {vs_ssh:.2f}x ssh -R, {vs_yard:.2f}x yardstick{goal}")
    plane, gateway = cpu.get(("ours", "plane", 64), 0.0), cpu.get(("ours", "gateway", 64), 0.0)
    print(f"c=64 CPU us/request: {plane + gateway:.0f} (plane {plane:.0f}, gateway {gateway:.0f};", end="")
    print(" target <= 150)")
    print(f"c=1 p99: {ms[('ours', 1, 99)]:.2f} ms (target <= 2 ms; ssh -R {ms[(ssh, 1, 99)]:.2f} ms)")
    print(f"large MB/s: {big['ours'] / big[ssh]:.2f}x ssh -R (target >= 1.5x)")
    rss, plane_rss = f.rss["ours"], f.rss["ours plane"]
    print(f"peak RSS gateway+plane: {rss:.1f} MiB (plane {plane_rss:.1f}; target <= 100 MiB)")
    shares = ", ".join(f"{m} {busy[(m, 64)]:.0f}%" for m in ("ours", yard, ssh))
    print(f"c=64 machine busy: {shares}")
    yard_cpu = cpu_sum(yard, 64)
    print(
        f"yardstick: c=64 req/s {rps[(yard, 64)] / rps[(ssh, 64)]:.2f}x ssh -R, CPU us/request {yard_cpu:.0f}"
    )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--big-reps", type=int, default=3)
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads (1: as shared/bench)")
    parser.add_argument(
        "--gateway",
        choices=("auto", "image", "venv"),
        default="auto",
        help="ours' gateway: the built image's, as shipped (auto: when it can run), or the venv's",
    )
    args = parser.parse_args()
    for tool in (NGINX, SSHD, "ssh", "ssh-keygen", "wrk", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found (needed for the relay benchmark)")
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    before = calibrate()
    print(f"wrk threads: {args.wrk_threads}; CPU calibration loop: {before}", flush=True)
    report(bench(args.rounds, args.seconds, args.big_reps, args.wrk_threads, args.gateway))
    print(f"CPU calibration loop at the end: {calibrate()}")


if __name__ == "__main__":
    main()
