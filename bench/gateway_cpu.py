"""The gateway's own CPU per relayed request, with the JSON filter on (issue 14's measuring policy).

bench/relay.py prints the CPU of gateway + plane together; this one splits it: the real plane
(bench/plane_http.py) and `gateway run` against nginx on loopback, wrk as the load, the
1 KiB JSON of the shared harness (../shared/bench/setup.sh) filtered field by field by the same
policy (../shared/bench/ours_setup.sh). It prints req/s and CPU µs per request of each process
at c=1/16/64 (medians of the rounds), and with --profile py-spy profiles of the gateway and the plane at c=64
(py-spy is not a project dependency: `pip install py-spy` into the venv to use it). py-spy samples
wall time; --perf DIR writes an on-CPU profile of the gateway at c=64 (perf, with Python's perf
trampolines: each sample goes to the innermost Python function on its stack; needs perf(1)).
The gateway is the built image's, on its own Python, when it can run (bench/shipped.py; --gateway).

    .venv/bin/python bench/gateway_cpu.py [--rounds 3] [--seconds 3] [--profile DIR] [--perf DIR]
        [--audit journal]

The filter's audit lines go to audit.log in the work directory, as shipped (--audit journal: through
logging instead, the behaviour before the audit file and with `audit_log: null`).

Bounded: rounds x 3 wrk runs of --seconds each, plus one profiled run; loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import shipped

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relay import (  # noqa: E402  (bench/relay.py: this script's directory is on sys.path)
    CONCURRENCY,
    Procs,
    cpu_seconds,
    enrol,
    free_port,
    run_small,
    start_nginx,
    wait_port,
    wait_relay,
    workdir,
)

# The shared harness's small document: 17 items, each filtered field by field.
_ITEMS = [{"id": i, "name": f"item-{i:03d}", "ok": i % 2 == 0, "score": i * 1.5} for i in range(17)]
SMALL_DOC = json.dumps({"status": "ok", "items": _ITEMS}, separators=(",", ":")).encode()
POLICY = """kind: http
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


# --uvloop: the gateway on uvloop's event loop (a measurement; the project does not depend on it).
_UVLOOP = (
    "import runpy, sys, uvloop; uvloop.install(); sys.argv[0] = 'gateway'; "
    "runpy.run_module('gateway', run_name='__main__')"
)


