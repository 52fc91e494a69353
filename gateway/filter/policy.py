"""Metadata policy model and YAML loader: files -> one immutable PolicySet, errors as `file:line: problem`."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from gateway.errors import GatewayError
from gateway.filter.jsonpath import Allowlist, PathSyntaxError, compile_paths, parse_json_path
from gwcore.paths import LOCAL_POLICY_DIR
from gwcore.safeload import ParseError, compose_yaml

# The policies shipped in this package (on the image, also linked as gwcore.paths.SHIPPED_POLICY_DIR).
SHIPPED_POLICIES = Path(__file__).resolve().parent / "policies"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_RATIO = 100
# Bodies of requests we inspect (SOAP envelopes) are small; anything bigger is not a query.
MAX_REQUEST_BODY_BYTES = 1024 * 1024
READ_METHODS = frozenset({"GET", "HEAD"})
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_SEGMENT_RE = re.compile(r"^(\*\*|\*|\{[A-Za-z_][A-Za-z0-9_]*\}|[^/*{}?#;\\\s]+)$")


class Kind(enum.StrEnum):
    """Target kinds a policy can apply to (the `kind` of a target in targets.yaml)."""

    VSPHERE = "vsphere"
    VSPHERE_SOAP = "vsphere-soap"
    REDFISH = "redfish"
    KEYSTONE = "openstack-keystone"
    NOVA = "openstack-nova"
    CINDER = "openstack-cinder"
    GLANCE = "openstack-glance"
    NEUTRON = "openstack-neutron"
    HEAT = "openstack-heat"
    GNOCCHI = "openstack-gnocchi"
    AODH = "openstack-aodh"
    MURANO = "openstack-murano"
    HTTP = "http"


# What a target's kind may be: a Kind, or any other OpenStack service (openstack-<service>), which
# no shipped policy covers, so every call to it is denied until a local policy names it.
_OPENSTACK_SERVICE = re.compile(r"openstack-[a-z][a-z0-9-]{1,30}")
TARGET_KINDS_HELP = "vsphere, vsphere-soap, redfish, openstack-<service>, http"


def is_target_kind(text: str) -> bool:
    """Whether `text` may be a target's kind in targets.yaml (the one rule; targets.py asks it)."""
    return text in _KIND_VALUES or _OPENSTACK_SERVICE.fullmatch(text) is not None


_KIND_VALUES = frozenset(k.value for k in Kind)


@dataclass(frozen=True)
class XmlAllow:
    """What a rule keeps of an XML (SOAP) body: element paths, PropertyCollector properties, attributes."""

    elements: Allowlist
    properties: frozenset[str] = frozenset()
    attributes: frozenset[str] = frozenset({"type"})


@dataclass(frozen=True)
class BodyAllow:
    """What a rule keeps of a response body; None for a format means that format is refused."""

    json: Allowlist | None = None
    xml: XmlAllow | None = None


@dataclass(frozen=True)
class PathPattern:
    """A URL path pattern: `/v2.1/servers/{id}`; `*`/`{x}` match one segment, a final `**` any rest."""

    text: str
    segments: tuple[str, ...]

    def matches(self, segments: Sequence[str], *, fold_case: bool = False) -> bool:
        """Whether decoded path segments match this pattern."""
        pat = self.segments
        if pat and pat[-1] == "**":
            if len(segments) < len(pat) - 1:
                return False
            pat = pat[:-1]
            segments = segments[: len(pat)]
        elif len(segments) != len(pat):
            return False
        for want, got in zip(pat, segments, strict=True):
            if want == "*" or want.startswith("{"):
                continue
            if (want.lower() != got.lower()) if fold_case else (want != got):
                return False
        return True


@dataclass(frozen=True)
class Rule:
    """One policy rule: what request it matches and what of the response may leave."""

    name: str
    kind: Kind
    methods: frozenset[str]
    path: PathPattern
    source: str  # "file:line" for messages
    deny: bool = False
    reason: str = ""
    passthrough: bool = False
    body: BodyAllow = field(default_factory=BodyAllow)
    errors: BodyAllow = field(default_factory=BodyAllow)
    headers: frozenset[str] = frozenset()
    query: frozenset[str] | None = None
    soap_operations: frozenset[str] | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_ratio: int = DEFAULT_MAX_RATIO


