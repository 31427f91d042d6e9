/* transcoder._native: C twins of measured hot loops.
 *
 * FrameWalker follows zstd frame structure from block headers only, to tell a
 * complete stream from a truncated one (libzstd's streaming reader does not).
 * It is the C twin of transcoder.codecs.zstd.FrameWalker and must behave
 * exactly like it: same states, same accepted inputs, same error messages.
 * The Python twin costs a few microseconds per block; a stream of tiny blocks
 * (3-byte headers with empty payloads) would make it the slowest stage of a
 * decode by orders of magnitude. Here a block costs a few nanoseconds.
 *
 * Block payloads are skipped, never copied; at most MAX_HEADER bytes are
 * kept between feeds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum state { ST_MAGIC, ST_FHD, ST_HEADER, ST_SKIPPABLE, ST_BLOCK };

/* Largest piece gathered at once: a frame header after its descriptor byte
 * (window 1 + dictionary id 4 + content size 8 bytes). */
#define MAX_HEADER 13

typedef struct {
    PyObject_HEAD
    PyObject *name;   /* str: names the blob in error messages */
    PyObject *error;  /* exception class raised on bad input */
    enum state state;
    uint8_t buf[MAX_HEADER]; /* header bytes gathered across feeds */
    Py_ssize_t have;
    uint64_t skip;    /* payload bytes still to pass over */
    Py_ssize_t header_len;
    int checksum;
} Walker;

static const uint8_t ZSTD_MAGIC[4] = {0x28, 0xb5, 0x2f, 0xfd};

static Py_ssize_t
need(const Walker *w)
{
    switch (w->state) {
    case ST_MAGIC: return 4;
    case ST_FHD: return 1;
    case ST_HEADER: return w->header_len;
    case ST_SKIPPABLE: return 4;
    default: return 3;
    }
}

static uint32_t
le(const uint8_t *p, int n)
{
    uint32_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Returns NULL when the header is fine, else the error text. */
static const char *
step(Walker *w)
{
    static const int fcs_sizes[4] = {0, 2, 4, 8};
    static const int dict_sizes[4] = {0, 1, 2, 4};
    const uint8_t *b = w->buf;

    w->have = 0;
    switch (w->state) {
    case ST_MAGIC:
        if (memcmp(b, ZSTD_MAGIC, 4) == 0)
            w->state = ST_FHD;
        else if (b[1] == 0x2a && b[2] == 0x4d && b[3] == 0x18 && (b[0] & 0xf0) == 0x50)
            w->state = ST_SKIPPABLE;
        else
            return "garbage after zstd frame";
        break;
    case ST_FHD: {
        int fcs_flag = b[0] >> 6, single = (b[0] >> 5) & 1, dict_flag = b[0] & 3;
        int fcs = (fcs_flag == 0 && single) ? 1 : fcs_sizes[fcs_flag];
        w->checksum = (b[0] & 4) != 0;
        w->header_len = (single ? 0 : 1) + dict_sizes[dict_flag] + fcs;
        w->state = w->header_len ? ST_HEADER : ST_BLOCK;
        break;
    }
    case ST_HEADER:
        w->state = ST_BLOCK;
        break;
    case ST_SKIPPABLE:
        w->skip = le(b, 4);
        w->state = ST_MAGIC;
        break;
    case ST_BLOCK: {
        uint32_t h = le(b, 3);
        uint32_t last = h & 1, kind = (h >> 1) & 3, size = h >> 3;
        if (kind == 3)
            return "corrupt zstd block header";
        w->skip = kind == 1 ? 1 : size;
        if (last) {
            w->skip += w->checksum ? 4 : 0;
            w->state = ST_MAGIC;
        }
        break;
    }
    }
    return NULL;
}

static PyObject *
fail(Walker *w, const char *what)
{
    PyObject *msg = PyUnicode_FromFormat("%U: %s", w->name, what);
    if (msg != NULL) {
        PyErr_SetObject(w->error, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

static int
ready(Walker *w)
{
    if (w->name == NULL || w->error == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FrameWalker used before __init__");
        return 0;
    }
    return 1;
}

static PyObject *
walker_feed(Walker *w, PyObject *arg)
{
    Py_buffer view;
    if (!ready(w))
        return NULL;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *p = view.buf, *end = p + view.len;
    const char *err = NULL;
    while (p < end && err == NULL) {
        if (w->skip) {
            uint64_t left = (uint64_t)(end - p);
            uint64_t n = w->skip < left ? w->skip : left;
            w->skip -= n;
            p += n;
            continue;
        }
        Py_ssize_t take = need(w) - w->have;
        if (take > end - p)
            take = end - p;
        memcpy(w->buf + w->have, p, (size_t)take);
        w->have += take;
        p += take;
        if (w->have == need(w))
            err = step(w);
    }
    PyBuffer_Release(&view);
    if (err != NULL)
        return fail(w, err);
    Py_RETURN_NONE;
}

static PyObject *
walker_finish(Walker *w, PyObject *Py_UNUSED(ignored))
{
    if (!ready(w))
        return NULL;
    if (w->state != ST_MAGIC || w->have || w->skip)
        return fail(w, "truncated zstd stream");
    Py_RETURN_NONE;
}

static int
walker_init(Walker *w, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "error", NULL};
    PyObject *name, *error;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UO:FrameWalker", kwlist, &name, &error))
        return -1;
    if (!PyExceptionClass_Check(error)) {
        PyErr_SetString(PyExc_TypeError, "FrameWalker: error must be an exception class");
        return -1;
    }
    Py_INCREF(name);
    Py_XSETREF(w->name, name);
    Py_INCREF(error);
    Py_XSETREF(w->error, error);
    w->state = ST_MAGIC;
    w->have = 0;
    w->skip = 0;
    w->header_len = 0;
    w->checksum = 0;
    return 0;
}

static void
walker_dealloc(Walker *w)
{
    Py_XDECREF(w->name);
    Py_XDECREF(w->error);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef walker_methods[] = {
    {"feed", (PyCFunction)walker_feed, METH_O, "Walk the block headers in the next bytes of the stream."},
    {"finish", (PyCFunction)walker_finish, METH_NOARGS, "Raise unless the stream ended at a frame boundary."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "transcoder._native.FrameWalker",
    .tp_basicsize = sizeof(Walker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FrameWalker(name, error): zstd frame structure from block headers.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)walker_init,
    .tp_dealloc = (destructor)walker_dealloc,
    .tp_methods = walker_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_doc = "C twins of transcoder's measured hot loops.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    if (PyType_Ready(&WalkerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WalkerType);
    if (PyModule_AddObject(m, "FrameWalker", (PyObject *)&WalkerType) < 0) {
        Py_DECREF(&WalkerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
