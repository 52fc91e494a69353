"""Relay benchmark: direct vs our tunnel vs `ssh -R`, interleaved, against nginx on loopback.

Prints req/s for a 1 KiB JSON at c=1/16/64, p50/p99 at c=1, MB/s for a 64 MiB body, peak RSS of
gateway + plane, and ratios against `ssh -R`. Bounded: fixed rounds and durations (< 5 minutes).
The load comes from wrk (requests) and curl (the large body), so the client is never the bottleneck.

A fourth path, "plain", is the yardstick the issue names: the plainest aiohttp WebSocket relay
(bench/plain_relay.py), so the figures also show what a minimal Python relay does on the same machine.

    .venv/bin/python bench/relay.py [--rounds 3] [--seconds 2]

Everything runs on 127.0.0.1; every process is started and stopped by this script. The plane
runs in its own process (`bench/relay.py --role plane`), with the hub's relay route also on a
plain-HTTP loopback port so the load client pays the same per-request cost on every path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NGINX = "/usr/sbin/nginx"
SSHD = "/usr/sbin/sshd"
SMALL = b'{"items": [' + b",".join(b'{"id": %d, "name": "vm-%04d"}' % (i, i) for i in range(34)) + b"]}"
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

    def start(self, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
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
    with (root / "big.bin").open("wb") as f:
        f.truncate(BIG_SIZE)
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


def wait_relay(path: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until a relay answers GET `path` with 200: relays answer 503 until their tunnel is up."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            if s.recv(12).endswith(b"200"):
                return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc_name(proc)} exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"the relay on port {port} did not come up")


@dataclass
class Tunnel:
    http_port: int
    gateway_id: str
    plane: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]


def start_our_tunnel(work: Path, procs: Procs, nginx_port: int) -> Tunnel:
    from tests.integration.tunnel_support import make_pki, write_policies

    pki = make_pki(work / "pki")
    tls_port, http_port = free_port(), free_port()
    plane = procs.start(
        [
            sys.executable, str(Path(__file__).resolve()), "--role", "plane", "--dir", str(pki.plane_dir),
            "--tls-port", str(tls_port), "--http-port", str(http_port),
        ],
        cwd=REPO,
    )  # fmt: skip
    wait_port(http_port, plane)
    targets = work / "targets.yaml"
    targets.write_text(
        f"targets:\n  - name: nginx\n    url: http://127.0.0.1:{nginx_port}\n    kind: http\n"
        "    allow_private: [127.0.0.1]\n"
    )
    config = work / "gateway.yaml"
    config.write_text(
        f"plane_url: https://127.0.0.1:{tls_port}\nstate_dir: {pki.state_dir}\ntargets: {targets}\n"
        f"policy_dirs: [{write_policies(work)}]\n"
    )
    gateway = procs.start([sys.executable, "-m", "gateway", "run", "--config", str(config)], cwd=REPO)
    wait_relay(f"/v1/gateways/{pki.gateway_id}/targets/nginx/small.json", http_port, gateway)
    return Tunnel(http_port, pki.gateway_id, plane, gateway)


def run_plane(plane_dir: Path, tls_port: int, http_port: int) -> None:
    """--role plane: the hub on TLS (for the gateway) and plain HTTP on loopback (for the load client)."""
    from aiohttp import web

    from tests.integration.tunnel_support import plane_app, plane_ssl_context

    async def main() -> None:
        app, _hub = plane_app()
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", tls_port, ssl_context=plane_ssl_context(plane_dir)).start()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


# --- load clients (C tools, so the client is never the bottleneck) ------------------------------

_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(text: str) -> float:
    """wrk's latency text (`512.00us`, `1.25ms`, `2.00s`) in seconds."""
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * _UNIT[unit]
    raise ValueError(f"unknown latency unit in {text!r}")


