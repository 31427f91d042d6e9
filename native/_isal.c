/* transcoder._isal: gzip inflated by ISA-L straight into the pipeline's frames.
 *
 * The C twin of transcoder.codecs.gzip.GzipFrames; both must behave alike:
 * same inputs accepted, same frames, same error messages. The Python twin
 * goes through python-isal, which hands back a new bytes object per call
 * (assembled from blocks, so copied once) that the pipeline then copies
 * again into its frame. Here ISA-L writes into the frame itself: a bytes
 * object made uninitialised, filled, and only then handed out, so nothing
 * else can see it change. The GIL is released while ISA-L runs.
 *
 * The stream may hold several gzip members back to back (pigz, eStargz,
 * cat a.gz b.gz); anything after the last member that is not another member
 * is an error. Output per call is bounded by one frame, so a small input that
 * inflates enormously is stopped by the caller's size bound frame by frame.
 *
 * One object serves one stream on one thread at a time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <isa-l/igzip_lib.h>
#include <stdint.h>
#include <string.h>

enum phase { IN_MEMBER, BETWEEN };

typedef struct {
    PyObject_HEAD
    PyObject *name;          /* str: names the blob in error messages */
    PyObject *error;         /* exception class raised on bad input */
    struct inflate_state *zst;
    enum phase phase;
    Py_ssize_t members;      /* complete members so far */
    Py_ssize_t frame_size;
    PyObject *frame;         /* bytes being filled, not yet handed out; NULL if none */
    Py_ssize_t filled;
    PyObject *input;         /* owner of the input being consumed; NULL if none */
    Py_buffer in;
    Py_ssize_t pos;          /* next unread byte of in */
    int starved;             /* ISA-L stopped for want of input */
} Frames;

static void
reset_member(Frames *f)
{
    isal_inflate_init(f->zst);
    f->zst->crc_flag = ISAL_GZIP;
    f->phase = IN_MEMBER;
}

static void
drop_input(Frames *f)
{
    if (f->input != NULL) {
        PyBuffer_Release(&f->in);
        Py_CLEAR(f->input);
    }
    f->pos = 0;
}

/* Takes a new reference to obj as the input, from its first byte. */
static int
take_input(Frames *f, PyObject *obj)
{
    drop_input(f);
    if (PyObject_GetBuffer(obj, &f->in, PyBUF_SIMPLE) < 0)
        return -1;
    Py_INCREF(obj);
    f->input = obj;
    f->pos = 0;
    return 0;
}

static Py_ssize_t
avail(const Frames *f)
{
    return f->input == NULL ? 0 : f->in.len - f->pos;
}

static const char *
inflate_message(int err)
{
    /* The wording python-isal uses, so both twins name a cause alike. */
    switch (err) {
    case ISAL_END_INPUT: return "End of input reached";
    case ISAL_NAME_OVERFLOW: return "End of gzip name buffer reached";
    case ISAL_COMMENT_OVERFLOW: return "End of gzip comment buffer reached";
    case ISAL_EXTRA_OVERFLOW: return "End of extra buffer reached";
    case ISAL_NEED_DICT: return "Dictionary needed to continue";
    case ISAL_INVALID_BLOCK: return "Invalid deflate block found";
    case ISAL_INVALID_SYMBOL: return "Invalid deflate symbol found";
    case ISAL_INVALID_LOOKBACK: return "Invalid lookback distance found";
    case ISAL_INVALID_WRAPPER: return "Invalid gzip/zlib wrapper found";
    case ISAL_UNSUPPORTED_METHOD: return "Gzip/zlib wrapper specifies unsupported compress method";
    case ISAL_INCORRECT_CHECKSUM: return "Incorrect checksum found";
    default: return "Unknown error";
    }
}

/* A GzipFrames made by __new__ alone has no state yet: refuse, do not crash. */
static int
ready(const Frames *f)
{
    if (f->zst == NULL || f->name == NULL || f->error == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "GzipFrames used before __init__");
        return 0;
    }
    return 1;
}

static PyObject *
fail(Frames *f, PyObject *message)
{
    if (message != NULL) {
        PyErr_SetObject(f->error, message);
        Py_DECREF(message);
    }
    return NULL;
}

