/* The JSON metadata filter's per-value work in C: gateway.filter._jsonfast.
 *
 * Three functions of gateway/filter/jsonfilter.py, which keeps them in Python as the reference
 * and the fallback: the keep/remove walk over a parsed value (_filter_value_py) and the two hooks
 * the C decoder calls for every object and every float (_pairs_py, _float_py). Issue 14: on a
 * 1 KiB body they were a third of the filter's cost, one Python call per value.
 * tests/unit/test_jsonfilter_accel.py holds them to the Python functions' results, counts and
 * refusals. setup() hands over the Python objects they need: the allowlist node class, whose
 * __slots__ are read directly, the two exceptions and the "removed" marker.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <structmember.h>

#define MAX_FLOAT_TEXT 64

static PyTypeObject *node_type;
static PyObject *duplicate, *rejected, *removed_marker;
static Py_ssize_t off_keys, off_wild, off_items, off_leaf, off_subtree;

static PyObject *slot(PyObject *node, Py_ssize_t offset)
{
    PyObject *v = *(PyObject **)((char *)node + offset);
    return v != NULL ? v : Py_None;
}

static int member_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL)
        return -1;
    int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
    if (ok)
        *offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ member", type->tp_name, name);
        return -1;
    }
    return 0;
}

static PyObject *setup(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *type, *dup, *rej, *marker;
    if (!PyArg_ParseTuple(args, "O!OOO", &PyType_Type, &type, &dup, &rej, &marker))
        return NULL;
    PyTypeObject *t = (PyTypeObject *)type;
    if (member_offset(t, "keys", &off_keys) < 0 || member_offset(t, "wild", &off_wild) < 0 ||
        member_offset(t, "items", &off_items) < 0 || member_offset(t, "leaf", &off_leaf) < 0 ||
        member_offset(t, "subtree", &off_subtree) < 0)
        return NULL;
    Py_XSETREF(node_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(duplicate, Py_NewRef(dup));
    Py_XSETREF(rejected, Py_NewRef(rej));
    Py_XSETREF(removed_marker, Py_NewRef(marker));
    Py_RETURN_NONE;
}

/* _filter_value_py: one value under `node` (None: not allowed here); a new reference to the
 * filtered value or to the marker, NULL on error. */
static PyObject *walk(PyObject *x, PyObject *node, Py_ssize_t *counts)
{
    if (node == Py_None) {
        counts[1]++;
        return Py_NewRef(removed_marker);
    }
    if (!Py_IS_TYPE(node, node_type)) {
        PyErr_SetString(PyExc_TypeError, "not an allowlist node");
        return NULL;
    }
    if (slot(node, off_subtree) == Py_True) {
        counts[0]++;
        return Py_NewRef(x);
    }
    int is_dict = PyDict_CheckExact(x), is_list = !is_dict && PyList_CheckExact(x);
    if (!is_dict && !is_list) { /* a scalar: the common case */
        if (slot(node, off_leaf) == Py_True) {
            counts[0]++;
            return Py_NewRef(x);
        }
        counts[1]++;
        return Py_NewRef(removed_marker);
    }
    if (Py_EnterRecursiveCall(" while filtering JSON"))
        return NULL;
    PyObject *out = NULL;
    if (is_dict) {
        PyObject *keys = slot(node, off_keys), *wild = slot(node, off_wild);
        if (!PyDict_Check(keys)) {
            PyErr_SetString(PyExc_TypeError, "allowlist node without a keys dict");
            goto done;
        }
        out = PyDict_New();
        if (out == NULL)
            goto done;
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(x, &pos, &k, &v)) {
            PyObject *child = PyDict_GetItemWithError(keys, k);
            if (child == NULL) {
                if (PyErr_Occurred())
                    goto fail;
                child = wild;
            }
            Py_INCREF(k);
            Py_INCREF(v);
            PyObject *r = walk(v, child, counts);
            int err = r == NULL || (r != removed_marker && PyDict_SetItem(out, k, r) < 0);
            Py_XDECREF(r);
            Py_DECREF(k);
            Py_DECREF(v);
            if (err)
                goto fail;
        }
        goto done;
    }
    PyObject *items = slot(node, off_items);
    if (items == Py_None) {
        counts[1]++;
        out = Py_NewRef(removed_marker);
        goto done;
    }
    if (!Py_IS_TYPE(items, node_type)) {
        PyErr_SetString(PyExc_TypeError, "not an allowlist node");
        goto done;
    }
    if (slot(items, off_subtree) == Py_True) {
        counts[0] += PyList_GET_SIZE(x);
        out = Py_NewRef(x);
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(x); i++) {
        PyObject *v = Py_NewRef(PyList_GET_ITEM(x, i));
        PyObject *r = walk(v, items, counts);
        int err = r == NULL || (r != removed_marker && PyList_Append(out, r) < 0);
        Py_XDECREF(r);
        Py_DECREF(v);
        if (err)
            goto fail;
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_LeaveRecursiveCall();
    return out;
}

