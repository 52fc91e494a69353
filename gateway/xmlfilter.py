"""XML (SOAP) allowlist filtering: defusedxml parse, keep allowed elements/properties, re-serialize."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET  # output trees only; parsing is defusedxml
from xml.sax.saxutils import escape, quoteattr

import defusedxml.ElementTree as DET

from gateway.jsonpath import Node
from gateway.policy import XmlAllow

MAX_DEPTH = 128
# PropertyCollector results carry the property path in a `name` child; the property decides what leaves.
_PROPERTY_ELEMENTS = frozenset({"propSet", "changeSet"})


class XmlRejected(ValueError):
    """The XML body cannot be filtered safely; the message is the denial reason."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if tag.startswith("{") else tag


def parse(body: bytes) -> tuple[ET.Element, list[tuple[str, str]]]:
    """Parse with DTDs, entities and external references forbidden; return root and namespace decls."""
    namespaces: list[tuple[str, str]] = []
    depth = 0
    root: ET.Element | None = None
    try:
        for event, item in DET.iterparse(
            io.BytesIO(body), events=("start", "end", "start-ns"), forbid_dtd=True
        ):
            if event == "start-ns":
                namespaces.append(item)
            elif event == "start":
                depth += 1
                if depth > MAX_DEPTH:
                    raise XmlRejected(f"XML nested deeper than {MAX_DEPTH} levels")
                if root is None:
                    root = item
            else:
                depth -= 1
    except XmlRejected:
        raise
    except Exception as exc:  # defusedxml's DTD/entity errors, expat's ParseError, encoding errors
        raise XmlRejected(f"unparseable XML: {type(exc).__name__}") from None
    if root is None:
        raise XmlRejected("empty XML document")
    return root, namespaces


def soap_operation(body: bytes) -> str:
    """The operation a SOAP request invokes: the local name of the first element inside Envelope/Body."""
    root, _ = parse(body)
    if _local(root.tag) != "Envelope":
        raise XmlRejected("request is not a SOAP envelope")
    bodies = [c for c in root if _local(c.tag) == "Body"]
    if len(bodies) != 1 or len(bodies[0]) != 1:
        raise XmlRejected("SOAP envelope must have one Body with one operation")
    return _local(bodies[0][0].tag)


class _Walker:
    def __init__(self, allow: XmlAllow) -> None:
        self.allow = allow
        self.kept = 0
        self.removed = 0

    def walk(self, elem: ET.Element, node: Node) -> ET.Element | None:
        local = _local(elem.tag)
        if local in _PROPERTY_ELEMENTS and not node.subtree:
            names = [c.text for c in elem if _local(c.tag) == "name"]
            if len(names) != 1 or (names[0] or "").strip() not in self.allow.properties:
                self.removed += 1
                return None
        out = ET.Element(elem.tag)
        for key, value in elem.attrib.items():
            if _local(key) in self.allow.attributes:
                out.set(key, value)
            else:
                self.removed += 1
        for child in elem:
            sub = node if node.subtree else node.child(_local(child.tag))
            if sub is None:
                self.removed += 1
                continue
            kept = self.walk(child, sub)
            if kept is not None:
                out.append(kept)
        text = (elem.text or "").strip()
        if text:
            if len(elem) == 0 and (node.leaf or node.subtree):
                out.text = elem.text
                self.kept += 1
            else:
                self.removed += 1
        return out


def _serialize(root: ET.Element, namespaces: list[tuple[str, str]]) -> bytes:
    # Our own writer keeps the original prefixes: xsi:type="xsd:string" values name them, and
    # ElementTree's writer would rename them to ns0, ns1 and break the QNames. Prefixed
    # namespaces are declared once on the root; default namespaces where they change.
    prefix_of: dict[str, str] = {}
    decls: list[str] = []
    for prefix, uri in namespaces:
        if prefix and uri not in prefix_of and prefix not in prefix_of.values():
            prefix_of[uri] = prefix
            decls.append(f" xmlns:{prefix}={quoteattr(uri)}")
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n']

    def emit(elem: ET.Element, default: str, top: bool) -> None:
        tag = elem.tag
        uri, local = tag[1:].split("}", 1) if tag.startswith("{") else ("", tag)
        decl = "".join(decls) if top else ""
        prefix = prefix_of.get(uri) if uri else None
        if prefix:
            name = f"{prefix}:{local}"
        else:
            name = local
            if uri != default:
                decl += f" xmlns={quoteattr(uri)}"
                default = uri
        attrs: list[str] = []
        for key, value in elem.attrib.items():
            if key.startswith("{"):
                auri, alocal = key[1:].split("}", 1)
                aprefix = prefix_of.get(auri)
                if not aprefix:
                    raise XmlRejected("attribute in an undeclared namespace")
                key = f"{aprefix}:{alocal}"
            attrs.append(f" {key}={quoteattr(value)}")
        out.append(f"<{name}{decl}{''.join(attrs)}")
        if elem.text is None and len(elem) == 0:
            out.append("/>")
            return
        out.append(">")
        if elem.text:
            out.append(escape(elem.text))
        for child in elem:
            emit(child, default, False)
        out.append(f"</{name}>")

    emit(root, "", True)
    return "".join(out).encode("utf-8")


def filter_xml(body: bytes, allow: XmlAllow) -> tuple[bytes, int, int]:
    """Keep only allowed elements/properties/attributes; return (body, kept, removed) or raise XmlRejected."""
    root, namespaces = parse(body)
    node = allow.elements.root.child(_local(root.tag))
    if node is None:
        raise XmlRejected(f"root element {_local(root.tag)!r} is not allowed")
    walker = _Walker(allow)
    try:
        kept = walker.walk(root, node)
    except RecursionError:
        raise XmlRejected("XML nested too deeply") from None
    if kept is None:
        raise XmlRejected("nothing of the XML body is allowed")
    return _serialize(kept, namespaces), walker.kept, walker.removed