/* A member ended: what ISA-L read past it (whole bytes in its bit buffer, then
 * the rest of the input) becomes the input, for the next member or an error. */
static int
end_member(Frames *f)
{
    struct inflate_state *z = f->zst;
    Py_ssize_t in_bits = z->read_in_length / 8, rest = avail(f);
    PyObject *left = PyBytes_FromStringAndSize(NULL, in_bits + rest);
    if (left == NULL)
        return -1;
    char *out = PyBytes_AS_STRING(left);
    uint64_t bits = z->read_in >> (z->read_in_length % 8);
    memcpy(out, &bits, (size_t)in_bits);  /* little-endian: the oldest byte first */
    if (rest)
        memcpy(out + in_bits, (const char *)f->in.buf + f->pos, (size_t)rest);
    f->members++;
    f->phase = BETWEEN;
    int rc = take_input(f, left);
    Py_DECREF(left);
    return rc;
}

/* Between members: the next two bytes must start another member. Returns 1 to
 * go on, 0 when more input is needed, -1 on error. */
static int
next_member(Frames *f)
{
    const unsigned char *p = (const unsigned char *)f->in.buf + f->pos;
    Py_ssize_t n = avail(f);
    if (n == 0)
        return 0;
    if (p[0] != 0x1f || (n >= 2 && p[1] != 0x8b)) {
        fail(f, PyUnicode_FromFormat("%U: garbage after gzip member %zd", f->name, f->members));
        return -1;
    }
    if (n < 2)
        return 0;  /* one byte of a magic: wait for the next (feed joins them) */
    reset_member(f);
    return 1;
}

static int
new_frame(Frames *f)
{
    f->frame = PyBytes_FromStringAndSize(NULL, f->frame_size);
    f->filled = 0;
    return f->frame == NULL ? -1 : 0;
}

/* One ISA-L call into the frame; -1 on error. */
static int
inflate_once(Frames *f)
{
    struct inflate_state *z = f->zst;
    Py_ssize_t n = avail(f);
    z->next_in = (uint8_t *)f->in.buf + f->pos;
    z->avail_in = (uint32_t)(n > UINT32_MAX ? UINT32_MAX : n);
    z->next_out = (uint8_t *)PyBytes_AS_STRING(f->frame) + f->filled;
    z->avail_out = (uint32_t)(f->frame_size - f->filled);
    uint32_t in_before = z->avail_in, out_before = z->avail_out;
    int ret;
    Py_BEGIN_ALLOW_THREADS
    ret = isal_inflate(z);
    Py_END_ALLOW_THREADS
    f->pos += in_before - z->avail_in;
    f->filled += out_before - z->avail_out;
    if (ret < 0) {
        fail(f, PyUnicode_FromFormat("%U: corrupt gzip data in member %zd: Error %d %s", f->name, f->members + 1, ret,
                                     inflate_message(ret)));
        return -1;
    }
    if (z->block_state == ISAL_BLOCK_FINISH)
        return end_member(f);
    if (in_before == z->avail_in && out_before == z->avail_out && in_before > 0) {
        /* Input and room, yet no progress: never seen from ISA-L, but a loop must not spin on it. */
        fail(f, PyUnicode_FromFormat("%U: corrupt gzip data in member %zd: no progress", f->name, f->members + 1));
        return -1;
    }
    f->starved = avail(f) == 0 && z->avail_out > 0;
    return 0;
}

static PyObject *
Frames_next(Frames *f, PyObject *Py_UNUSED(ignored))
{
    if (!ready(f))
        return NULL;
    for (;;) {
        if (f->frame == NULL && new_frame(f) < 0)
            return NULL;
        if (f->filled == f->frame_size) {
            PyObject *full = f->frame;
            f->frame = NULL;
            return full;
        }
        if (f->phase == BETWEEN) {
            int go = next_member(f);
            if (go <= 0)
                return go < 0 ? NULL : Py_NewRef(Py_None);
        }
        if (f->starved)
            Py_RETURN_NONE;
        if (inflate_once(f) < 0)
            return NULL;
    }
}