static int add_count(PyObject *list, Py_ssize_t i, Py_ssize_t n)
{
    if (!n)
        return 0;
    PyObject *old = PyList_GET_ITEM(list, i);
    PyObject *delta = PyLong_FromSsize_t(n);
    PyObject *sum = delta != NULL ? PyNumber_Add(old, delta) : NULL;
    Py_XDECREF(delta);
    if (sum == NULL)
        return -1;
    return PyList_SetItem(list, i, sum); /* steals sum */
}

static PyObject *filter_value(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[2]) || PyList_GET_SIZE(args[2]) != 2) {
        PyErr_SetString(PyExc_TypeError, "filter_value(value, node, counts: [kept, removed])");
        return NULL;
    }
    if (node_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_jsonfast.setup() was not called");
        return NULL;
    }
    Py_ssize_t counts[2] = {0, 0};
    PyObject *r = walk(args[0], args[1], counts);
    /* The counts are added even when the walk fails part-way, as the Python walk's are. */
    if (add_count(args[2], 0, counts[0]) < 0 || add_count(args[2], 1, counts[1]) < 0) {
        Py_XDECREF(r);
        return NULL;
    }
    return r;
}

/* _pairs_py: the decoder's object_pairs_hook, a dict, or `duplicate` raised for a repeated key. */
static PyObject *pairs(PyObject *Py_UNUSED(m), PyObject *list)
{
    if (!PyList_CheckExact(list) || duplicate == NULL) {
        PyErr_SetString(PyExc_TypeError, "pairs(list of (key, value)) after setup()");
        return NULL;
    }
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(list, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_TypeError, "pairs: an item is not a (key, value) tuple");
            return NULL;
        }
        if (PyDict_SetItem(out, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    if (PyDict_GET_SIZE(out) != n) {
        Py_DECREF(out);
        PyErr_SetNone(duplicate);
        return NULL;
    }
    return out;
}

/* _float_py: the decoder's parse_float; numbers past 64 characters or out of range are refused. */
static PyObject *parse_float(PyObject *Py_UNUSED(m), PyObject *text)
{
    if (rejected == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_jsonfast.setup() was not called");
        return NULL;
    }
    PyObject *value = PyFloat_FromString(text);
    if (value == NULL)
        return NULL;
    Py_ssize_t len = PyObject_Length(text);
    if (len < 0) {
        Py_DECREF(value);
        return NULL;
    }
    if (len > MAX_FLOAT_TEXT || !isfinite(PyFloat_AS_DOUBLE(value))) {
        Py_DECREF(value);
        PyErr_SetString(rejected, "JSON number out of range");
        return NULL;
    }
    return value;
}


/* ---- filter_whole: parse, filter and write a small body in one pass ----------------------------
 *
 * jsonfilter.filter_whole parses the text with the C decoder (calling the hooks above), walks it,
 * and encodes the result with the C encoder. This does the three in one pass over the UTF-8 bytes,
 * without building the dropped values or any Python object but the keys it looks up. It handles the
 * common, clean case only: for anything unusual (a syntax error, a duplicate key, an escape that
 * decodes to a lone surrogate, a constant such as NaN, a number the hooks would refuse or that is
 * long, deep nesting, invalid UTF-8, a top level filter_whole declines) it returns None, and the
 * Python walks decide, with their refusal and reason. Whatever it does return is, byte for byte and
 * count for count, what filter_whole returns (tests/unit/test_jsonfilter_accel.py).
 */

#define MAX_NEST 200      /* deeper: the Python walks decide */
#define MAX_INT_DIGITS 1000
#define MAX_KEYS 256      /* per object, for the duplicate check */

/* A member's allowlist child, remembered per (node, decoded key) for one document: an array of
 * objects repeats its keys, and decoding each to str and looking it up cost more than the rest of
 * the walk. Borrowed references: the caller's root holds every node for the whole call. */
#define KEY_CACHE 64
#define KEY_CACHE_LEN 32
typedef struct {
    PyObject *node, *child;
    Py_ssize_t len;
    char key[KEY_CACHE_LEN];
} KeyHit;

typedef struct {
    KeyHit *cache;
    const unsigned char *s, *end;
    char *out;
    Py_ssize_t len, cap;
    Py_ssize_t kept, removed;
    int bail, error; /* bail: leave it to Python; error: a Python exception is set */
    char *keybuf;    /* decoded keys of the open objects, for the duplicate check */
    Py_ssize_t keylen, keycap;
} J;

static int j_grow(J *j, Py_ssize_t extra)
{
    Py_ssize_t need = j->len + extra, cap = j->cap ? j->cap : 1024;
    while (cap < need)
        cap *= 2;
    char *p = PyMem_Realloc(j->out, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        j->error = 1;
        return -1;
    }
    j->out = p;
    j->cap = cap;
    return 0;
}

static inline int j_put(J *j, const char *s, Py_ssize_t n, int emit)
{
    if (!emit || n == 0)
        return 0;
    if (j->cap - j->len < n && j_grow(j, n) < 0)
        return -1;
    memcpy(j->out + j->len, s, (size_t)n);
    j->len += n;
    return 0;
}

static inline void j_ws(J *j)
{
    while (j->s < j->end && (*j->s == ' ' || *j->s == '\t' || *j->s == '\n' || *j->s == '\r'))
        j->s++;
}

static inline int j_bail(J *j)
{
    j->bail = 1;
    return -1;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_hex4(J *j, unsigned int *cp)
{
    if (j->end - j->s < 4)
        return j_bail(j);
    unsigned int v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->s[i]);
        if (h < 0)
            return j_bail(j);
        v = v * 16 + (unsigned int)h;
    }
    j->s += 4;
    *cp = v;
    return 0;
}

