"""`gateway policy check` and `gateway filter`: tools for policy authors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.errors import GatewayError
from gateway.filter.metadata_filter import (
    Denied,
    FilterRequest,
    FilterResponse,
    check_request,
    filter_response,
    header_value,
)
from gateway.filter.policy import Kind, default_policy_dirs, load_policies, policy_files
from gateway.filter.policy import check_policy_dirs as check_dirs


def _check(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.dirs] if args.dirs else default_policy_dirs()
    missing = [d for d in dirs if args.dirs and not d.is_dir()]
    if missing:
        raise GatewayError(f"{missing[0]}: not a directory")
    errors, warnings = check_dirs(dirs)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in errors:
        print(e)
    if errors:
        return 1
    policies = load_policies(dirs)
    count = sum(len(r) for r in policies.rules.values())
    print(f"ok: {len(list(policy_files(dirs)))} files, {count} rules")
    return 0


def _filter(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.policies] if args.policies else default_policy_dirs()
    policies = load_policies(dirs)
    request_body = None
    if args.request_body:
        try:
            request_body = Path(args.request_body).read_bytes()
        except OSError as exc:
            raise GatewayError(f"{args.request_body}: cannot read: {exc.strerror}") from None
    req = FilterRequest(args.method, args.path, {}, request_body)
    decision = check_request(policies, args.kind, req)
    if isinstance(decision, Denied):
        print(f"denied: {decision.reason}")
        return 1
    headers = {"content-type": args.content_type}
    if args.content_encoding:
        headers["content-encoding"] = args.content_encoding
    body = sys.stdin.buffer.read(decision.max_body_bytes + 1)
    result = filter_response(policies, args.kind, req, FilterResponse(args.status, headers, body))
    if isinstance(result, Denied):
        print(f"denied: {result.reason}")
        return 1
    print(f"X-Gateway-Filter: {header_value(result)} kept={result.kept}", file=sys.stderr)
    sys.stdout.buffer.write(result.body)
    sys.stdout.flush()
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `policy check` and `filter` on the `gateway` CLI."""
    policy = sub.add_parser("policy", help="metadata policy tools")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = psub.add_parser("check", help="validate policy files (file:line: problem)")
    check.add_argument("dirs", nargs="*", metavar="DIR", help="policy directories (default: shipped + /etc)")
    check.set_defaults(func=_check)

    flt = sub.add_parser("filter", help="filter a response body read from stdin through the policies")
    flt.add_argument("--kind", required=True, choices=[k.value for k in Kind])
    flt.add_argument("--method", default="GET")
    flt.add_argument("--path", required=True, help="request path including any query")
    flt.add_argument("--policies", action="append", metavar="DIR", help="policy dir (repeatable)")
    flt.add_argument("--content-type", default="application/json")
    flt.add_argument("--content-encoding", default="", help="e.g. gzip, when stdin is compressed")
    flt.add_argument("--status", type=int, default=200)
    flt.add_argument("--request-body", metavar="FILE", help="request body (SOAP rules inspect it)")
    flt.set_defaults(func=_filter)