static PyObject *
Frames_feed(Frames *f, PyObject *data)
{
    if (!ready(f))
        return NULL;
    if (avail(f) > 1 || (avail(f) == 1 && f->phase != BETWEEN)) {
        PyErr_SetString(PyExc_RuntimeError, "feed: the previous input is not used up (call next until None)");
        return NULL;
    }
    int rc;
    if (avail(f) == 1) {  /* the first byte of a member's magic, left from the last feed */
        Py_buffer b;
        if (PyObject_GetBuffer(data, &b, PyBUF_SIMPLE) < 0)
            return NULL;
        PyObject *joined = PyBytes_FromStringAndSize(NULL, b.len + 1);
        if (joined != NULL) {
            PyBytes_AS_STRING(joined)[0] = ((const char *)f->in.buf)[f->pos];
            memcpy(PyBytes_AS_STRING(joined) + 1, b.buf, (size_t)b.len);
        }
        PyBuffer_Release(&b);
        if (joined == NULL)
            return NULL;
        rc = take_input(f, joined);
        Py_DECREF(joined);
    }
    else {
        rc = take_input(f, data);
    }
    if (rc < 0)
        return NULL;
    f->starved = 0;
    Py_RETURN_NONE;
}

static PyObject *
Frames_finish(Frames *f, PyObject *Py_UNUSED(ignored))
{
    if (!ready(f))
        return NULL;
    /* The caller has called next() until None: ISA-L holds nothing more to give. */
    if (f->phase == BETWEEN && avail(f) > 0)
        return fail(f, PyUnicode_FromFormat("%U: garbage after gzip member %zd", f->name, f->members));
    if (f->phase == IN_MEMBER) {
        if (f->members == 0)
            return fail(f, PyUnicode_FromFormat("%U: truncated gzip stream (no complete member)", f->name));
        return fail(f, PyUnicode_FromFormat("%U: truncated gzip stream in member %zd", f->name, f->members + 1));
    }
    drop_input(f);
    if (f->frame == NULL)
        return PyBytes_FromStringAndSize(NULL, 0);
    PyObject *last = f->frame;
    f->frame = NULL;
    if (_PyBytes_Resize(&last, f->filled) < 0)
        return NULL;
    return last;
}

static PyObject *
Frames_get_members(Frames *f, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(f->members);
}

static int
Frames_init(Frames *f, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "frame_size", "error", NULL};
    PyObject *name, *error;
    Py_ssize_t frame_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UnO", kwlist, &name, &frame_size, &error))
        return -1;
    if (frame_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "frame_size must be positive");
        return -1;
    }
    Py_XSETREF(f->name, Py_NewRef(name));
    Py_XSETREF(f->error, Py_NewRef(error));
    if (f->zst == NULL && (f->zst = PyMem_Calloc(1, sizeof(struct inflate_state))) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    reset_member(f);
    f->members = 0;
    f->frame_size = frame_size;
    Py_CLEAR(f->frame);
    drop_input(f);
    f->starved = 0;
    return 0;
}

static void
Frames_dealloc(Frames *f)
{
    drop_input(f);
    Py_XDECREF(f->frame);
    Py_XDECREF(f->name);
    Py_XDECREF(f->error);
    PyMem_Free(f->zst);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyMethodDef Frames_methods[] = {
    {"feed", (PyCFunction)Frames_feed, METH_O,
     "feed(data): the next compressed bytes; the previous ones must be used up (next() returned None)."},
    {"next", (PyCFunction)Frames_next, METH_NOARGS,
     "next() -> bytes | None: the next full frame, or None once the input fed so far is used up."},
    {"finish", (PyCFunction)Frames_finish, METH_NOARGS,
     "finish() -> bytes: end of input; the last, short frame (maybe empty). Raises unless the stream ended at a member's end."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Frames_getset[] = {
    {"members", (getter)Frames_get_members, NULL, "complete gzip members so far", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FramesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "transcoder._isal.GzipFrames",
    .tp_basicsize = sizeof(Frames),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "GzipFrames(name, frame_size, error): a gzip stream inflated by ISA-L into frames of frame_size bytes.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Frames_init,
    .tp_dealloc = (destructor)Frames_dealloc,
    .tp_methods = Frames_methods,
    .tp_getset = Frames_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "transcoder._isal", "gzip inflated by ISA-L straight into frames.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__isal(void)
{
    if (PyType_Ready(&FramesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "GzipFrames", (PyObject *)&FramesType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
