"""Command-line entry for `appliance`: build, summary, boot, smoke."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance.log import setup_logging
from appliance.qemu import DISK_DEVICES, NIC_DEVICES, BootOptions, Forward
from appliance.spec import Firmware
from gwcore.cli import run_command
from gwcore.errors import UserError

log = logging.getLogger("appliance")


def _forward(text: str) -> Forward:
    try:
        host, guest = text.split(":")
        return Forward(int(host), int(guest))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOSTPORT:GUESTPORT, got {text!r}") from None


def _credential(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _boot_options(args: argparse.Namespace) -> BootOptions:
    return BootOptions(
        image=args.image,
        firmware=Firmware(args.firmware),
        memory_mib=args.memory,
        cpus=args.cpus,
        disk=args.disk,
        nic=args.nic,
        forwards=tuple(args.forward),
        host_ports=tuple(args.host_port),
        credentials=dict(args.credential),
        ovf_iso=args.ovf_iso,
        snapshot=not args.persist,
        accel=args.accel,
    )


def cmd_build(args: argparse.Namespace) -> int:
    from appliance.build import build
    from appliance.spec import load_spec

    artifacts = build(load_spec(args.spec), args.output, lock=args.lock, incremental=not args.no_incremental)
    for path in (
        artifacts.raw,
        artifacts.qcow2,
        artifacts.ova,
        artifacts.bundle,
        artifacts.sbom,
        artifacts.lock,
        artifacts.sums,
        artifacts.sums_sig,
    ):
        if path is not None:
            print(path)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from appliance.bundle import build_bundle
    from appliance.errors import ApplianceError
    from appliance.render import DEFAULT_CACHE
    from appliance.signing import resolve_signer
    from appliance.spec import load_spec

    spec = load_spec(args.spec)
    raw = args.raw or args.output / f"{spec.artifact_stem}.raw"
    if not raw.is_file():
        raise ApplianceError(f"{raw}: no such disk image", hint="run 'make ova' first, or pass --raw")
    print(build_bundle(spec, raw, args.output, resolve_signer(spec, DEFAULT_CACHE)))
    return 0


def cmd_verify_signature(args: argparse.Namespace) -> int:
    from appliance.signature_check import check_signatures, keyring
    from appliance.signing import verify_file
    from appliance.verify import open_set

    ring = args.keyring or keyring()
    if args.path.is_dir():
        problems = check_signatures(open_set(args.path), ring)
        for problem in problems:
            print(f"verify: signatures: FAIL: {problem}", file=sys.stderr)
        if not problems:
            print(f"verify: signatures: OK ({ring})")
        return 1 if problems else 0
    verify_file(args.path, ring)
    print(f"{args.path}: signature OK ({ring})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from appliance.verify import verify

    results = verify(args.artifacts, tuple(args.check))
    for result in results:
        if result.ok:
            print(f"verify: {result.name}: OK")
        for problem in result.problems:
            print(f"verify: {result.name}: FAIL: {args.artifacts}/{problem}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from appliance.compare import compare_builds
    from appliance.verify import open_set

    names = sorted(open_set(args.first).sums)
    result = compare_builds(args.first, args.second, names)
    for name in result.same:
        print(f"same: {name}")
    for name in result.missing:
        print(f"missing: {name}")
    for name in result.different:
        print(f"DIFFERENT: {name}")
    for line in result.details:
        print(f"  {line}")
    return 0 if result.identical else 1


def cmd_summary(args: argparse.Namespace) -> int:
    from appliance.spec import format_summary, load_spec

    print(format_summary(load_spec(args.spec)))
    return 0


def cmd_boot(args: argparse.Namespace) -> int:
    from appliance.qemu import boot

    return boot(_boot_options(args))


def cmd_smoke(args: argparse.Namespace) -> int:
    from appliance.smoke import smoke
    from appliance.spec import load_spec

    spec = load_spec(args.spec)
    result = smoke(_boot_options(args), version=spec.version, timeout=args.timeout)
    login = f", console ready after {result.login_seconds:.0f}s" if result.login_seconds else ""
    facts = "".join(f", {key} {value}" for key, value in sorted(result.info.items()))
    if result.passed:
        took = f"in {result.seconds:.0f}s{login}{facts}"
        print(f"smoke: PASS: {args.image.name} under {result.accel.upper()} {took}")
        return 0
    for problem in result.problems:
        print(f"smoke: FAIL: {args.image.name}: {problem}", file=sys.stderr)
    return 1


def _add_boot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="a .raw, .qcow2, .vmdk or .ova artifact")
    p.add_argument("--firmware", choices=[f.value for f in Firmware], default="bios")
    p.add_argument("--memory", type=int, default=2048, help="MiB (default 2048)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--disk", choices=sorted(DISK_DEVICES), default="virtio", help="disk controller")
    p.add_argument("--nic", choices=sorted(NIC_DEVICES), default="virtio")
    p.add_argument("--forward", type=_forward, action="append", default=[], metavar="HOST:GUEST",
                   help="forward 127.0.0.1:HOST on the host to port GUEST in the guest")  # fmt: skip
    p.add_argument("--host-port", type=int, action="append", default=[], metavar="PORT",
                   help="let the guest reach 127.0.0.1:PORT on the host as 10.0.2.100:PORT")  # fmt: skip
    p.add_argument("--credential", type=_credential, action="append", default=[], metavar="KEY=VALUE",
                   help="pass a systemd credential through SMBIOS type 11")  # fmt: skip
    p.add_argument("--ovf-iso", type=Path, help="attach an OVF environment ISO (the ISO transport)")
    p.add_argument("--persist", action="store_true", help="write to the image instead of a snapshot")
    p.add_argument("--accel", choices=["kvm", "tcg"], help="default: KVM if it really works here, else TCG")


def build_parser() -> argparse.ArgumentParser:
    """The `appliance` argument parser."""
    parser = argparse.ArgumentParser(prog="appliance", description="Build and boot the gateway appliance")
    parser.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="build the raw, qcow2 and OVA artifacts")
    p.add_argument("--spec", type=Path, default=Path("appliance.yaml"))
    p.add_argument("--output", type=Path, default=Path("build"))
    p.add_argument("--lock", type=Path, metavar="FILE",
                   help="install exactly the package versions of this packages.lock")  # fmt: skip
    p.add_argument("--no-incremental", action="store_true",
                   help="install every package again instead of reusing mkosi's cached image")  # fmt: skip
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("verify", help="check an artifact set: SHA256SUMS, the SBOM against the lock, ...")
    p.add_argument(
        "artifacts", type=Path, nargs="?", default=Path("build"), help="a build's output directory"
    )
    p.add_argument(
        "--check", action="append", default=[], metavar="NAME", help="run only this check (repeatable)"
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("compare", help="compare two builds' artifacts byte for byte; say where disks differ")
    p.add_argument("first", type=Path, help="output directory of one build (its SHA256SUMS names the files)")
    p.add_argument("second", type=Path, help="output directory of the other build")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bundle", help="sign the update bundle of an already built raw disk")
    p.add_argument("--spec", type=Path, default=Path("appliance.yaml"))
    p.add_argument("--output", type=Path, default=Path("build"))
    p.add_argument("--raw", type=Path, help="the disk image (default: OUTPUT/NAME-VERSION.raw)")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("verify-signature", help="check SHA256SUMS.sig and the bundles of a set, or FILE.sig")
    p.add_argument("path", type=Path, help="a build's output directory, or a file such as build/SHA256SUMS")
    p.add_argument(
        "--keyring", type=Path, help="CA certificate ($APPLIANCE_SIGNING_KEYRING, else the dev build's)"
    )
    p.set_defaults(func=cmd_verify_signature)

    p = sub.add_parser("summary", help="print the resolved spec")
    p.add_argument("--spec", type=Path, default=Path("appliance.yaml"))
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("boot", help="boot an artifact under QEMU with the serial console here")
    _add_boot_arguments(p)
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("smoke", help="boot an artifact and check it from inside the guest")
    _add_boot_arguments(p)
    p.add_argument("--spec", type=Path, default=Path("appliance.yaml"))
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the verdict")
    p.set_defaults(func=cmd_smoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI: `error: ...` and exit 1 for user errors, tracebacks only with --debug."""
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    return run_command(args.func, args, UserError, args.debug)
