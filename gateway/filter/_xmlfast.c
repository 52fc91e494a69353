/* The XML (SOAP) metadata filter's per-element work in C: gateway.filter._xmlfast.
 *
 * The same filter as gateway/filter/xmlfilter.py (_Filter), which stays the reference and the
 * fallback: the same allowlist walk, the same output bytes, the same kept/removed counts and the
 * same refusals with the same reasons (tests/unit/test_xmlfilter_accel.py holds the two to that).
 * Issue 14: with one Python call per element and per text run, expat's callbacks cap the filter
 * near 11 MB/s; here libexpat calls C, and Python is called only for what is rare (a property's
 * name, an allowlist node seen for the first time, a namespace scope that changes).
 *
 * Parsing is defused as defusedxml does it for the Python path: a document type declaration is
 * refused at its start (so no entity can be declared), external entities are never loaded, and
 * nesting is bounded. Every allocation is checked; input is never trusted for a size.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <expat.h>
#include <stdint.h>
#include <string.h>

static const char DECLARATION[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
#define DECLARATION_LEN ((Py_ssize_t)(sizeof(DECLARATION) - 1))
#define XML_NS "http://www.w3.org/XML/1998/namespace"
#define TABLE_MAX 4096 /* entries per cache; past it the cache is emptied (a hostile document) */

/* ---- a growable byte buffer ---------------------------------------------------------------- */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int buf_grow(Buf *b, Py_ssize_t extra)
{
    if (extra > PY_SSIZE_T_MAX - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const char *s, Py_ssize_t n)
{
    if (b->cap - b->len < n && buf_grow(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static void buf_free(Buf *b)
{
    PyMem_Free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* The output: a bytearray used as the buffer, so close() hands it on without a copy (a 64 MiB
 * answer's output is ~50 MB). Its size is the capacity; `len` is what is written. */
typedef struct {
    PyObject *ba;
    Py_ssize_t len;
} Out;

static int out_grow(Out *o, Py_ssize_t extra)
{
    Py_ssize_t cap = PyByteArray_GET_SIZE(o->ba);
    if (extra > PY_SSIZE_T_MAX - o->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = o->len + extra;
    if (need <= cap)
        return 0;
    if (cap < 4096)
        cap = 4096;
    while (cap < need)
        cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    return PyByteArray_Resize(o->ba, cap);
}

static inline int out_put(Out *o, const char *s, Py_ssize_t n)
{
    if (PyByteArray_GET_SIZE(o->ba) - o->len < n && out_grow(o, n) < 0)
        return -1;
    memcpy(PyByteArray_AS_STRING(o->ba) + o->len, s, (size_t)n);
    o->len += n;
    return 0;
}

/* xml.sax.saxutils.escape: & < > */
static int out_text(Out *o, const char *s, Py_ssize_t n)
{
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *rep;
        Py_ssize_t rn;
        switch (s[i]) {
        case '&': rep = "&amp;"; rn = 5; break;
        case '<': rep = "&lt;"; rn = 4; break;
        case '>': rep = "&gt;"; rn = 4; break;
        default: continue;
        }
        if (out_put(o, s + start, i - start) < 0 || out_put(o, rep, rn) < 0)
            return -1;
        start = i + 1;
    }
    return out_put(o, s + start, n - start);
}

/* xml.sax.saxutils.quoteattr: escape, then \n \r \t as character references, then the quotes:
 * double unless the value holds a double quote and no single one. */
static int out_attr(Out *o, const char *s, Py_ssize_t n)
{
    int dq = memchr(s, '"', (size_t)n) != NULL, sq = memchr(s, '\'', (size_t)n) != NULL;
    char quote = (dq && !sq) ? '\'' : '"';
    if (out_put(o, &quote, 1) < 0)
        return -1;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *rep;
        Py_ssize_t rn;
        switch (s[i]) {
        case '&': rep = "&amp;"; rn = 5; break;
        case '<': rep = "&lt;"; rn = 4; break;
        case '>': rep = "&gt;"; rn = 4; break;
        case '\n': rep = "&#10;"; rn = 5; break;
        case '\r': rep = "&#13;"; rn = 5; break;
        case '\t': rep = "&#9;"; rn = 4; break;
        case '"':
            if (quote == '\'')
                continue;
            rep = "&quot;";
            rn = 6;
            break;
        default: continue;
        }
        if (out_put(o, s + start, i - start) < 0 || out_put(o, rep, rn) < 0)
            return -1;
        start = i + 1;
    }
    if (out_put(o, s + start, n - start) < 0)
        return -1;
    return out_put(o, &quote, 1);
}

/* Whether UTF-8 text is all whitespace as str.strip() sees it: 1 yes, 0 no, -1 error. */
static int is_blank(const char *s, Py_ssize_t n)
{
    int ascii = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            ascii = 0;
            continue;
        }
        if (!(c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)))
            return 0;
    }
    if (ascii)
        return 1;
    PyObject *u = PyUnicode_DecodeUTF8(s, n, "strict");
    if (u == NULL)
        return -1;
    int blank = 1;
    Py_ssize_t len = PyUnicode_GET_LENGTH(u);
    int kind = PyUnicode_KIND(u);
    const void *data = PyUnicode_DATA(u);
    for (Py_ssize_t i = 0; i < len && blank; i++)
        blank = Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i));
    Py_DECREF(u);
    return blank;
}