@dataclass(frozen=True)
class PolicySet:
    """All loaded rules, grouped by kind, in file then rule order; deny rules are checked first."""

    rules: Mapping[Kind, tuple[Rule, ...]]
    files: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    # The filter's rule lookups, remembered per path shape (metadata_filter.select_rule_cached);
    # it lives and dies with this set, so a reload never sees an old answer.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def rules_for(self, kind: str) -> tuple[Rule, ...]:
        """The rules for a target kind (empty for an unknown kind, so everything is denied)."""
        try:
            return self.rules.get(Kind(kind), ())
        except ValueError:
            return ()


def default_policy_dirs() -> list[Path]:
    """The shipped policies (package data), then local overrides in /etc/gateway/policies.d."""
    return [SHIPPED_POLICIES, LOCAL_POLICY_DIR]


# --- loading -----------------------------------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, node: yaml.Node | None, message: str) -> None:
        super().__init__(message)
        self.line = node.start_mark.line + 1 if node is not None else 1
        self.message = message


def _scalar(node: yaml.Node, what: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise _Problem(node, f"{what}: expected a single value")
    constructor: Any = yaml.constructor.SafeConstructor()
    return constructor.construct_object(node, deep=True)


def _str(node: yaml.Node, what: str) -> str:
    value = _scalar(node, what)
    if not isinstance(value, str) or not value:
        raise _Problem(node, f"{what}: expected a non-empty string")
    return value


def _bool(node: yaml.Node, what: str) -> bool:
    value = _scalar(node, what)
    if not isinstance(value, bool):
        raise _Problem(node, f"{what}: expected true or false")
    return value


def _int(node: yaml.Node, what: str, low: int, high: int) -> int:
    value = _scalar(node, what)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Problem(node, f"{what}: expected an integer in {low}..{high}")
    return int(value)


def _strs(node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
    if not isinstance(node, yaml.SequenceNode):
        raise _Problem(node, f"{what}: expected a list")
    return [(item, _str(item, what)) for item in node.value]


def _mapping(node: yaml.Node, what: str, allowed: frozenset[str]) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise _Problem(node, f"{what}: expected a mapping")
    out: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = _str(key_node, f"{what} key")
        if key in out:
            raise _Problem(key_node, f"{what}: duplicate key {key!r}")
        if key not in allowed:
            raise _Problem(key_node, f"{what}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
        out[key] = value_node
    return out


def _allowlist(node: yaml.Node, what: str, *, slash: bool = False) -> Allowlist:
    items = _strs(node, what)
    for item, text in items:
        try:
            compile_paths([text], slash=slash)
        except PathSyntaxError as exc:
            raise _Problem(item, f"{what}: {exc}") from None
    return compile_paths([text for _, text in items], slash=slash)


_BODY_KEYS = frozenset({"json", "xml"})
_XML_KEYS = frozenset({"elements", "properties", "attributes"})


def _body(node: yaml.Node, what: str) -> BodyAllow:
    spec = _mapping(node, what or "rule", _BODY_KEYS)
    what = f"{what}." if what else ""
    json_allow = _allowlist(spec["json"], f"{what}json") if "json" in spec else None
    xml_allow = None
    if "xml" in spec:
        xml = _mapping(spec["xml"], f"{what}xml", _XML_KEYS)
        if "elements" not in xml:
            raise _Problem(spec["xml"], f"{what}xml: 'elements' is required")
        xml_allow = XmlAllow(
            elements=_allowlist(xml["elements"], f"{what}xml.elements", slash=True),
            properties=frozenset(t for _, t in _strs(xml["properties"], f"{what}xml.properties"))
            if "properties" in xml
            else frozenset(),
            attributes=frozenset(t for _, t in _strs(xml["attributes"], f"{what}xml.attributes"))
            if "attributes" in xml
            else frozenset({"type"}),
        )
    return BodyAllow(json=json_allow, xml=xml_allow)


def _path_pattern(node: yaml.Node) -> PathPattern:
    text = _str(node, "path")
    if not text.startswith("/"):
        raise _Problem(node, f"path {text!r}: must start with '/'")
    parts = text[1:].split("/") if text != "/" else []
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    for pos, part in enumerate(parts):
        if not _SEGMENT_RE.match(part) or part in (".", ".."):
            raise _Problem(node, f"path {text!r}: bad segment {part!r}")
        if part == "**" and pos != len(parts) - 1:
            raise _Problem(node, f"path {text!r}: '**' must be the last segment")
    return PathPattern(text, tuple(parts))


_FILE_KEYS = frozenset({"kind", "defaults", "errors", "rules"})
_DEFAULT_KEYS = frozenset({"max_body_bytes", "max_ratio", "headers"})
_RULE_KEYS = frozenset(
    {
        "name",
        "methods",
        "path",
        "deny",
        "reason",
        "allow_write",
        "passthrough",
        "json",
        "xml",
        "errors",
        "headers",
        "query",
        "soap_operations",
        "max_body_bytes",
        "max_ratio",
    }
)


def _rule(node: yaml.Node, kind: Kind, file: Path, defaults: dict[str, Any], errors: BodyAllow) -> Rule:
    spec = _mapping(node, "rule", _RULE_KEYS)
    for required in ("name", "path"):
        if required not in spec:
            raise _Problem(node, f"rule: {required!r} is required")
    name = _str(spec["name"], "name")
    if not _NAME_RE.match(name):
        raise _Problem(spec["name"], f"name {name!r}: use lowercase letters, digits, '.', '_' and '-'")
    path = _path_pattern(spec["path"])
    deny = _bool(spec["deny"], "deny") if "deny" in spec else False
    methods_node = spec.get("methods")
    methods = (
        frozenset(m.upper() for _, m in _strs(methods_node, "methods"))
        if methods_node
        else frozenset({"GET"})
    )
    for m in methods:
        if m not in KNOWN_METHODS and m != "*":
            raise _Problem(methods_node, f"methods: unknown method {m!r}")
    if "*" in methods and not deny:
        raise _Problem(methods_node, "methods: '*' is only allowed in deny rules")
    if "GET" in methods:
        methods = methods | {"HEAD"}
    allow_write = _bool(spec["allow_write"], "allow_write") if "allow_write" in spec else False
    writes = methods - READ_METHODS - {"*"}
    if writes and not deny and not allow_write:
        raise _Problem(
            methods_node,
            f"methods: {', '.join(sorted(writes))} is write-like; set 'allow_write: true' to mean it",
        )
    passthrough = _bool(spec["passthrough"], "passthrough") if "passthrough" in spec else False
    if passthrough and kind is not Kind.HTTP:
        raise _Problem(spec["passthrough"], "passthrough: only allowed for kind 'http' test policies")
    body = (
        _body(node_subset(node, spec, ("json", "xml")), "")
        if "json" in spec or "xml" in spec
        else BodyAllow()
    )
    if deny and (body.json or body.xml or passthrough):
        raise _Problem(node, "rule: a deny rule cannot allow a body or passthrough")
    headers = set(defaults.get("headers", ()))
    if "headers" in spec:
        for item, h in _strs(spec["headers"], "headers"):
            if not _HEADER_RE.match(h):
                raise _Problem(item, f"headers: bad header name {h!r}")
            headers.add(h.lower())
    return Rule(
        name=name,
        kind=kind,
        methods=methods,
        path=path,
        source=f"{file}:{node.start_mark.line + 1}",
        deny=deny,
        reason=_str(spec["reason"], "reason") if "reason" in spec else "",
        passthrough=passthrough,
        body=body,
        errors=_body(spec["errors"], "errors") if "errors" in spec else errors,
        headers=frozenset(headers),
        query=frozenset(q for _, q in _strs(spec["query"], "query")) if "query" in spec else None,
        soap_operations=frozenset(o for _, o in _strs(spec["soap_operations"], "soap_operations"))
        if "soap_operations" in spec
        else None,
        max_body_bytes=_int(spec["max_body_bytes"], "max_body_bytes", 0, 1 << 31)
        if "max_body_bytes" in spec
        else defaults.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        max_ratio=_int(spec["max_ratio"], "max_ratio", 1, 10_000)
        if "max_ratio" in spec
        else defaults.get("max_ratio", DEFAULT_MAX_RATIO),
    )


def node_subset(node: yaml.Node, spec: dict[str, yaml.Node], keys: Sequence[str]) -> yaml.MappingNode:
    """A mapping node holding only `keys` of a parsed mapping (used to read json/xml from a rule)."""
    pairs = [
        (yaml.ScalarNode("tag:yaml.org,2002:str", k, node.start_mark), spec[k]) for k in keys if k in spec
    ]
    return yaml.MappingNode("tag:yaml.org,2002:map", pairs, node.start_mark, node.end_mark)


def _load_file(path: Path) -> tuple[Kind, list[Rule], list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayError(f"{path}:1: cannot read: {exc}") from None
    try:
        root = compose_yaml(text)
    except ParseError as exc:
        raise GatewayError(f"{path}:{exc.line or 1}: invalid YAML: {exc.reason}") from None
    try:
        if root is None:
            raise _Problem(None, "empty policy file")
        spec = _mapping(root, "policy", _FILE_KEYS)
        if "kind" not in spec:
            raise _Problem(root, "policy: 'kind' is required")
        kind_text = _str(spec["kind"], "kind")
        try:
            kind = Kind(kind_text)
        except ValueError:
            raise _Problem(
                spec["kind"], f"kind: unknown kind {kind_text!r} (one of: {', '.join(k.value for k in Kind)})"
            ) from None
        defaults: dict[str, Any] = {}
        if "defaults" in spec:
            d = _mapping(spec["defaults"], "defaults", _DEFAULT_KEYS)
            if "max_body_bytes" in d:
                defaults["max_body_bytes"] = _int(d["max_body_bytes"], "defaults.max_body_bytes", 0, 1 << 31)
            if "max_ratio" in d:
                defaults["max_ratio"] = _int(d["max_ratio"], "defaults.max_ratio", 1, 10_000)
            if "headers" in d:
                defaults["headers"] = [h.lower() for _, h in _strs(d["headers"], "defaults.headers")]
        errors = _body(spec["errors"], "errors") if "errors" in spec else BodyAllow()
        rules_node = spec.get("rules")
        if rules_node is None or not isinstance(rules_node, yaml.SequenceNode):
            raise _Problem(rules_node or root, "rules: expected a list of rules")
        rules = [_rule(r, kind, path, defaults, errors) for r in rules_node.value]
        warnings = [
            f"{r.source}: rule {r.name!r} is passthrough (body leaves unfiltered)"
            for r in rules
            if r.passthrough
        ]
        # YAML strips the quotes of `- "@odata.id"`, leaving two steps; almost always a mistake.
        warnings += [
            f"{r.source}: rule {r.name!r}: path {p!r} splits an OData key at '.'; quote it: '\"@odata.id\"'"
            for r in rules
            for p in (r.body.json.paths if r.body.json else ())
            if any(step.endswith("@odata") for step in parse_json_path(p))
        ]
        return kind, rules, warnings
    except _Problem as exc:
        raise GatewayError(f"{path}:{exc.line}: {exc.message}") from None


def policy_files(dirs: Sequence[Path]) -> Iterator[Path]:
    """The effective policy files: `*.yaml` by name; a later dir's file masks an earlier one of that name."""
    chosen: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.yaml")):
            chosen[p.name] = p
    for name in sorted(chosen):
        yield chosen[name]


def load_policies(dirs: Sequence[Path]) -> PolicySet:
    """Load and validate every policy file; raise GatewayError("file:line: problem") on the first error."""
    by_kind: dict[Kind, list[Rule]] = {}
    seen: dict[tuple[Kind, str], str] = {}
    files: list[Path] = []
    warnings: list[str] = []
    for path in policy_files(dirs):
        kind, rules, warns = _load_file(path)
        files.append(path)
        warnings.extend(warns)
        for rule in rules:
            other = seen.get((kind, rule.name))
            if other is not None:
                raise GatewayError(f"{rule.source}: rule name {rule.name!r} already used at {other}")
            seen[(kind, rule.name)] = rule.source
            by_kind.setdefault(kind, []).append(rule)
    # Deny rules come first so no allow rule, however broad, can shadow them.
    ordered = {
        k: tuple([r for r in rs if r.deny] + [r for r in rs if not r.deny]) for k, rs in by_kind.items()
    }
    return PolicySet(MappingProxyType(ordered), tuple(files), tuple(warnings))


def check_policy_dirs(dirs: Sequence[Path]) -> tuple[list[str], list[str]]:
    """Validate every file independently (for `gateway policy check`): (errors, warnings)."""
    errors: list[str] = []
    warnings: list[str] = []
    for path in policy_files(dirs):
        try:
            warnings.extend(_load_file(path)[2])
        except GatewayError as exc:
            errors.append(str(exc))
    if not errors:
        try:
            load_policies(dirs)
        except GatewayError as exc:
            errors.append(str(exc))
    return errors, warnings
