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

static PyMethodDef methods[] = {
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