/* ---- string-keyed caches -------------------------------------------------------------------- */

typedef struct {
    char *key; /* NULL: empty slot */
    Py_ssize_t klen;
    Py_hash_t hash;
    void *value;
    int flag;
} Entry;

typedef struct {
    Entry *slots;
    Py_ssize_t size, used; /* size: a power of two, or 0 */
    void (*free_value)(void *);
} Table;

static Py_hash_t hash_bytes(const char *s, Py_ssize_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return (Py_hash_t)(h >> 1);
}

static void table_clear(Table *t)
{
    for (Py_ssize_t i = 0; i < t->size; i++) {
        if (t->slots[i].key != NULL) {
            PyMem_Free(t->slots[i].key);
            if (t->free_value != NULL && t->slots[i].value != NULL)
                t->free_value(t->slots[i].value);
        }
    }
    PyMem_Free(t->slots);
    t->slots = NULL;
    t->size = t->used = 0;
}

static Entry *table_find(Table *t, const char *key, Py_ssize_t klen, Py_hash_t hash)
{
    if (t->size == 0)
        return NULL;
    Py_ssize_t mask = t->size - 1;
    for (Py_ssize_t i = hash & mask;; i = (i + 1) & mask) {
        Entry *e = &t->slots[i];
        if (e->key == NULL)
            return NULL;
        if (e->hash == hash && e->klen == klen && memcmp(e->key, key, (size_t)klen) == 0)
            return e;
    }
}