/* Length of a valid UTF-8 sequence at p (non-ASCII lead byte), or 0. Surrogates are invalid. */
static int utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    int n;
    unsigned int cp;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (end - p < n)
        return 0;
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

static int key_put(J *j, const void *p, Py_ssize_t n)
{
    if (j->keycap - j->keylen < n) {
        Py_ssize_t cap = j->keycap ? j->keycap : 256;
        while (cap - j->keylen < n)
            cap *= 2;
        char *q = PyMem_Realloc(j->keybuf, (size_t)cap);
        if (q == NULL) {
            PyErr_NoMemory();
            j->error = 1;
            return -1;
        }
        j->keybuf = q;
        j->keycap = cap;
    }
    memcpy(j->keybuf + j->keylen, p, (size_t)n);
    j->keylen += n;
    return 0;
}

static int put_utf8(char *buf, unsigned int cp)
{
    if (cp < 0x80) {
        buf[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        buf[0] = (char)(0xc0 | (cp >> 6));
        buf[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        buf[0] = (char)(0xe0 | (cp >> 12));
        buf[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        buf[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    buf[0] = (char)(0xf0 | (cp >> 18));
    buf[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    buf[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    buf[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* One code point of a string's value, as the encoder writes it (ensure_ascii=False). */
static int put_char(J *j, unsigned int cp, int emit)
{
    char buf[8];
    int n;
    switch (cp) {
    case '"': memcpy(buf, "\\\"", 2); n = 2; break;
    case '\\': memcpy(buf, "\\\\", 2); n = 2; break;
    case '\n': memcpy(buf, "\\n", 2); n = 2; break;
    case '\r': memcpy(buf, "\\r", 2); n = 2; break;
    case '\t': memcpy(buf, "\\t", 2); n = 2; break;
    case '\b': memcpy(buf, "\\b", 2); n = 2; break;
    case '\f': memcpy(buf, "\\f", 2); n = 2; break;
    default:
        if (cp < 0x20) {
            static const char hex[] = "0123456789abcdef";
            memcpy(buf, "\\u00", 4);
            buf[4] = hex[cp >> 4];
            buf[5] = hex[cp & 15];
            n = 6;
        } else {
            n = put_utf8(buf, cp);
        }
    }
    return j_put(j, buf, n, emit);
}

/* A string at j->s (just past its opening quote): written re-escaped when `emit`; its decoded
 * UTF-8 appended to j->keybuf when `key` (the caller reads it from *kstart). */
static int j_string(J *j, int emit, int key)
{
    if (j_put(j, "\"", 1, emit) < 0)
        return -1;
    for (;;) {
        const unsigned char *run = j->s;
        while (j->s < j->end && *j->s != '"' && *j->s != '\\' && *j->s >= 0x20 && *j->s < 0x80)
            j->s++;
        Py_ssize_t n = j->s - run;
        if (j_put(j, (const char *)run, n, emit) < 0)
            return -1;
        if (key && n && key_put(j, run, n) < 0)
            return -1;
        if (j->s >= j->end)
            return j_bail(j);
        unsigned char c = *j->s;
        unsigned int cp;
        if (c == '"') {
            j->s++;
            return j_put(j, "\"", 1, emit);
        }
        if (c < 0x20)
            return j_bail(j); /* strict: a raw control character */
        if (c >= 0x80) {
            int len = utf8_len(j->s, j->end);
            if (!len)
                return j_bail(j);
            if (j_put(j, (const char *)j->s, len, emit) < 0)
                return -1;
            if (key && key_put(j, j->s, len) < 0)
                return -1;
            j->s += len;
            continue;
        }
        /* an escape */
        j->s++;
        if (j->s >= j->end)
            return j_bail(j);
        c = *j->s++;
        switch (c) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (read_hex4(j, &cp) < 0)
                return -1;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return j_bail(j); /* a lone low surrogate */
            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned int lo;
                if (j->end - j->s < 6 || j->s[0] != '\\' || j->s[1] != 'u')
                    return j_bail(j);
                j->s += 2;
                if (read_hex4(j, &lo) < 0)
                    return -1;
                if (lo < 0xdc00 || lo > 0xdfff)
                    return j_bail(j);
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            break;
        default:
            return j_bail(j);
        }
        if (put_char(j, cp, emit) < 0)
            return -1;
        if (key) {
            char buf[4];
            if (key_put(j, buf, put_utf8(buf, cp)) < 0)
                return -1;
        }
    }
}

/* A number, written as the encoder writes what the decoder and _float make of it. */
/* Whether repr(float(text)) is `text` itself, for a number of the form -?INT.FRAC (no exponent):
 * then the encoder's output is the input, and the decimal-binary-decimal round trip (~0.5 us) can
 * be skipped. True when the text has at most 15 significant digits (DBL_DIG: distinct decimals of
 * 15 digits are distinct doubles, so none shorter maps to the same value and repr gives these
 * digits back), no trailing zero after the point but the one of "N.0", and a magnitude that repr
 * writes without an exponent (1e-4 <= |x| < 1e15, or zero). Anything else takes the round trip. */
static int float_is_canonical(const unsigned char *int_s, Py_ssize_t int_n, const unsigned char *frac_s,
                              Py_ssize_t frac_n)
{
    if (frac_n > 1 && frac_s[frac_n - 1] == '0')
        return 0; /* 1.50 is written 1.5 */
    int frac_zero = frac_n == 1 && frac_s[0] == '0';
    Py_ssize_t sig;
    if (int_n == 1 && int_s[0] == '0') {
        if (frac_zero)
            return 1; /* 0.0 and -0.0 */
        Py_ssize_t z = 0;
        while (z < frac_n && frac_s[z] == '0')
            z++;
        if (z > 3)
            return 0; /* 0.00001 is written 1e-05 */
        sig = frac_n - z;
    } else {
        sig = int_n + (frac_zero ? 0 : frac_n);
    }
    return sig <= 15 && int_n <= 15;
}

static int j_number(J *j, int emit)
{
    const unsigned char *start = j->s;
    int is_float = 0, has_exp = 0;
    if (j->s < j->end && *j->s == '-')
        j->s++;
    if (j->s >= j->end)
        return j_bail(j);
    const unsigned char *int_s = j->s, *frac_s = NULL;
    if (*j->s == '0') {
        j->s++;
    } else if (*j->s >= '1' && *j->s <= '9') {
        while (j->s < j->end && *j->s >= '0' && *j->s <= '9')
            j->s++;
    } else {
        return j_bail(j);
    }
    Py_ssize_t int_n = j->s - int_s, frac_n = 0;
    if (j->s < j->end && *j->s == '.') {
        is_float = 1;
        j->s++;
        const unsigned char *d = j->s;
        while (j->s < j->end && *j->s >= '0' && *j->s <= '9')
            j->s++;
        if (j->s == d)
            return j_bail(j);
        frac_s = d;
        frac_n = j->s - d;
    }
    if (j->s < j->end && (*j->s == 'e' || *j->s == 'E')) {
        is_float = has_exp = 1;
        j->s++;
        if (j->s < j->end && (*j->s == '+' || *j->s == '-'))
            j->s++;
        const unsigned char *d = j->s;
        while (j->s < j->end && *j->s >= '0' && *j->s <= '9')
            j->s++;
        if (j->s == d)
            return j_bail(j);
    }
    Py_ssize_t n = j->s - start;
    if (!is_float) {
        if (n > MAX_INT_DIGITS)
            return j_bail(j);
        if (n == 2 && start[0] == '-' && start[1] == '0')
            return j_put(j, "0", 1, emit);
        return j_put(j, (const char *)start, n, emit);
    }
    if (n > MAX_FLOAT_TEXT)
        return j_bail(j); /* _float refuses it */
    if (!has_exp && float_is_canonical(int_s, int_n, frac_s, frac_n))
        return j_put(j, (const char *)start, n, emit);
    char text[MAX_FLOAT_TEXT + 1];
    memcpy(text, start, (size_t)n);
    text[n] = '\0';
    char *endp;
    double v = PyOS_string_to_double(text, &endp, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return j_bail(j);
    }
    if (*endp != '\0' || !isfinite(v))
        return j_bail(j);
    if (!emit)
        return 0;
    char *repr = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (repr == NULL) {
        j->error = 1;
        return -1;
    }
    int r = j_put(j, repr, (Py_ssize_t)strlen(repr), 1);
    PyMem_Free(repr);
    return r;
}

static int j_literal(J *j, const char *word, Py_ssize_t n, int emit)
{
    if (j->end - j->s < n || memcmp(j->s, word, (size_t)n) != 0)
        return j_bail(j);
    j->s += n;
    return j_put(j, word, n, emit);
}

static int j_value(J *j, PyObject *node, int emit, int depth, int whole);

/* Whether a member or element under `node` whose value starts with `c` is kept: known before the
 * value is read, as _filter_value decides it. */
static inline int kept_here(PyObject *node, unsigned char c)
{
    if (slot(node, off_subtree) == Py_True || c == '{')
        return 1;
    if (c == '[')
        return slot(node, off_items) != Py_None;
    return slot(node, off_leaf) == Py_True;
}

/* After a member or element: 1 past a ',' (more follow), 0 past `close`, -1 (bailed) otherwise. */
static int j_next(J *j, unsigned char close)
{
    j_ws(j);
    if (j->s >= j->end)
        return j_bail(j);
    if (*j->s == ',') {
        j->s++;
        j_ws(j);
        return 1;
    }
    if (*j->s != close)
        return j_bail(j);
    j->s++;
    return 0;
}

/* The child of `node` for a member named `k` (decoded UTF-8): its node, `wild`, or None (drop);
 * NULL with j->bail or j->error set. As _filter_value looks it up: keys, then the wildcard. */
static PyObject *key_child(J *j, PyObject *node, PyObject *keys, PyObject *wild, const char *k, Py_ssize_t n)
{
    KeyHit *hit = NULL;
    if (n <= KEY_CACHE_LEN) {
        size_t h = (size_t)node >> 4;
        for (Py_ssize_t i = 0; i < n; i++)
            h = h * 31 + (unsigned char)k[i];
        hit = &j->cache[h % KEY_CACHE];
        if (hit->node == node && hit->len == n && memcmp(hit->key, k, (size_t)n) == 0)
            return hit->child;
    }
    PyObject *key = PyUnicode_DecodeUTF8(k, n, "strict");
    if (key == NULL) {
        PyErr_Clear();
        j_bail(j);
        return NULL;
    }
    PyObject *child = PyDict_GetItemWithError(keys, key);
    Py_DECREF(key);
    if (child == NULL) {
        if (PyErr_Occurred()) {
            j->error = 1;
            return NULL;
        }
        child = wild;
    }
    if (hit != NULL) {
        hit->node = node;
        hit->child = child;
        hit->len = n;
        memcpy(hit->key, k, (size_t)n);
    }
    return child;
}

/* An object under `node` (NULL with !emit: parse only; `whole`: every member kept as is). */
static int j_object(J *j, PyObject *node, int emit, int depth, int whole)
{
    PyObject *keys = NULL, *wild = Py_None;
    if (emit && !whole) {
        keys = slot(node, off_keys);
        wild = slot(node, off_wild);
        if (!PyDict_Check(keys))
            return j_bail(j);
    }
    Py_ssize_t keys_at = j->keylen, offsets[MAX_KEYS + 1];
    int nkeys = 0, first = 1;
    j->s++; /* { */
    if (j_put(j, "{", 1, emit) < 0)
        return -1;
    j_ws(j);
    if (j->s < j->end && *j->s == '}') {
        j->s++;
        return j_put(j, "}", 1, emit);
    }
    for (;;) {
        if (j->s >= j->end || *j->s != '"' || nkeys >= MAX_KEYS)
            return j_bail(j);
        j->s++;
        Py_ssize_t kstart = j->keylen;
        const unsigned char *raw = j->s;
        if (j_string(j, 0, 1) < 0)
            return -1;
        Py_ssize_t klen = j->keylen - kstart;
        for (int i = 0; i < nkeys; i++) { /* duplicate keys: the Python walks refuse them */
            Py_ssize_t a = offsets[i], b = offsets[i + 1];
            if (b - a == klen && memcmp(j->keybuf + a, j->keybuf + kstart, (size_t)klen) == 0)
                return j_bail(j);
        }
        offsets[nkeys++] = kstart;
        offsets[nkeys] = j->keylen;
        j_ws(j);
        if (j->s >= j->end || *j->s != ':')
            return j_bail(j);
        j->s++;
        j_ws(j);
        if (j->s >= j->end)
            return j_bail(j);
        /* Whether the member is kept is known before its value is read (as _filter_value decides). */
        PyObject *child = NULL;
        int keep = 0;
        if (emit) {
            if (whole) {
                keep = 1;
            } else {
                child = key_child(j, node, keys, wild, j->keybuf + kstart, klen);
                if (child == NULL)
                    return -1;
                if (child == Py_None)
                    child = NULL;
                else if (!Py_IS_TYPE(child, node_type))
                    return j_bail(j);
                keep = child != NULL && kept_here(child, *j->s);
            }
        }
        if (keep) {
            if (!first && j_put(j, ",", 1, 1) < 0)
                return -1;
            /* the key as the encoder writes it: its raw text read again, written re-escaped */
            const unsigned char *save = j->s;
            j->s = raw;
            if (j_string(j, 1, 0) < 0)
                return -1;
            j->s = save;
            if (j_put(j, ":", 1, 1) < 0)
                return -1;
            first = 0;
        } else if (emit && !whole) {
            j->removed++; /* dropped whole, counted once, as _filter_value counts it */
        }
        if (j_value(j, keep ? child : NULL, keep, depth + 1, whole) < 0)
            return -1;
        int more = j_next(j, '}');
        if (more < 0)
            return -1;
        if (more)
            continue;
        j->keylen = keys_at;
        return j_put(j, "}", 1, emit);
    }
}

/* An array; `items` the node for its elements (when emitting and not whole). */
static int j_array(J *j, PyObject *items, int emit, int depth, int whole, Py_ssize_t *count)
{
    int first = 1;
    j->s++; /* [ */
    if (j_put(j, "[", 1, emit) < 0)
        return -1;
    j_ws(j);
    if (j->s < j->end && *j->s == ']') {
        j->s++;
        return j_put(j, "]", 1, emit);
    }
    for (;;) {
        if (j->s >= j->end)
            return j_bail(j);
        int keep = emit && (whole || kept_here(items, *j->s));
        if (keep && !first && j_put(j, ",", 1, 1) < 0)
            return -1;
        if (keep)
            first = 0;
        else if (emit && !whole)
            j->removed++;
        if (j_value(j, keep ? items : NULL, keep, depth + 1, whole) < 0)
            return -1;
        (*count)++;
        int more = j_next(j, ']');
        if (more < 0)
            return -1;
        if (!more)
            return j_put(j, "]", 1, emit);
    }
}

/* One value. emit=0: parse and check only (a dropped value: the caller counted it). whole=1:
 * inside a value kept whole (written as the encoder writes it, nothing counted). Otherwise `node`
 * is the value's allowlist node and the caller already knows the value is kept. */
static int j_value(J *j, PyObject *node, int emit, int depth, int whole)
{
    if (depth > MAX_NEST)
        return j_bail(j);
    if (j->s >= j->end)
        return j_bail(j);
    unsigned char c = *j->s;
    if (emit && !whole) {
        if (slot(node, off_subtree) == Py_True) {
            j->kept++;
            return j_value(j, NULL, 1, depth, 1);
        }
    }
    switch (c) {
    case '{':
        if (!emit && !whole)
            return j_object(j, NULL, 0, depth, 0);
        return j_object(j, node, emit, depth, whole);
    case '[': {
        Py_ssize_t count = 0;
        if (!emit || whole)
            return j_array(j, NULL, emit, depth, whole, &count);
        PyObject *items = slot(node, off_items);
        if (!Py_IS_TYPE(items, node_type))
            return j_bail(j);
        if (slot(items, off_subtree) == Py_True) {
            if (j_array(j, NULL, 1, depth, 1, &count) < 0)
                return -1;
            j->kept += count;
            return 0;
        }
        return j_array(j, items, 1, depth, 0, &count);
    }
    case '"':
        j->s++;
        if (emit && !whole)
            j->kept++;
        return j_string(j, emit, 0);
    case 't':
        if (emit && !whole)
            j->kept++;
        return j_literal(j, "true", 4, emit);
    case 'f':
        if (emit && !whole)
            j->kept++;
        return j_literal(j, "false", 5, emit);
    case 'n':
        if (emit && !whole)
            j->kept++;
        return j_literal(j, "null", 4, emit);
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            if (emit && !whole)
                j->kept++;
            return j_number(j, emit);
        }
        return j_bail(j); /* NaN, Infinity, anything else */
    }
}

/* filter_whole(body, root): (bytes, kept, removed), or None when the Python walks must decide. */
static PyObject *filter_whole(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "filter_whole(body, root)");
        return NULL;
    }
    if (node_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_jsonfast.setup() was not called");
        return NULL;
    }
    PyObject *root = args[1];
    if (!Py_IS_TYPE(root, node_type)) {
        PyErr_SetString(PyExc_TypeError, "filter_whole: root is not an allowlist node");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    KeyHit cache[KEY_CACHE];
    for (int i = 0; i < KEY_CACHE; i++)
        cache[i].node = NULL;
    J j = {0};
    j.cache = cache;
    j.s = view.buf;
    j.end = j.s + view.len;
    j_ws(&j);
    int ok = 0;
    if (j.s < j.end) {
        unsigned char c = *j.s;
        if (slot(root, off_subtree) == Py_True) {
            j.kept = 1;
            ok = j_value(&j, NULL, 1, 0, 1) == 0;
        } else if (c == '{' || (c == '[' && slot(root, off_items) != Py_None)) {
            ok = j_value(&j, root, 1, 0, 0) == 0;
        }
    }
    j_ws(&j);
    PyObject *result = NULL;
    if (j.error) {
        result = NULL; /* the exception is set */
    } else if (!ok || j.bail || j.s != j.end) {
        result = Py_NewRef(Py_None);
    } else {
        result = Py_BuildValue("(y#nn)", j.out ? j.out : "", j.len, j.kept, j.removed);
    }
    PyMem_Free(j.out);
    PyMem_Free(j.keybuf);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"filter_whole", (PyCFunction)(void (*)(void))filter_whole, METH_FASTCALL,
     "filter_whole(body, root): jsonfilter.filter_whole in one pass over the bytes, or None."},
    {"setup", setup, METH_VARARGS, "setup(Node, duplicate_exc, rejected_exc, removed_marker)"},
    {"filter_value", (PyCFunction)(void (*)(void))filter_value, METH_FASTCALL,
     "filter_value(value, node, counts): the filtered value or the removed marker; counts updated."},
    {"pairs", pairs, METH_O, "The decoder's object_pairs_hook: a dict, duplicate keys refused."},
    {"parse_float", parse_float, METH_O, "The decoder's parse_float: long or non-finite numbers refused."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway.filter._jsonfast", "The JSON metadata filter's per-value work in C.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jsonfast(void) { return PyModule_Create(&module); }
