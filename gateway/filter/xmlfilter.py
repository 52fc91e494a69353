"""XML (SOAP) allowlist filtering: a streaming defusedxml parse that writes out only allowed elements."""

from __future__ import annotations

import functools
import io
import re
import xml.etree.ElementTree as ET  # output trees only; parsing is defusedxml
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import defusedxml.ElementTree as DET

from gateway.filter.jsonpath import Node, compile_paths
from gateway.filter.policy import XmlAllow

try:  # the same filter in C (gateway/filter/_xmlfast.c), built by scripts/build-accel.sh
    from gateway.filter import _xmlfast  # type: ignore[attr-defined]
except ImportError:  # not built for this Python: the pure-Python filter below does the same work
    _xmlfast = None

MAX_DEPTH = 128
_CHUNK = 64 * 1024
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
# PropertyCollector results carry the property path in a `name` child; the property decides what leaves.
_PROPERTY_ELEMENTS = frozenset({"propSet", "changeSet"})


@functools.lru_cache(maxsize=1024)
def whole_property(name: str, properties: frozenset[str]) -> bool:
    """Whether `name`, or a property it is part of (`guest` for `guest.net`), is allowed whole."""
    parts = name.split(".")
    return any(".".join(parts[:n]) in properties for n in range(1, len(parts) + 1))


@functools.lru_cache(maxsize=256)
def narrowed(name: str, properties: frozenset[str]) -> Node | None:
    """What a property's value may keep when only paths below it are allowed, or None.

    Clients ask for a wide property (govc asks for `summary`) when the policy lists its fields
    (`summary.config.name`, ...). The value's elements are named like the property path's steps
    (VirtualMachineSummary has `config`, which has `name`), so the allowed fields below `name`
    become element paths inside its `val`, each keeping its own subtree.
    """
    prefix = name + "."
    below = sorted(p[len(prefix) :] for p in properties if p.startswith(prefix) and len(p) > len(prefix))
    if not below or any(not step for rel in below for step in rel.split(".")):
        return None
    return compile_paths([rel.replace(".", "/") + "/**" for rel in below], slash=True).root


# Values and texts without these need no escaping (quoteattr and escape return them as they are).
_ATTR_SPECIAL = re.compile(r"[&<>\"\n\r\t]")
_TEXT_SPECIAL = re.compile(r"[&<>]")


def _quoteattr(value: str) -> str:
    return quoteattr(value) if _ATTR_SPECIAL.search(value) else f'"{value}"'


def _escape(text: str) -> str:
    return escape(text) if _TEXT_SPECIAL.search(text) else text


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


def _ignore(*_args: object) -> None:
    pass


class _Frame:
    __slots__ = ("has_child", "kept0", "name", "names", "narrowed", "node", "removed0", "start", "text")

    def __init__(self, node: Node, name: str, start: int, kept: int, removed: int) -> None:
        self.node = node
        self.name = name  # the qualified name as written to the output
        self.start = start  # index in the output where this element begins
        self.kept0, self.removed0 = kept, removed
        self.text: list[str] = []
        self.has_child = False
        self.names: list[str] | None = None  # a property element's `name` children
        self.narrowed: str | None = None  # the property name its `val` was narrowed for


_XML_NS = "http://www.w3.org/XML/1998/namespace"