/* Adds a key (not present); the new entry, or NULL with an exception set. */
static Entry *table_add(Table *t, const char *key, Py_ssize_t klen, Py_hash_t hash)
{
    if (t->used >= TABLE_MAX)
        table_clear(t);
    if ((t->used + 1) * 2 > t->size) {
        Py_ssize_t size = t->size ? t->size * 2 : 16;
        Entry *slots = PyMem_Calloc((size_t)size, sizeof(Entry));
        if (slots == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        for (Py_ssize_t i = 0; i < t->size; i++) {
            Entry *e = &t->slots[i];
            if (e->key == NULL)
                continue;
            Py_ssize_t j = e->hash & (size - 1);
            while (slots[j].key != NULL)
                j = (j + 1) & (size - 1);
            slots[j] = *e;
        }
        PyMem_Free(t->slots);
        t->slots = slots;
        t->size = size;
    }
    char *copy = PyMem_Malloc((size_t)klen + 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(copy, key, (size_t)klen);
    copy[klen] = '\0';
    Py_ssize_t mask = t->size - 1, i = hash & mask;
    while (t->slots[i].key != NULL)
        i = (i + 1) & mask;
    Entry *e = &t->slots[i];
    e->key = copy;
    e->klen = klen;
    e->hash = hash;
    e->value = NULL;
    e->flag = 0;
    t->used++;
    return e;
}

/* A qualified name as written to the output. */
typedef struct {
    Py_ssize_t len;
    char s[];
} Name;

static Name *name_new(const char *prefix, Py_ssize_t plen, const char *local, Py_ssize_t llen)
{
    Py_ssize_t len = plen ? plen + 1 + llen : llen;
    Name *n = PyMem_Malloc(sizeof(Name) + (size_t)len + 1);
    if (n == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    n->len = len;
    char *p = n->s;
    if (plen) {
        memcpy(p, prefix, (size_t)plen);
        p[plen] = ':';
        p += plen + 1;
    }
    memcpy(p, local, (size_t)llen);
    n->s[len] = '\0';
    return n;
}

static void name_free(void *n) { PyMem_Free(n); }

/* ---- allowlist nodes (gateway.filter.jsonpath.Node), read once each ------------------------- */

typedef struct NodeInfo {
    PyObject *node, *keys, *wild; /* strong; wild may be Py_None */
    int leaf, subtree;
    Table children; /* local name -> NodeInfo* (NULL: not allowed) */
    struct NodeInfo *next;
} NodeInfo;

/* ---- the filter object ---------------------------------------------------------------------- */

typedef struct {
    NodeInfo *node;
    Py_ssize_t name_off; /* the qualified name, in the name stack */
    Py_ssize_t name_len;
    Py_ssize_t start, kept0, removed0;
    int has_child, is_prop, nnames, narrowed;
    /* A property's first `name`, as the allowlist sees it: allowed whole, or the node its value
     * is narrowed to (NULL: none). Copies of the name's cache entry, which may be emptied. */
    int name_whole;
    NodeInfo *name_narrowed;
} Frame;

/* What the allowlist says about one property name (whole_property and narrowed, cached). */
typedef struct {
    int whole;
    NodeInfo *narrowed;
} PropInfo;

typedef struct {
    PyObject *prefix_for, *uri_for; /* the maps before this element's declarations */
} Saved;

typedef struct {
    PyObject_HEAD
    XML_Parser parser;
    PyObject *properties, *attributes, *whole_property, *narrowed, *rejected;
    NodeInfo *root, *nodes;
    int max_depth, depth, skip, open_props, finished;
    Py_ssize_t kept, removed;
    Frame *stack;
    int nstack;
    Saved *saved;
    int nsaved;
    PyObject *pending;               /* list of (prefix, uri) declared for the next element */
    PyObject *prefix_for, *uri_for;  /* dicts: uri -> prefix, prefix -> uri, in scope */
    Table qnames, attr_qnames;       /* expat name -> Name*, per namespace scope */
    Table props;                     /* property name (stripped) -> PropInfo* */
    Buf names;                       /* the open elements' qualified names */
    Buf text;                        /* the innermost open kept element's text */
    Out out;
    PyObject *error;                 /* the refusal's reason (str) once there is one; None: no memory */
} Filter;

static PyTypeObject FilterType;

static void nodes_free(Filter *f)
{
    NodeInfo *n = f->nodes;
    while (n != NULL) {
        NodeInfo *next = n->next;
        Py_XDECREF(n->node);
        Py_XDECREF(n->keys);
        Py_XDECREF(n->wild);
        table_clear(&n->children);
        PyMem_Free(n);
        n = next;
    }
    f->nodes = f->root = NULL;
}

static NodeInfo *node_info(Filter *f, PyObject *node)
{
    for (NodeInfo *n = f->nodes; n != NULL; n = n->next)
        if (n->node == node)
            return n;
    NodeInfo *n = PyMem_Calloc(1, sizeof(NodeInfo));
    if (n == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Py_INCREF(node);
    n->node = node;
    n->next = f->nodes;
    f->nodes = n;
    PyObject *leaf = NULL, *subtree = NULL;
    n->keys = PyObject_GetAttrString(node, "keys");
    n->wild = PyObject_GetAttrString(node, "wild");
    leaf = PyObject_GetAttrString(node, "leaf");
    subtree = PyObject_GetAttrString(node, "subtree");
    if (n->keys == NULL || n->wild == NULL || leaf == NULL || subtree == NULL || !PyDict_Check(n->keys)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "allowlist node without a keys dict");
        Py_XDECREF(leaf);
        Py_XDECREF(subtree);
        return NULL;
    }
    n->leaf = PyObject_IsTrue(leaf);
    n->subtree = PyObject_IsTrue(subtree);
    Py_DECREF(leaf);
    Py_DECREF(subtree);
    if (n->leaf < 0 || n->subtree < 0)
        return NULL;
    return n;
}

/* Node.child(local): keys.get(local, wild). *found is the child's info or NULL; -1 on error. */
static int node_child(Filter *f, NodeInfo *n, const char *local, Py_ssize_t llen, NodeInfo **found)
{
    Py_hash_t hash = hash_bytes(local, llen);
    Entry *e = table_find(&n->children, local, llen, hash);
    if (e != NULL) {
        *found = e->value;
        return 0;
    }
    PyObject *key = PyUnicode_DecodeUTF8(local, llen, "strict");
    if (key == NULL)
        return -1;
    PyObject *child = PyDict_GetItemWithError(n->keys, key); /* borrowed */
    Py_DECREF(key);
    if (child == NULL) {
        if (PyErr_Occurred())
            return -1;
        child = n->wild;
    }
    NodeInfo *info = NULL;
    if (child != Py_None) {
        info = node_info(f, child);
        if (info == NULL)
            return -1;
    }
    e = table_add(&n->children, local, llen, hash);
    if (e == NULL)
        return -1;
    e->value = info;
    *found = info;
    return 0;
}

static void fail(Filter *f)
{
    if (f->error == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value != NULL && PyObject_IsInstance(value, f->rejected) == 1) {
            f->error = PyObject_Str(value);
        } else {
            const char *kind = type != NULL ? ((PyTypeObject *)type)->tp_name : "ParseError";
            const char *dot = strrchr(kind, '.');
            f->error = PyUnicode_FromFormat("unparseable XML: %s", dot ? dot + 1 : kind);
        }
        if (f->error == NULL) { /* out of memory: still a refusal */
            PyErr_Clear();
            f->error = Py_NewRef(Py_None);
        }
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    PyErr_Clear(); /* the refusal is f->error now */
    if (f->parser != NULL)
        XML_StopParser(f->parser, XML_FALSE);
}

/* Refuses with `message` (a new str reference, stolen; NULL: the error set while making it). */
static void reject(Filter *f, PyObject *message)
{
    if (message == NULL || f->error != NULL) {
        Py_XDECREF(message);
        fail(f);
        return;
    }
    f->error = message;
    if (f->parser != NULL)
        XML_StopParser(f->parser, XML_FALSE);
}

static void reject_str(Filter *f, const char *message) { reject(f, PyUnicode_FromString(message)); }

static int clear_qnames(Filter *f)
{
    table_clear(&f->qnames);
    table_clear(&f->attr_qnames);
    return 0;
}

/* The qualified name for an expat name ("uri}local" or "local"), as _Filter._qname. */
static Name *qname(Filter *f, const char *tag, int attr, int *unfaithful)
{
    *unfaithful = 0;
    Table *t = attr ? &f->attr_qnames : &f->qnames;
    Py_ssize_t len = (Py_ssize_t)strlen(tag);
    Py_hash_t hash = hash_bytes(tag, len);
    Entry *e = table_find(t, tag, len, hash);
    if (e != NULL && e->value != NULL)
        return e->value;
    const char *sep = strrchr(tag, '}');
    Name *n;
    if (sep == NULL) {
        n = name_new(NULL, 0, tag, len);
    } else {
        PyObject *uri = PyUnicode_DecodeUTF8(tag, sep - tag, "strict");
        if (uri == NULL)
            return NULL;
        PyObject *prefix = PyDict_GetItemWithError(f->prefix_for, uri); /* borrowed */
        PyObject *bound = prefix != NULL ? PyDict_GetItemWithError(f->uri_for, prefix) : NULL;
        int same = bound != NULL ? PyObject_RichCompareBool(bound, uri, Py_EQ) : 0;
        Py_DECREF(uri);
        if (PyErr_Occurred() || same < 0)
            return NULL;
        Py_ssize_t plen = 0;
        const char *p = prefix != NULL ? PyUnicode_AsUTF8AndSize(prefix, &plen) : NULL;
        if (prefix != NULL && p == NULL)
            return NULL;
        if (prefix == NULL || !same || (attr && plen == 0)) {
            *unfaithful = 1;
            return NULL;
        }
        n = name_new(p, plen, sep + 1, len - (sep + 1 - tag));
    }
    if (n == NULL)
        return NULL;
    if (e == NULL)
        e = table_add(t, tag, len, hash);
    if (e == NULL) {
        PyMem_Free(n);
        return NULL;
    }
    e->value = n;
    return n;
}

static void reject_qname(Filter *f, int unfaithful)
{
    if (unfaithful)
        reject_str(f, "namespace prefixes cannot be reproduced faithfully");
    else
        fail(f);
}

static const char *local_of(const char *tag, Py_ssize_t *len)
{
    const char *sep = strrchr(tag, '}');
    const char *local = sep ? sep + 1 : tag;
    *len = (Py_ssize_t)strlen(local);
    return local;
}

static int push_saved(Filter *f, PyObject *prefix_for, PyObject *uri_for)
{
    f->saved[f->nsaved].prefix_for = prefix_for;
    f->saved[f->nsaved].uri_for = uri_for;
    f->nsaved++;
    return 0;
}

static void pop_saved(Filter *f)
{
    Saved s = f->saved[--f->nsaved];
    if (s.prefix_for != NULL) {
        Py_SETREF(f->prefix_for, s.prefix_for);
        Py_SETREF(f->uri_for, s.uri_for);
        clear_qnames(f);
    }
}

/* ---- expat handlers --------------------------------------------------------------------------- */

static void XMLCALL on_start_ns(void *data, const XML_Char *prefix, const XML_Char *uri)
{
    Filter *f = data;
    if (f->error != NULL || f->skip)
        return;
    PyObject *pair = Py_BuildValue("(ss)", prefix ? prefix : "", uri ? uri : "");
    if (pair == NULL || PyList_Append(f->pending, pair) < 0) {
        Py_XDECREF(pair);
        fail(f);
        return;
    }
    Py_DECREF(pair);
}

static int apply_decls(Filter *f, PyObject *decls)
{
    PyObject *prefix_for = PyDict_Copy(f->prefix_for), *uri_for = PyDict_Copy(f->uri_for);
    if (prefix_for == NULL || uri_for == NULL) {
        Py_XDECREF(prefix_for);
        Py_XDECREF(uri_for);
        return -1;
    }
    push_saved(f, f->prefix_for, f->uri_for);
    f->prefix_for = prefix_for;
    f->uri_for = uri_for;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(decls); i++) {
        PyObject *pair = PyList_GET_ITEM(decls, i);
        PyObject *prefix = PyTuple_GET_ITEM(pair, 0), *uri = PyTuple_GET_ITEM(pair, 1);
        if (PyDict_SetItem(f->uri_for, prefix, uri) < 0)
            return -1;
        if (PyUnicode_GET_LENGTH(uri) && PyDict_SetItem(f->prefix_for, uri, prefix) < 0)
            return -1;
    }
    clear_qnames(f);
    return 0;
}

static int write_decls(Filter *f, PyObject *decls)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(decls); i++) {
        PyObject *pair = PyList_GET_ITEM(decls, i);
        Py_ssize_t plen, ulen;
        const char *prefix = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 0), &plen);
        const char *uri = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 1), &ulen);
        if (prefix == NULL || uri == NULL)
            return -1;
        if (plen) {
            if (out_put(&f->out, " xmlns:", 7) < 0 || out_put(&f->out, prefix, plen) < 0 ||
                out_put(&f->out, "=", 1) < 0)
                return -1;
        } else if (out_put(&f->out, " xmlns=", 7) < 0) {
            return -1;
        }
        if (out_attr(&f->out, uri, ulen) < 0)
            return -1;
    }
    return 0;
}

