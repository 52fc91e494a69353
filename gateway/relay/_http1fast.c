/* A target's response head, parsed in one pass: the clean case of gateway/relay/http1.py.
 *
 * parse_head(head) returns what http1.parse_response_head would put in its ResponseHead (version,
 * status, reason, fields, lower-cased names, Content-Length, chunked) for a head it accepts, and
 * None for anything else: a head this code does not take is parsed again by the Python code, which
 * gives the refusal and its reason. So this code may be stricter than the Python, never laxer
 * (tests/unit/test_http1_accel.py holds it to that on random, hostile and h11-generated heads).
 *
 * Taken: "HTTP/1.0" or "HTTP/1.1", a space, three digits (100-999 but 101), then either the line's
 * end or a space and a reason of bytes other than NUL, CR, LF, VT and FF; then header lines, each
 * a token, a colon, optional spaces or tabs, a value of bytes other than NUL, CR, LF, VT and FF
 * (spaces and tabs around it dropped), and CRLF; then the blank line, which must end the bytes.
 * At most one Content-Length, of 1 to 18 digits; at most one Transfer-Encoding, "chunked" in any
 * case (given back lower-cased, as h11 gives it); not both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static unsigned char is_tchar[256];

static int ieq(const unsigned char *s, Py_ssize_t n, const char *lower)
{
    Py_ssize_t m = (Py_ssize_t)strlen(lower);
    if (n != m)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

static int bad_in_line(unsigned char c)
{
    return c == 0 || c == '\n' || c == '\v' || c == '\f';
}

static PyObject *lower_bytes(const unsigned char *s, Py_ssize_t n)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        return NULL;
    char *d = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        d[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    return out;
}

/* 1: a field was added; -1: a Python error. */
static int add_field(PyObject *fields, PyObject *names, const unsigned char *name, Py_ssize_t name_n,
                     const unsigned char *value, Py_ssize_t value_n, int te)
{
    PyObject *k = PyBytes_FromStringAndSize((const char *)name, name_n);
    PyObject *v = te ? PyBytes_FromStringAndSize("chunked", 7)
                     : PyBytes_FromStringAndSize((const char *)value, value_n);
    PyObject *lower = lower_bytes(name, name_n);
    PyObject *pair = (k && v) ? PyTuple_Pack(2, k, v) : NULL;
    int r = -1;
    if (pair != NULL && lower != NULL && PyList_Append(fields, pair) == 0 && PyList_Append(names, lower) == 0)
        r = 1;
    Py_XDECREF(k);
    Py_XDECREF(v);
    Py_XDECREF(lower);
    Py_XDECREF(pair);
    return r;
}

static PyObject *parse_head(PyObject *Py_UNUSED(m), PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "parse_head(head): head must be bytes");
        return NULL;
    }
    const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    /* The shortest head taken: "HTTP/1.1 200\r\n\r\n". The blank line ends it, so every scan
     * below stops at a CR inside the bytes. */
    if (n < 16 || memcmp(h + n - 4, "\r\n\r\n", 4) != 0 || memcmp(h, "HTTP/1.", 7) != 0)
        Py_RETURN_NONE;
    if ((h[7] != '0' && h[7] != '1') || h[8] != ' ')
        Py_RETURN_NONE;
    for (int i = 9; i < 12; i++)
        if (h[i] < '0' || h[i] > '9')
            Py_RETURN_NONE;
    int status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    if (status < 100 || status == 101)
        Py_RETURN_NONE;
    const unsigned char *p = h + 12, *reason = p, *reason_end = p;
    if (*p == ' ') {
        reason = ++p;
        while (*p != '\r') {
            if (bad_in_line(*p))
                Py_RETURN_NONE;
            p++;
        }
        reason_end = p;
    }
    if (p[0] != '\r' || p[1] != '\n')
        Py_RETURN_NONE;
    p += 2;

    const unsigned char *blank = h + n - 2;
    PyObject *fields = PyList_New(0), *names = PyList_New(0);
    if (fields == NULL || names == NULL)
        goto error;
    long long length = -1;
    int chunked = 0;
    while (p < blank) {
        const unsigned char *name = p;
        while (is_tchar[*p])
            p++;
        if (p == name || *p != ':')
            goto not_taken;
        Py_ssize_t name_n = p - name;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        const unsigned char *value = p;
        while (*p != '\r') {
            if (bad_in_line(*p))
                goto not_taken;
            p++;
        }
        if (p[1] != '\n')
            goto not_taken;
        const unsigned char *value_end = p;
        while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t'))
            value_end--;
        Py_ssize_t value_n = value_end - value;
        p += 2;
        int te = 0;
        if (ieq(name, name_n, "content-length")) {
            if (length >= 0 || value_n < 1 || value_n > 18)
                goto not_taken;
            long long v = 0;
            for (Py_ssize_t i = 0; i < value_n; i++) {
                if (value[i] < '0' || value[i] > '9')
                    goto not_taken;
                v = v * 10 + (value[i] - '0');
            }
            length = v;
        } else if (ieq(name, name_n, "transfer-encoding")) {
            if (chunked || !ieq(value, value_n, "chunked"))
                goto not_taken;
            chunked = te = 1;
        }
        int r = add_field(fields, names, name, name_n, value, value_n, te);
        if (r < 0)
            goto error;
    }
    if (p != blank || (length >= 0 && chunked))
        goto not_taken;
    PyObject *len_obj = length >= 0 ? PyLong_FromLongLong(length) : Py_NewRef(Py_None);
    if (len_obj == NULL)
        goto error;
    PyObject *out = Py_BuildValue("(y#iy#OONO)", (const char *)h + 5, (Py_ssize_t)3, status,
                                  (const char *)reason, (Py_ssize_t)(reason_end - reason), fields, names,
                                  len_obj, chunked ? Py_True : Py_False);
    Py_DECREF(fields);
    Py_DECREF(names);
    return out;
not_taken:
    Py_DECREF(fields);
    Py_DECREF(names);
    Py_RETURN_NONE;
error:
    Py_XDECREF(fields);
    Py_XDECREF(names);
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse_head", parse_head, METH_O,
     "parse_head(head) -> (version, status, reason, fields, names, length, chunked), or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_http1fast", NULL, 0, methods};

PyMODINIT_FUNC PyInit__http1fast(void)
{
    const char *extra = "-!#$%&'*+.^_`|~";
    for (int c = '0'; c <= '9'; c++)
        is_tchar[c] = 1;
    for (int c = 'a'; c <= 'z'; c++)
        is_tchar[c] = is_tchar[c - 32] = 1;
    for (const char *e = extra; *e; e++)
        is_tchar[(unsigned char)*e] = 1;
    return PyModule_Create(&module);
}
