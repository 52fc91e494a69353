/* STUB of the C accelerator of the XML (SOAP) metadata filter (issue 14).
 *
 * The lead replaces this file with the real filter; it exists so that the build around it
 * (scripts/build-accel.sh, `make venv`, the image's mkosi.build.chroot) is exercised end to end:
 * a valid CPython module that links libexpat, as the real one does. gateway/filter/xmlfilter.py
 * stays the reference and the fallback when this module cannot be imported.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <expat.h>

static PyObject *
xmlfast_version(PyObject *self, PyObject *Py_UNUSED(args))
{
    return PyLong_FromLong(1);
}

/* Calls into libexpat, so a module that imports proves the -lexpat link resolved. */
static PyObject *
xmlfast_expat_version(PyObject *self, PyObject *Py_UNUSED(args))
{
    return PyUnicode_FromString(XML_ExpatVersion());
}

static PyMethodDef xmlfast_methods[] = {
    {"version", xmlfast_version, METH_NOARGS, "The accelerator's interface version."},
    {"expat_version", xmlfast_expat_version, METH_NOARGS, "The libexpat version linked in."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef xmlfast_module = {
    PyModuleDef_HEAD_INIT, "gateway.filter._xmlfast", "Stub of the XML filter accelerator.", 0,
    xmlfast_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__xmlfast(void)
{
    return PyModuleDef_Init(&xmlfast_module);
}