/* _Filter._value_node: what a property's `val` keeps, given the names seen so far. */
static NodeInfo *value_node(Frame *prop, NodeInfo *whole)
{
    if (prop->nnames != 1)
        return prop->nnames == 0 ? whole : NULL;
    if (prop->name_whole)
        return whole;
    if (prop->name_narrowed != NULL)
        prop->narrowed = 1;
    return prop->name_narrowed;
}

/* str.strip() of UTF-8 text: the stripped bytes in *out (into `text`, or into *keep's buffer). */
static int strip_text(const char *text, Py_ssize_t len, const char **out, Py_ssize_t *olen, PyObject **keep)
{
    *keep = NULL;
    for (Py_ssize_t i = 0; i < len; i++) {
        if ((unsigned char)text[i] >= 0x80) { /* Unicode whitespace: as Python sees it */
            PyObject *raw = PyUnicode_DecodeUTF8(text, len, "strict");
            PyObject *stripped = raw != NULL ? PyObject_CallMethod(raw, "strip", NULL) : NULL;
            Py_XDECREF(raw);
            if (stripped == NULL)
                return -1;
            *out = PyUnicode_AsUTF8AndSize(stripped, olen);
            if (*out == NULL) {
                Py_DECREF(stripped);
                return -1;
            }
            *keep = stripped;
            return 0;
        }
    }
#define ASCII_SPACE(c) ((c) == ' ' || ((c) >= '\t' && (c) <= '\r') || ((c) >= 0x1c && (c) <= 0x1f))
    while (len && ASCII_SPACE(text[0]))
        text++, len--;
    while (len && ASCII_SPACE(text[len - 1]))
        len--;
#undef ASCII_SPACE
    *out = text;
    *olen = len;
    return 0;
}