class _Filter:
    """A streaming parser target: allowed elements go straight to the output, nothing is built.

    Peak memory stays near the output size; a tree of the whole document (20x its size in
    ElementTree objects) never exists. A property element is written, then cut back out of the
    output if its `name` turns out not to be an allowed property.
    """

    def __init__(self, allow: XmlAllow) -> None:
        self.allow = allow
        self.done = bytearray(_DECLARATION)  # the output so far, encoded: one buffer, not pieces
        self.out: list[str] = []  # pieces since the last compaction; property frames index into it
        self.open_props = 0
        self.stack: list[_Frame] = []
        self.kept = self.removed = 0
        self.depth = 0
        self.skip = 0  # > 0 inside a dropped subtree
        self.pending: list[tuple[str, str]] = []
        self.prefix_for: dict[str, str] = {_XML_NS: "xml"}  # uri -> prefix in scope
        self.uri_for: dict[str, str] = {"xml": _XML_NS, "": ""}  # prefix -> uri in scope
        self.saved: list[tuple[dict[str, str], dict[str, str]] | None] = []
        # Qualified names by expat name, valid while the namespace scope does not change.
        self.qnames: dict[str, str] = {}
        self.attr_qnames: dict[str, str] = {}
        self.expat: Any = None
        self.handlers: tuple[Any, ...] = ()

    def bind(self, expat: Any) -> None:
        """Take expat's events directly (and switch them off inside dropped subtrees)."""
        self.expat = expat
        self.handlers = (self.start_ns, self.start, self.end, self.data)
        expat.StartElementHandler = self.start
        expat.EndElementHandler = self.end

    def _skip_start(self, tag: str, attrib: list[str]) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise XmlRejected(f"XML nested deeper than {MAX_DEPTH} levels")
        self.skip += 1

    def _skip_end(self, tag: str) -> None:
        self.depth -= 1
        self.skip -= 1
        if not self.skip:  # the dropped element itself: its scope ends as in end()
            saved = self.saved.pop()
            if saved is not None:
                self.prefix_for, self.uri_for = saved
                self.qnames, self.attr_qnames = {}, {}
            e = self.expat
            (
                e.StartNamespaceDeclHandler,
                e.StartElementHandler,
                e.EndElementHandler,
                e.CharacterDataHandler,
            ) = self.handlers

    def _begin_skip(self) -> None:
        """Inside a dropped subtree only depth is counted: its names, text and namespaces never leave."""
        self.skip = 1
        e = self.expat
        if e is not None:
            e.StartNamespaceDeclHandler = _ignore
            e.StartElementHandler = self._skip_start
            e.EndElementHandler = self._skip_end
            e.CharacterDataHandler = _ignore

    def start_ns(self, prefix: str, uri: str) -> None:
        self.pending.append((prefix or "", uri or ""))

    # Names arrive straight from expat (namespace separator "}"): "uri}local" or "local".
    def _qname(self, tag: str, *, attr: bool = False) -> str:
        cache = self.attr_qnames if attr else self.qnames
        name = cache.get(tag)
        if name is not None:
            return name
        uri, sep, local = tag.rpartition("}")
        if not sep:
            name = tag
        else:
            prefix = self.prefix_for.get(uri)
            if prefix is None or self.uri_for.get(prefix) != uri or (attr and not prefix):
                raise XmlRejected("namespace prefixes cannot be reproduced faithfully")
            name = f"{prefix}:{local}" if prefix else local
        cache[tag] = name
        return name

    def start(self, tag: str, attrib: list[str]) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise XmlRejected(f"XML nested deeper than {MAX_DEPTH} levels")
        decls = self.pending
        if decls:
            self.pending = []
            self.saved.append((dict(self.prefix_for), dict(self.uri_for)))
            for prefix, uri in decls:
                self.uri_for[prefix] = uri
                if uri:
                    self.prefix_for[uri] = prefix
            self.qnames, self.attr_qnames = {}, {}
        else:
            self.saved.append(None)
        if self.skip:  # only without bind(): bound, a dropped subtree's events go to _skip_*
            self.skip += 1
            return
        local = tag.rpartition("}")[2]
        parent = self.stack[-1] if self.stack else None
        if parent is None:
            found = self.allow.elements.root.child(local)
            if found is None:
                raise XmlRejected(f"root element {local!r} is not allowed")
            node = found
        else:
            if parent.text:
                if "".join(parent.text).strip():
                    self.removed += 1  # mixed content: text beside child elements never leaves
                parent.text.clear()
            parent.has_child = True
            sub = parent.node if parent.node.subtree else parent.node.child(local)
            if sub is not None and local == "val" and parent.names is not None and sub.subtree:
                sub = self._value_node(parent, sub)
            if sub is None:
                self.removed += 1
                self._begin_skip()
                return
            node = sub
        name = self._qname(tag)
        frame = _Frame(node, name, len(self.out), self.kept, self.removed)
        if local in _PROPERTY_ELEMENTS and not node.subtree:
            frame.names = []
            self.open_props += 1
        parts = [f"<{name}"]
        for prefix, uri in decls:
            parts.append(f" xmlns:{prefix}={_quoteattr(uri)}" if prefix else f" xmlns={_quoteattr(uri)}")
        allowed = self.allow.attributes
        for n in range(0, len(attrib), 2):
            key, value = attrib[n], attrib[n + 1]
            if key.rpartition("}")[2] in allowed:
                parts.append(f" {self._qname(key, attr=True)}={_quoteattr(value)}")
            else:
                self.removed += 1
        parts.append(">")
        self.out.append("".join(parts))
        self.stack.append(frame)

    def _value_node(self, prop: _Frame, whole: Node) -> Node | None:
        """The allowlist for a property's `val`: whole, narrowed to the fields listed below it, or none."""
        names = prop.names or []
        if len(names) != 1:
            # No name yet (servers send it first): keep the value for now; the property is cut at
            # its end unless its name turns out to be allowed whole.
            return whole if not names else None
        if whole_property(names[0], self.allow.properties):
            return whole
        node = narrowed(names[0], self.allow.properties)
        if node is not None:
            prop.narrowed = names[0]
        return node

    def data(self, text: str) -> None:
        if not self.skip and self.stack:
            self.stack[-1].text.append(text)

    def end(self, tag: str) -> None:
        self.depth -= 1
        saved = self.saved.pop()
        if saved is not None:
            self.prefix_for, self.uri_for = saved
            self.qnames, self.attr_qnames = {}, {}
        if self.skip:
            self.skip -= 1
            return
        frame = self.stack.pop()
        text = "".join(frame.text) if frame.text else ""
        if text and text.strip():
            if not frame.has_child and (frame.node.leaf or frame.node.subtree):
                self.out.append(_escape(text))
                self.kept += 1
            else:
                self.removed += 1
        self.out.append(f"</{frame.name}>")
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.names is not None and tag.rpartition("}")[2] == "name":
            parent.names.append(text.strip())
        if frame.names is not None:
            self.open_props -= 1
            name = frame.names[0] if len(frame.names) == 1 else None
            if name is None or not (whole_property(name, self.allow.properties) or frame.narrowed == name):
                # Not an allowed property: cut it back out, with whatever it counted.
                del self.out[frame.start :]
                self.kept, self.removed = frame.kept0, frame.removed0 + 1
        if not self.open_props and len(self.out) > 4096:
            # Thousands of tiny strings cost far more memory than their text; nothing indexes them now.
            self.done += "".join(self.out).encode("utf-8")
            self.out.clear()

    def close(self) -> None:
        if self.stack or self.depth:
            raise XmlRejected("unparseable XML: unclosed elements")