def start(
    work: Path,
    procs: Procs,
    uvloop: bool = False,
    audit: str = "file",
    gateway_kind: str = "auto",
    env: tuple[str, ...] = (),
) -> tuple[str, str, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """nginx, the plane and the gateway: the small document's URL, the admin header for it and the
    two relay processes."""
    nginx = start_nginx(work, procs)
    (work / "www" / "small.json").write_bytes(SMALL_DOC + b" " * (1024 - len(SMALL_DOC)))
    # The plane loads a real CA (key included) and the relay route wants the admin token: the
    # identities are made by the project's CLIs, as bench/relay.py does.
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
    policies = work / "policies"
    policies.mkdir()
    (policies / "bench.yaml").write_text(POLICY)
    targets = work / "targets.yaml"
    targets.write_text(
        f"targets:\n  - name: nginx\n    url: http://127.0.0.1:{nginx}\n    kind: http\n"
        "    allow_private: [127.0.0.1]\n"
    )
    config = work / "gateway.yaml"
    config.write_text(
        f"plane_url: https://127.0.0.1:{tls_port}\nstate_dir: {gw_dir}\ntargets: {targets}\n"
        f"policy_dirs: [{policies}]\naudit_log: {work / 'audit.log' if audit == 'file' else 'null'}\n"
    )
    # Its log goes to a file, as it would go to journald (with --audit journal: a line per response).
    log = (work / "gateway.log").open("wb")
    if uvloop:
        which = shipped.Gateway((sys.executable, "-c", _UVLOOP), f"{shipped.VENV.label} on uvloop")
    else:
        which = shipped.choose(gateway_kind, work, env=env)
    print(f"gateway: {which.label}", flush=True)
    environ = {**os.environ, **dict(setting.split("=", 1) for setting in env)}
    gateway = procs.start(which.argv("run", "--config", str(config)), cwd=REPO, stderr=log, env=environ)
    log.close()
    path = f"/v1/gateways/{gateway_id}/targets/nginx/small.json"
    header = f"Authorization: Bearer {(plane_dir / 'admin-token').read_text().strip()}"
    wait_relay(path, http_port, gateway, header + "\r\n")
    return f"http://127.0.0.1:{http_port}{path}", header, plane, gateway


def _record(spy: str, pid: int, seconds: int, raw: Path) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` for `seconds` at 250 Hz into `raw` (collapsed stacks)."""
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-f", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def profile(url: str, header: str, pids: dict[str, int], seconds: int, out: Path) -> None:
    """py-spy profiles of each process in `pids` (name -> pid), all recorded while wrk runs at c=64."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    raws = {name: out / f"{name}-c64.txt" for name in pids}
    recs = [_record(spy, pid, seconds + 1, raws[name]) for name, pid in pids.items()]
    run_small(url, 64, seconds, header)
    for rec in recs:
        rec.wait(timeout=seconds + 60)
    for name, raw in raws.items():
        print(f"profile of the {name}: {raw} (collapsed stacks)")
        print(top_entries(raw))


def perf_profile(url: str, header: str, pid: int, seconds: int, out: Path) -> None:
    """An on-CPU profile of the gateway while wrk runs at c=64: perf's samples, each given to the
    innermost Python function on its stack (Python 3.12+'s perf trampolines name them; the
    image's 3.13 does, the venv's 3.11 does not), and the share of each library. py-spy samples
    wall time, so a process waiting for a core counts where it stands; perf counts only CPU."""
    perf = shutil.which("perf")
    if perf is None:
        print("--perf: no perf(1) on this host (Debian: apt install linux-perf)")
        return
    out.mkdir(parents=True, exist_ok=True)
    data = out / "gateway-c64.perf.data"
    record = [perf, "record", "-q", "-F", "499", "--call-graph", "dwarf,32768", "-p", str(pid)]
    record += ["-o", str(data)]
    rec = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    run_small(url, 64, seconds, header)
    rec.send_signal(signal.SIGINT)
    rec.wait(timeout=120)
    # The map of Python's trampolines is in the gateway's /tmp (the image's, for the image's
    # gateway); perf reads it from its own /tmp. Symbols are read inside the gateway's mount
    # namespace, where the image's files are mounted.
    here, there = Path(f"/tmp/perf-{pid}.map"), Path(f"/proc/{pid}/root/tmp/perf-{pid}.map")
    copied = there.exists() and not (here.exists() and os.path.samefile(here, there))
    if copied:
        shutil.copyfile(there, here)
    try:
        enter = ["nsenter", "-t", str(pid), "-m", "--", perf]
        stacks = subprocess.run(
            [*enter, "script", "-i", str(data), "-F", "ip,sym"],
            capture_output=True, text=True, check=True, timeout=600,
        ).stdout  # fmt: skip
        libs = subprocess.run(
            [*enter, "report", "-i", str(data), "--no-children", "--sort", "dso", "-g", "none", "--stdio"],
            capture_output=True, text=True, check=True, timeout=600,
        ).stdout  # fmt: skip
    finally:
        if copied:
            here.unlink(missing_ok=True)
    table = on_cpu_table(stacks)
    text = out / "gateway-c64-oncpu.txt"
    shares = [line.strip() for line in libs.splitlines() if line.strip() and not line.startswith("#")]
    text.write_text(table + "\nby library:\n" + "\n".join(shares) + "\n")
    print(f"on-CPU profile of the gateway: {text} (perf data: {data})")
    print("\n".join(table.splitlines()[:26]))
    print("by library:\n" + "\n".join(shares[:8]))


def on_cpu_table(stacks: str) -> str:
    """`perf script -F ip,sym` output: the share of samples per innermost Python function."""
    own: dict[str, int] = {}
    total = 0
    for block in stacks.split("\n\n"):
        frames = [line.split(None, 1)[-1] for line in block.strip().splitlines() if line.strip()]
        if not frames:
            continue
        total += 1
        name = next((f for f in frames if f.startswith("py::")), "(no Python frame)")
        if name.startswith("py::"):
            func, _, path = name[4:].partition(":")
            name = f"{func} ({path.rsplit('/', 1)[-1]})"
        own[name] = own.get(name, 0) + 1
    lines = [f"share  innermost Python function (its bytecode and the C it calls)   [{total} samples]"]
    for name, count in sorted(own.items(), key=lambda kv: -kv[1]):
        lines.append(f"{100 * count / max(total, 1):5.1f}%  {name}")
    return "\n".join(lines)


def top_entries(raw: Path, n: int = 40) -> str:
    """Inclusive share of samples per function (file:function), from py-spy's collapsed stacks."""
    total = 0
    incl: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if "run_forever" not in stack:
            continue  # idle executor threads (the resolver's) are not the relay's work
        count = int(count_text)
        total += count
        frames = [f.split(" (", 1)[0] + " " + f.rsplit("/", 1)[-1].split(":", 1)[0] for f in stack.split(";")]
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"{'incl':>6} {'self':>6}  function (file)   [{total} samples]"]
    for frame, count in sorted(incl.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"{100 * count / total:5.1f}% {100 * own.get(frame, 0) / total:5.1f}%  {frame}")
    lines.append("top self:")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"{100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument(
        "--uvloop", action="store_true", help="run the gateway on uvloop (pip install uvloop)"
    )
    parser.add_argument(
        "--profile", type=Path, help="write py-spy profiles of the gateway and the plane at c=64 here"
    )
    parser.add_argument(
        "--perf", type=Path, help="write an on-CPU profile (perf) of the gateway at c=64 here"
    )
    parser.add_argument(
        "--audit", choices=("file", "journal"), default="file", help="where the filter's decisions go"
    )
    parser.add_argument(
        "--gateway",
        choices=("auto", "image", "venv"),
        default="auto",
        help="the built image's gateway, as shipped (auto: when it can run), or the venv's",
    )
    args = parser.parse_args()
    with workdir() as work:
        procs = Procs()
        try:
            env = ("PYTHONPERFSUPPORT=1",) if args.perf is not None else ()
            url, header, plane, gateway = start(work, procs, args.uvloop, args.audit, args.gateway, env)
            run_small(url, 16, 1, header)  # warm-up: pools, caches
            rps: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
            gw_us: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
            plane_us: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
            for _ in range(args.rounds):
                for c in CONCURRENCY:
                    g0, p0 = cpu_seconds([gateway.pid]), cpu_seconds([plane.pid])
                    rate, _lat, count = run_small(url, c, args.seconds, header)
                    g1, p1 = cpu_seconds([gateway.pid]), cpu_seconds([plane.pid])
                    rps[c].append(rate)
                    gw_us[c].append((g1 - g0) / count * 1e6)
                    plane_us[c].append((p1 - p0) / count * 1e6)
            if args.profile is not None:
                pids = {"gateway": gateway.pid, "plane": plane.pid}
                profile(url, header, pids, args.seconds * 2, args.profile)
            if args.perf is not None:
                perf_profile(url, header, gateway.pid, args.seconds * 2, args.perf)
        finally:
            procs.stop_all()
        audited = (work / "audit.log").read_bytes().count(b"\n") if args.audit == "file" else None
    if audited is not None:
        print(f"audit.log: {audited} lines")
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"{'figure':<14}{'req/s':>10}{'gateway us/req':>16}{'plane us/req':>14}")
    for c in CONCURRENCY:
        print(
            f"c={c:<12}{statistics.median(rps[c]):>10.0f}{statistics.median(gw_us[c]):>16.0f}"
            f"{statistics.median(plane_us[c]):>14.0f}"
        )


if __name__ == "__main__":
    main()