/* A property's first name: whole_property() and narrowed() for it, each asked once per name. */
static int prop_info(Filter *f, const char *text, Py_ssize_t tlen, Frame *prop)
{
    const char *name;
    Py_ssize_t len;
    PyObject *keep;
    if (strip_text(text, tlen, &name, &len, &keep) < 0)
        return -1;
    Py_hash_t hash = hash_bytes(name, len);
    Entry *e = table_find(&f->props, name, len, hash);
    PropInfo *info = e != NULL ? e->value : NULL;
    if (info == NULL) {
        PyObject *str = PyUnicode_DecodeUTF8(name, len, "strict");
        PyObject *r = str != NULL ? PyObject_CallFunctionObjArgs(f->whole_property, str, f->properties, NULL) : NULL;
        int whole = r != NULL ? PyObject_IsTrue(r) : -1;
        Py_XDECREF(r);
        NodeInfo *narrowed = NULL;
        if (whole == 0) {
            PyObject *node = PyObject_CallFunctionObjArgs(f->narrowed, str, f->properties, NULL);
            if (node == NULL)
                whole = -1;
            else if (node != Py_None && (narrowed = node_info(f, node)) == NULL)
                whole = -1;
            Py_XDECREF(node);
        }
        Py_XDECREF(str);
        if (whole < 0 || (info = PyMem_Malloc(sizeof(PropInfo))) == NULL) {
            Py_XDECREF(keep);
            return whole < 0 ? -1 : (PyErr_NoMemory(), -1);
        }
        info->whole = whole;
        info->narrowed = narrowed;
        if ((e = table_add(&f->props, name, len, hash)) == NULL) {
            PyMem_Free(info);
            Py_XDECREF(keep);
            return -1;
        }
        e->value = info;
    }
    Py_XDECREF(keep);
    prop->name_whole = info->whole;
    prop->name_narrowed = info->narrowed;
    return 0;
}