def accelerated() -> bool:
    """Whether the C filter is in use (it is wherever it was built for the running Python)."""
    return _xmlfast is not None


class XmlStreamFilter:
    """The XML filter fed a body piece by piece (as it arrives from the target): only the output
    so far and expat's buffer are held, never the whole input. feed() each piece, then close().

    The work is done in C (`_xmlfast`, the same walk on libexpat) when it is built for the running
    Python, else by `_Filter` here; `pure=True` asks for `_Filter`. `_Filter` is the reference: the
    tests hold the two to the same bytes, counts and refusals (tests/unit/test_xmlfilter_accel.py).
    """

    def __init__(self, allow: XmlAllow, *, pure: bool = False) -> None:
        self._fast: Any = None
        if _xmlfast is not None and not pure:
            self._fast = _xmlfast.Filter(
                allow.elements.root,
                allow.properties,
                frozenset(allow.attributes),
                whole_property,
                narrowed,
                XmlRejected,
                MAX_DEPTH,
            )
            return
        self._target = _Filter(allow)
        self._parser = DET.DefusedXMLParser(target=self._target, forbid_dtd=True)
        # Element events go straight from expat to the target, skipping ElementTree's Python-level
        # name fixing (half the run time); the DTD/entity guards defusedxml installed stay in place.
        self._target.bind(self._parser.parser)

    @property
    def held(self) -> int:
        """Bytes of output held so far (an estimate: the pieces of an open property count as text)."""
        if self._fast is not None:
            return int(self._fast.held)
        target = self._target
        return len(target.done) + sum(map(len, target.out))

    def feed(self, data: bytes | memoryview) -> None:
        """Filter the next piece of the body; XmlRejected as soon as it cannot be filtered."""
        if self._fast is not None:
            self._fast.feed(data)  # raises XmlRejected itself, with the reasons _Filter gives
            return
        try:
            self._parser.feed(data)
        except XmlRejected:
            raise
        except Exception as exc:  # defusedxml's DTD/entity errors, expat's ParseError, encoding errors
            raise XmlRejected(f"unparseable XML: {type(exc).__name__}") from None

    def close(self) -> tuple[bytearray, int, int]:
        """The filtered document (the filter's own buffer, not copied: at 64 MiB a copy is 50 MB
        more at the peak), its kept and removed counts; XmlRejected if it is incomplete."""
        if self._fast is not None:
            result: tuple[bytearray, int, int] = self._fast.close()
            return result
        target = self._target
        try:
            self._parser.close()
        except XmlRejected:
            raise
        except Exception as exc:
            raise XmlRejected(f"unparseable XML: {type(exc).__name__}") from None
        if not target.out and len(target.done) == len(_DECLARATION):
            raise XmlRejected("empty XML document")
        target.done += "".join(target.out).encode("utf-8")
        target.out.clear()
        out, target.done = target.done, bytearray()
        return out, target.kept, target.removed


def filter_xml(body: bytes | bytearray, allow: XmlAllow, *, pure: bool = False) -> tuple[bytearray, int, int]:
    """Keep only allowed elements/properties/attributes; return (body, kept, removed) or raise XmlRejected."""
    stream = XmlStreamFilter(allow, pure=pure)
    view = memoryview(body)
    for pos in range(0, len(body), _CHUNK):
        stream.feed(view[pos : pos + _CHUNK])
    return stream.close()