def run_small(url: str, concurrency: int, seconds: int) -> tuple[float, dict[int, float], int]:
    """Requests/s, wrk's latency percentiles {50: s, 99: s} and the number of requests, for GETs
    of `url` at `concurrency`.

    wrk (C, epoll, keep-alive) drives the load: the Python client this bench used first spent
    more CPU per request than nginx and `ssh -R` together, so every path measured the client.
    """
    threads = min(concurrency, os.cpu_count() or 1, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency", url],
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


def run_big(url: str) -> float:
    """MB/s for one download of the 64 MiB file (curl, written to /dev/null)."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}", url],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    if out[0] != "200" or int(out[1]) != BIG_SIZE:
        raise RuntimeError(f"{url}: HTTP {out[0]}, {out[1]} bytes")
    return float(out[2]) / 1e6


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bench(rounds: int, seconds: int, big_reps: int) -> None:
    with workdir() as work:
        procs = Procs()
        try:
            nginx = start_nginx(work, procs)
            ssh_port, ssh_pids = start_ssh_tunnel(work, procs, nginx)
            tunnel = start_our_tunnel(work, procs, nginx)
            plain_port, plain_pids = start_plain_relay(work, procs, nginx)
            base = {
                "direct": f"http://127.0.0.1:{nginx}",
                "tunnel": f"http://127.0.0.1:{tunnel.http_port}/v1/gateways/{tunnel.gateway_id}/targets/nginx",
                "plain": f"http://127.0.0.1:{plain_port}/r",
                "ssh -R": f"http://127.0.0.1:{ssh_port}",
            }
            relay_pids = {
                "tunnel": [tunnel.gateway.pid, tunnel.plane.pid],
                "plain": plain_pids,
                "ssh -R": ssh_pids,
            }
            cpu: dict[tuple[str, int], list[float]] = {}  # CPU seconds and requests, summed
            rps: dict[tuple[str, int], list[float]] = {}
            lat: dict[tuple[str, int], list[float]] = {}
            mbs: dict[str, list[float]] = {m: [] for m in base}
            t_start = time.monotonic()
            for rnd in range(rounds):
                for c in CONCURRENCY:
                    for mode, url in base.items():  # interleaved: drift hits every path alike
                        before = cpu_seconds(relay_pids.get(mode, []))
                        value, percentiles, count = run_small(f"{url}/small.json", c, seconds)
                        used = cpu_seconds(relay_pids.get(mode, [])) - before
                        acc = cpu.setdefault((mode, c), [0.0, 0])
                        acc[0], acc[1] = acc[0] + used, acc[1] + count
                        rps.setdefault((mode, c), []).append(value)
                        if c == 1:
                            for q, v in percentiles.items():
                                lat.setdefault((mode, q), []).append(v)
                print(f"round {rnd + 1}/{rounds} done ({time.monotonic() - t_start:.0f}s)", flush=True)
            for _ in range(big_reps):
                for mode, url in base.items():
                    mbs[mode].append(run_big(f"{url}/big.bin"))
            rss = peak_rss_mib(tunnel.gateway.pid) + peak_rss_mib(tunnel.plane.pid)
        finally:
            procs.stop_all()
    report(rps, lat, mbs, rss, {k: v[0] / v[1] * 1e6 for k, v in cpu.items() if v[1]})


MODES = ("direct", "tunnel", "plain", "ssh -R")


def report(
    rps: dict[tuple[str, int], list[float]],
    lat: dict[tuple[str, int], list[float]],
    mbs: dict[str, list[float]],
    rss: float,
    cpu_us: dict[tuple[str, int], float],
) -> None:
    """Medians over the rounds: a table, then one summary line per figure."""
    med = {k: statistics.median(v) for k, v in rps.items()}
    ms = {k: statistics.median(v) * 1000 for k, v in lat.items()}
    big = {k: statistics.median(v) for k, v in mbs.items()}

    def row(name: str, values: dict[str, float], fmt: str, skip: tuple[str, ...] = ()) -> None:
        cells = "".join(f"{'' if m in skip else format(values[m], fmt):>10}" for m in MODES)
        ratios = "".join(f"{values[m] / values['ssh -R']:>13.2f}x" for m in ("tunnel", "plain"))
        print(f"{name:<20}{cells}{ratios}")

    print()
    print(f"{'figure':<20}" + "".join(f"{m:>10}" for m in MODES) + f"{'tunnel/ssh':>14}{'plain/ssh':>14}")
    for c in CONCURRENCY:
        row(f"c={c} req/s", {m: med[(m, c)] for m in MODES}, ".0f")
    for q in (50, 99):
        row(f"c=1 p{q} ms", {m: ms[(m, q)] for m in MODES}, ".3f")
    row("64 MiB MB/s", big, ".1f")
    for c in CONCURRENCY:  # the relays' own processes: gateway + plane, ssh + sshd
        row(f"c={c} CPU us/req", {m: cpu_us.get((m, c), 0.0) for m in MODES}, ".0f", skip=("direct",))
    print(f"{'peak RSS gw+plane':<20}{rss:>20.1f} MiB")
    print()
    for c in CONCURRENCY:
        print(f"c={c} req/s: {med[('tunnel', c)] / med[('ssh -R', c)]:.2f}x ssh -R")
    for q in (50, 99):
        print(f"c=1 p{q}: {ms[('tunnel', q)]:.2f} ms (ssh -R {ms[('ssh -R', q)]:.2f} ms)")
    print(f"large MB/s: {big['tunnel'] / big['ssh -R']:.2f}x ssh -R")
    print(f"peak RSS gateway+plane: {rss:.1f} MiB")
    print(
        f"yardstick, plain aiohttp relay: c=64 req/s {med[('plain', 64)] / med[('ssh -R', 64)]:.2f}x ssh -R, "
        f"large MB/s {big['plain'] / big['ssh -R']:.2f}x ssh -R"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--big-reps", type=int, default=3)
    parser.add_argument("--role", choices=["bench", "plane"], default="bench")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--tls-port", type=int)
    parser.add_argument("--http-port", type=int)
    args = parser.parse_args()
    if args.role == "plane":
        run_plane(args.dir, args.tls_port, args.http_port)
        return
    for tool in (NGINX, SSHD, "ssh", "ssh-keygen", "wrk", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found (needed for the relay benchmark)")
    bench(args.rounds, args.seconds, args.big_reps)


if __name__ == "__main__":
    main()