static void XMLCALL on_start(void *data, const XML_Char *tag, const XML_Char **atts)
{
    Filter *f = data;
    if (f->error != NULL)
        return;
    if (++f->depth > f->max_depth) {
        reject(f, PyUnicode_FromFormat("XML nested deeper than %d levels", f->max_depth));
        return;
    }
    if (f->skip) {
        f->skip++;
        return;
    }
    PyObject *decls = NULL;
    if (PyList_GET_SIZE(f->pending)) {
        decls = f->pending;
        f->pending = PyList_New(0);
        if (f->pending == NULL || apply_decls(f, decls) < 0)
            goto error;
    } else {
        push_saved(f, NULL, NULL);
    }
    Py_ssize_t llen;
    const char *local = local_of(tag, &llen);
    Frame *parent = f->nstack ? &f->stack[f->nstack - 1] : NULL;
    NodeInfo *node;
    if (parent == NULL) {
        if (node_child(f, f->root, local, llen, &node) < 0)
            goto error;
        if (node == NULL) {
            PyObject *name = PyUnicode_DecodeUTF8(local, llen, "strict");
            reject(f, name != NULL ? PyUnicode_FromFormat("root element %R is not allowed", name) : NULL);
            Py_XDECREF(name);
            Py_XDECREF(decls);
            return;
        }
    } else {
        if (f->text.len) {
            int blank = is_blank(f->text.p, f->text.len);
            if (blank < 0)
                goto error;
            if (!blank)
                f->removed++; /* mixed content: text beside child elements never leaves */
            f->text.len = 0;
        }
        parent->has_child = 1;
        if (parent->node->subtree) {
            node = parent->node;
        } else if (node_child(f, parent->node, local, llen, &node) < 0) {
            goto error;
        }
        if (node != NULL && parent->is_prop && node->subtree && llen == 3 && memcmp(local, "val", 3) == 0)
            node = value_node(parent, node);
        if (node == NULL) {
            f->removed++;
            f->skip = 1; /* inside a dropped subtree only depth is counted */
            Py_XDECREF(decls);
            return;
        }
    }
    int unfaithful;
    Name *name = qname(f, tag, 0, &unfaithful);
    if (name == NULL) {
        Py_XDECREF(decls);
        reject_qname(f, unfaithful);
        return;
    }
    Frame *frame = &f->stack[f->nstack];
    memset(frame, 0, sizeof(*frame));
    frame->node = node;
    frame->start = f->out.len;
    frame->kept0 = f->kept;
    frame->removed0 = f->removed;
    frame->name_off = f->names.len;
    frame->name_len = name->len;
    if (buf_put(&f->names, name->s, name->len) < 0)
        goto error;
    if (!node->subtree && ((llen == 7 && memcmp(local, "propSet", 7) == 0) ||
                           (llen == 9 && memcmp(local, "changeSet", 9) == 0))) {
        frame->is_prop = 1;
        f->open_props++;
    }
    f->nstack++;
    if (out_put(&f->out, "<", 1) < 0 || out_put(&f->out, name->s, name->len) < 0)
        goto error;
    if (decls != NULL && write_decls(f, decls) < 0)
        goto error;
    Py_CLEAR(decls);
    for (int i = 0; atts[i] != NULL; i += 2) {
        Py_ssize_t alen;
        const char *alocal = local_of(atts[i], &alen);
        Py_hash_t hash = hash_bytes(atts[i], (Py_ssize_t)strlen(atts[i]));
        Entry *e = table_find(&f->attr_qnames, atts[i], (Py_ssize_t)strlen(atts[i]), hash);
        int allowed;
        if (e != NULL) {
            allowed = e->flag;
        } else {
            PyObject *key = PyUnicode_DecodeUTF8(alocal, alen, "strict");
            if (key == NULL)
                goto error;
            allowed = PySet_Contains(f->attributes, key);
            Py_DECREF(key);
            if (allowed < 0)
                goto error;
        }
        if (!allowed) {
            f->removed++;
            if (e == NULL && (e = table_add(&f->attr_qnames, atts[i], (Py_ssize_t)strlen(atts[i]), hash)) == NULL)
                goto error;
            e->flag = 0;
            continue;
        }
        Name *an = qname(f, atts[i], 1, &unfaithful);
        if (an == NULL) {
            reject_qname(f, unfaithful);
            return;
        }
        e = table_find(&f->attr_qnames, atts[i], (Py_ssize_t)strlen(atts[i]), hash);
        if (e != NULL)
            e->flag = 1;
        if (out_put(&f->out, " ", 1) < 0 || out_put(&f->out, an->s, an->len) < 0 || out_put(&f->out, "=", 1) < 0 ||
            out_attr(&f->out, atts[i + 1], (Py_ssize_t)strlen(atts[i + 1])) < 0)
            goto error;
    }
    if (out_put(&f->out, ">", 1) < 0)
        goto error;
    return;
error:
    Py_XDECREF(decls);
    fail(f);
}

static void XMLCALL on_data(void *data, const XML_Char *s, int len)
{
    Filter *f = data;
    if (f->error != NULL || f->skip || !f->nstack)
        return;
    if (buf_put(&f->text, s, len) < 0)
        fail(f);
}

