/* mallopt(3) for gwcore/memtune.py: glibc's mmap and trim thresholds. A C call rather than
 * ctypes, whose import makes a libffi closure that MemoryDenyWriteExecute= (gateway.service)
 * may refuse. Built only where glibc is the C library (M_MMAP_THRESHOLD is glibc's). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <malloc.h>

static PyObject *set_thresholds(PyObject *Py_UNUSED(m), PyObject *args)
{
    int mmap_threshold, trim_threshold;
    if (!PyArg_ParseTuple(args, "ii", &mmap_threshold, &trim_threshold))
        return NULL;
    int ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 && mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1;
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"set_thresholds", set_thresholds, METH_VARARGS,
     "set_thresholds(mmap_threshold, trim_threshold) -> whether glibc took both"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_memtune", NULL, 0, methods};

PyMODINIT_FUNC PyInit__memtune(void)
{
    return PyModule_Create(&module);
}