static void XMLCALL on_end(void *data, const XML_Char *tag)
{
    Filter *f = data;
    if (f->error != NULL)
        return;
    f->depth--;
    if (f->skip) {
        if (--f->skip == 0)
            pop_saved(f); /* the dropped element itself: its scope ends as in a kept one */
        return;
    }
    pop_saved(f);
    Frame *frame = &f->stack[--f->nstack];
    Frame *parent = f->nstack ? &f->stack[f->nstack - 1] : NULL;
    const char *text = f->text.p;
    Py_ssize_t tlen = f->text.len;
    if (tlen) {
        int blank = is_blank(text, tlen);
        if (blank < 0)
            goto error;
        if (!blank) {
            if (!frame->has_child && (frame->node->leaf || frame->node->subtree)) {
                if (out_text(&f->out, text, tlen) < 0)
                    goto error;
                f->kept++;
            } else {
                f->removed++;
            }
        }
    }
    if (out_put(&f->out, "</", 2) < 0 || out_put(&f->out, f->names.p + frame->name_off, frame->name_len) < 0 ||
        out_put(&f->out, ">", 1) < 0)
        goto error;
    f->names.len = frame->name_off;
    if (parent != NULL && parent->is_prop) {
        Py_ssize_t llen;
        const char *local = local_of(tag, &llen);
        if (llen == 4 && memcmp(local, "name", 4) == 0 && parent->nnames++ == 0 &&
            prop_info(f, text ? text : "", tlen, parent) < 0)
            goto error;
    }
    f->text.len = 0;
    if (frame->is_prop) {
        f->open_props--;
        int keep = frame->nnames == 1 && (frame->name_whole || frame->narrowed);
        if (!keep) { /* not an allowed property: cut it back out, with whatever it counted */
            f->out.len = frame->start;
            f->kept = frame->kept0;
            f->removed = frame->removed0 + 1;
        }
    }
    return;
error:
    fail(f);
}

static void XMLCALL on_doctype(void *data, const XML_Char *name, const XML_Char *sysid, const XML_Char *pubid,
                               int has_internal_subset)
{
    Filter *f = data;
    (void)name, (void)sysid, (void)pubid, (void)has_internal_subset;
    if (f->error == NULL)
        reject_str(f, "unparseable XML: DTDForbidden");
}

static int XMLCALL on_external_entity(XML_Parser p, const XML_Char *context, const XML_Char *base,
                                      const XML_Char *sysid, const XML_Char *pubid)
{
    (void)context, (void)base, (void)sysid, (void)pubid;
    Filter *f = XML_GetUserData(p);
    if (f->error == NULL)
        reject_str(f, "unparseable XML: ExternalReferenceForbidden");
    return XML_STATUS_ERROR;
}

/* pyexpat's handler for encodings expat does not know: any single-byte codec Python has. */
static int XMLCALL on_unknown_encoding(void *data, const XML_Char *name, XML_Encoding *info)
{
    Filter *f = data;
    unsigned char all[256];
    if (f->error != NULL)
        return XML_STATUS_ERROR;
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    PyObject *u = PyUnicode_Decode((const char *)all, 256, name, "replace");
    if (u == NULL) {
        fail(f);
        return XML_STATUS_ERROR;
    }
    if (PyUnicode_GET_LENGTH(u) != 256) {
        Py_DECREF(u);
        PyErr_SetString(PyExc_ValueError, "multi-byte encodings are not supported");
        fail(f);
        return XML_STATUS_ERROR;
    }
    int kind = PyUnicode_KIND(u);
    const void *chars = PyUnicode_DATA(u);
    for (int i = 0; i < 256; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, chars, i);
        info->map[i] = ch != Py_UNICODE_REPLACEMENT_CHARACTER ? (int)ch : -1;
    }
    info->data = NULL;
    info->convert = NULL;
    info->release = NULL;
    Py_DECREF(u);
    return XML_STATUS_OK;
}

/* ---- the Python type -------------------------------------------------------------------------- */

static int Filter_init(Filter *f, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"root", "properties", "attributes", "whole_property", "narrowed", "rejected",
                             "max_depth", NULL};
    PyObject *root;
    if (f->parser != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Filter initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!OOOi", kwlist, &root, &PyFrozenSet_Type, &f->properties,
                                     &PyFrozenSet_Type, &f->attributes, &f->whole_property, &f->narrowed,
                                     &f->rejected, &f->max_depth))
        return -1;
    Py_INCREF(f->properties);
    Py_INCREF(f->attributes);
    Py_INCREF(f->whole_property);
    Py_INCREF(f->narrowed);
    Py_INCREF(f->rejected);
    if (f->max_depth < 1 || f->max_depth > 100000) {
        PyErr_SetString(PyExc_ValueError, "max_depth out of range");
        return -1;
    }
    f->root = node_info(f, root);
    if (f->root == NULL)
        return -1;
    f->stack = PyMem_Calloc((size_t)f->max_depth + 1, sizeof(Frame));
    f->saved = PyMem_Calloc((size_t)f->max_depth + 1, sizeof(Saved));
    f->pending = PyList_New(0);
    f->prefix_for = Py_BuildValue("{ss}", XML_NS, "xml");
    f->uri_for = Py_BuildValue("{ssss}", "xml", XML_NS, "", "");
    f->out.ba = PyByteArray_FromStringAndSize(DECLARATION, DECLARATION_LEN);
    f->out.len = DECLARATION_LEN;
    if (f->stack == NULL || f->saved == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (f->pending == NULL || f->prefix_for == NULL || f->uri_for == NULL || f->out.ba == NULL)
        return -1;
    f->qnames.free_value = f->attr_qnames.free_value = f->props.free_value = name_free; /* PyMem_Free */
    f->parser = XML_ParserCreateNS(NULL, '}');
    if (f->parser == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    XML_SetUserData(f->parser, f);
    XML_SetElementHandler(f->parser, on_start, on_end);
    XML_SetCharacterDataHandler(f->parser, on_data);
    XML_SetStartNamespaceDeclHandler(f->parser, on_start_ns);
    XML_SetStartDoctypeDeclHandler(f->parser, on_doctype);
    XML_SetExternalEntityRefHandler(f->parser, on_external_entity);
    XML_SetUnknownEncodingHandler(f->parser, on_unknown_encoding, f);
    XML_SetParamEntityParsing(f->parser, XML_PARAM_ENTITY_PARSING_NEVER);
    return 0;
}

static void Filter_dealloc(Filter *f)
{
    if (f->parser != NULL)
        XML_ParserFree(f->parser);
    for (int i = 0; i < f->nsaved; i++) {
        Py_XDECREF(f->saved[i].prefix_for);
        Py_XDECREF(f->saved[i].uri_for);
    }
    PyMem_Free(f->stack);
    PyMem_Free(f->saved);
    nodes_free(f);
    table_clear(&f->qnames);
    table_clear(&f->attr_qnames);
    table_clear(&f->props);
    buf_free(&f->names);
    buf_free(&f->text);
    Py_XDECREF(f->out.ba);
    Py_XDECREF(f->pending);
    Py_XDECREF(f->prefix_for);
    Py_XDECREF(f->uri_for);
    Py_XDECREF(f->properties);
    Py_XDECREF(f->attributes);
    Py_XDECREF(f->whole_property);
    Py_XDECREF(f->narrowed);
    Py_XDECREF(f->rejected);
    Py_XDECREF(f->error);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

/* The refusal is kept as its reason, not as the exception: an exception's traceback holds the
 * frames that hold this object, a cycle a type without GC support would never free. */
static PyObject *raise_error(Filter *f)
{
    if (f->error == Py_None)
        return PyErr_NoMemory();
    PyErr_SetObject(f->rejected, f->error);
    return NULL;
}

static PyObject *parse(Filter *f, const char *data, Py_ssize_t len, int final)
{
    if (f->error != NULL)
        return raise_error(f);
    if (f->parser == NULL || f->finished) {
        PyErr_SetString(PyExc_RuntimeError, "the filter is closed");
        return NULL;
    }
    do {
        int n = len > INT_MAX ? INT_MAX : (int)len;
        int last = final && n == len;
        if (XML_Parse(f->parser, data, n, last) != XML_STATUS_OK && f->error == NULL) {
            if (PyErr_Occurred())
                fail(f);
            else
                reject_str(f, "unparseable XML: ParseError");
        }
        if (f->error != NULL)
            return raise_error(f);
        data += n;
        len -= n;
    } while (len > 0);
    Py_RETURN_NONE;
}

static PyObject *Filter_feed(Filter *f, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = parse(f, view.buf, view.len, 0);
    PyBuffer_Release(&view);
    return r;
}

static PyObject *Filter_close(Filter *f, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = parse(f, "", 0, 1);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    f->finished = 1;
    if (f->nstack || f->depth) {
        reject_str(f, "unparseable XML: unclosed elements");
        return raise_error(f);
    }
    if (f->out.len == DECLARATION_LEN) {
        reject_str(f, "empty XML document");
        return raise_error(f);
    }
    if (PyByteArray_Resize(f->out.ba, f->out.len) < 0)
        return NULL;
    PyObject *out = f->out.ba;
    f->out.ba = PyByteArray_FromStringAndSize(NULL, 0);
    f->out.len = 0;
    if (f->out.ba == NULL) {
        f->out.ba = out;
        return NULL;
    }
    PyObject *result = Py_BuildValue("(Nnn)", out, f->kept, f->removed);
    return result;
}

static PyObject *Filter_held(Filter *f, void *Py_UNUSED(closure)) { return PyLong_FromSsize_t(f->out.len); }

static PyMethodDef Filter_methods[] = {
    {"feed", (PyCFunction)Filter_feed, METH_O, "Filter the next piece of the body; XmlRejected when it cannot be."},
    {"close", (PyCFunction)Filter_close, METH_NOARGS,
     "The filtered document (a bytearray), its kept and removed counts; XmlRejected if incomplete."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Filter_getset[] = {
    {"held", (getter)Filter_held, NULL, "Bytes of output held so far.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FilterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.filter._xmlfast.Filter",
    .tp_basicsize = sizeof(Filter),
    .tp_dealloc = (destructor)Filter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The XML allowlist filter (gateway/filter/xmlfilter.py's _Filter) on libexpat, in C.",
    .tp_methods = Filter_methods,
    .tp_getset = Filter_getset,
    .tp_init = (initproc)Filter_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *expat_version(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString(XML_ExpatVersion());
}

static PyMethodDef module_methods[] = {
    {"expat_version", expat_version, METH_NOARGS, "The libexpat this module is linked with."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway.filter._xmlfast", "The XML metadata filter's per-element work in C.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__xmlfast(void)
{
    if (PyType_Ready(&FilterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FilterType);
    if (PyModule_AddObject(m, "Filter", (PyObject *)&FilterType) < 0) {
        Py_DECREF(&FilterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
