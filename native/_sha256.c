/* transcoder._sha256: SHA-256 with the x86 SHA extensions, two streams at once.
 *
 * One SHA-256 stream is a chain: each block needs the previous block's
 * result, and each SHA256RNDS2 the previous one's, so a single stream runs at
 * the instruction's latency (OpenSSL: 1.81 GB/s here). The unit accepts a new
 * round every other cycle, so two independent streams whose rounds are
 * interleaved run in nearly the time of one: 3.33 GB/s for both together on
 * this machine's AMD EPYC (Zen 4). The pipeline hashes three streams per layer
 * (the gzip source, the tar for the diffID, the zstd output); update_pair
 * lets the tar's hash carry another stream's along.
 *
 * Sha256 is a hashlib-compatible object (update, digest, hexdigest, copy,
 * name, digest_size, block_size); the results are checked against hashlib in
 * the tests, and the module is only used where `available` is true (the CPU
 * has SHA, SSE4.1 and SSSE3). Updates of 4 KiB or more release the GIL, with
 * the object's lock held, as hashlib does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "pythread.h"
#include <stdint.h>
#include <string.h>
#include <cpuid.h>
#include <immintrin.h>

static const uint32_t K256[64] = {
    0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
    0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
    0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
    0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
    0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
    0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
    0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
    0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};

#define SHANI __attribute__((target("sha,sse4.1,ssse3")))

/* state (a..h) to the two registers the SHA instructions work on */
SHANI static inline void load_state(const uint32_t s[8], __m128i *abef, __m128i *cdgh) {
    __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[0]), 0xB1); /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[4]), 0x1B);  /* EFGH */
    *abef = _mm_alignr_epi8(tmp, s1, 8);
    *cdgh = _mm_blend_epi16(s1, tmp, 0xF0);
}

SHANI static inline void store_state(uint32_t s[8], __m128i abef, __m128i cdgh) {
    __m128i tmp = _mm_shuffle_epi32(abef, 0x1B);  /* FEBA */
    cdgh = _mm_shuffle_epi32(cdgh, 0xB1);         /* DCHG */
    _mm_storeu_si128((__m128i *)&s[0], _mm_blend_epi16(tmp, cdgh, 0xF0)); /* DCBA */
    _mm_storeu_si128((__m128i *)&s[4], _mm_alignr_epi8(cdgh, tmp, 8));   /* HGFE */
}

#define BSWAP_MASK _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL)

/* Four rounds on one stream: w holds the schedule words 4g..4g+3 */
#define ROUNDS4(abef, cdgh, w, g) do { \
    __m128i m_ = _mm_add_epi32((w), _mm_loadu_si128((const __m128i *)&K256[4 * (g)])); \
    (cdgh) = _mm_sha256rnds2_epu32((cdgh), (abef), m_); \
    (abef) = _mm_sha256rnds2_epu32((abef), (cdgh), _mm_shuffle_epi32(m_, 0x0E)); \
} while (0)

/* The next schedule register from the previous four (w0 oldest) */
#define NEXTW(w0, w1, w2, w3) \
    _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32((w0), (w1)), _mm_alignr_epi8((w3), (w2), 4)), (w3))

SHANI static void sha256_blocks1(uint32_t s[8], const uint8_t *p, size_t blocks) {
    __m128i abef, cdgh;
    const __m128i mask = BSWAP_MASK;
    load_state(s, &abef, &cdgh);
    for (; blocks; blocks--, p += 64) {
        __m128i sa = abef, sc = cdgh;
        __m128i w0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), mask);
        __m128i w1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), mask);
        __m128i w2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), mask);
        __m128i w3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), mask);
        ROUNDS4(abef, cdgh, w0, 0);
        ROUNDS4(abef, cdgh, w1, 1);
        ROUNDS4(abef, cdgh, w2, 2);
        ROUNDS4(abef, cdgh, w3, 3);
        for (int g = 4; g < 16; g += 4) {
            w0 = NEXTW(w0, w1, w2, w3); ROUNDS4(abef, cdgh, w0, g);
            w1 = NEXTW(w1, w2, w3, w0); ROUNDS4(abef, cdgh, w1, g + 1);
            w2 = NEXTW(w2, w3, w0, w1); ROUNDS4(abef, cdgh, w2, g + 2);
            w3 = NEXTW(w3, w0, w1, w2); ROUNDS4(abef, cdgh, w3, g + 3);
        }
        abef = _mm_add_epi32(abef, sa);
        cdgh = _mm_add_epi32(cdgh, sc);
    }
    store_state(s, abef, cdgh);
}

/* Two independent streams, the same number of blocks each, interleaved so
   that one stream's rounds fill the other's latency. */
SHANI static void sha256_blocks2(uint32_t s[8], const uint8_t *p, uint32_t t[8], const uint8_t *q, size_t blocks) {
    __m128i a1, c1, a2, c2;
    const __m128i mask = BSWAP_MASK;
    load_state(s, &a1, &c1);
    load_state(t, &a2, &c2);
    for (; blocks; blocks--, p += 64, q += 64) {
        __m128i sa1 = a1, sc1 = c1, sa2 = a2, sc2 = c2;
        __m128i x0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), mask);
        __m128i y0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(q + 0)), mask);
        __m128i x1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), mask);
        __m128i y1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(q + 16)), mask);
        __m128i x2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), mask);
        __m128i y2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(q + 32)), mask);
        __m128i x3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), mask);
        __m128i y3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(q + 48)), mask);
        ROUNDS4(a1, c1, x0, 0); ROUNDS4(a2, c2, y0, 0);
        ROUNDS4(a1, c1, x1, 1); ROUNDS4(a2, c2, y1, 1);
        ROUNDS4(a1, c1, x2, 2); ROUNDS4(a2, c2, y2, 2);
        ROUNDS4(a1, c1, x3, 3); ROUNDS4(a2, c2, y3, 3);
        for (int g = 4; g < 16; g += 4) {
            x0 = NEXTW(x0, x1, x2, x3); y0 = NEXTW(y0, y1, y2, y3);
            ROUNDS4(a1, c1, x0, g); ROUNDS4(a2, c2, y0, g);
            x1 = NEXTW(x1, x2, x3, x0); y1 = NEXTW(y1, y2, y3, y0);
            ROUNDS4(a1, c1, x1, g + 1); ROUNDS4(a2, c2, y1, g + 1);
            x2 = NEXTW(x2, x3, x0, x1); y2 = NEXTW(y2, y3, y0, y1);
            ROUNDS4(a1, c1, x2, g + 2); ROUNDS4(a2, c2, y2, g + 2);
            x3 = NEXTW(x3, x0, x1, x2); y3 = NEXTW(y3, y0, y1, y2);
            ROUNDS4(a1, c1, x3, g + 3); ROUNDS4(a2, c2, y3, g + 3);
        }
        a1 = _mm_add_epi32(a1, sa1); c1 = _mm_add_epi32(c1, sc1);
        a2 = _mm_add_epi32(a2, sa2); c2 = _mm_add_epi32(c2, sc2);
    }
    store_state(s, a1, c1);
    store_state(t, a2, c2);
}


static const uint32_t IV[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#define GIL_MIN 4096

typedef struct {
    PyObject_HEAD
    uint32_t h[8];
    uint8_t buf[64];
    size_t have;        /* bytes in buf */
    uint64_t total;     /* bytes hashed so far */
    PyThread_type_lock lock;
} Sha;

static PyTypeObject ShaType;

/* Bytes of p that complete the partial block, then whole blocks, into s;
 * returns how many of the n bytes were consumed (the rest is a partial tail). */
static size_t
absorb_head(Sha *s, const uint8_t **p, size_t *n)
{
    size_t used = 0;
    if (s->have) {
        size_t take = 64 - s->have < *n ? 64 - s->have : *n;
        memcpy(s->buf + s->have, *p, take);
        s->have += take;
        *p += take;
        *n -= take;
        used = take;
        if (s->have == 64) {
            sha256_blocks1(s->h, s->buf, 1);
            s->have = 0;
        }
    }
    return used;
}

static void
absorb_tail(Sha *s, const uint8_t *p, size_t n)
{
    /* n < 64, and the buffer is empty unless n == 0 */
    if (n) {
        memcpy(s->buf + s->have, p, n);
        s->have += n;
    }
}

/* The SHA instructions have only the legacy SSE encoding. After AVX code
 * that leaves the upper halves of the vector registers in use (ISA-L's
 * inflate, in the same thread), each of them waits on those halves: measured
 * here, 243 MiB hashed in 248 ms instead of 141 ms (OpenSSL's: 189 instead
 * of 141). VZEROUPPER clears them; it needs AVX, checked once at import. */
static int has_avx;

__attribute__((target("avx"))) static void
clear_upper(void)
{
    _mm256_zeroupper();
}

static inline void
clean_state(void)
{
    if (has_avx) clear_upper();
}

/* The whole update of one stream: the partial block, whole blocks, the tail. */
static void
update1(Sha *s, const uint8_t *p, size_t n)
{
    clean_state();
    s->total += n;
    absorb_head(s, &p, &n);
    if (s->have) return; /* all of it went into the partial block */
    size_t blocks = n / 64;
    if (blocks) sha256_blocks1(s->h, p, blocks);
    absorb_tail(s, p + blocks * 64, n - blocks * 64);
}

/* Two streams at once: their whole blocks are compressed pairwise as far as
 * both have them, the rest of the longer one alone. */
static void
update2(Sha *a, const uint8_t *p, size_t n, Sha *b, const uint8_t *q, size_t m)
{
    clean_state();
    a->total += n;
    b->total += m;
    absorb_head(a, &p, &n);
    absorb_head(b, &q, &m);
    size_t na = a->have ? 0 : n / 64, nb = b->have ? 0 : m / 64;
    size_t both = na < nb ? na : nb;
    if (both) sha256_blocks2(a->h, p, b->h, q, both);
    if (na > both) sha256_blocks1(a->h, p + both * 64, na - both);
    if (nb > both) sha256_blocks1(b->h, q + both * 64, nb - both);
    if (!a->have) absorb_tail(a, p + na * 64, n - na * 64);
    if (!b->have) absorb_tail(b, q + nb * 64, m - nb * 64);
}

static void
finish(const Sha *s, uint8_t out[32])
{
    uint32_t h[8];
    uint8_t pad[128];
    memcpy(h, s->h, sizeof h);
    size_t have = s->have;
    memcpy(pad, s->buf, have);
    pad[have++] = 0x80;
    size_t len = have <= 56 ? 64 : 128;
    memset(pad + have, 0, len - have);
    uint64_t bits = s->total * 8;
    for (int i = 0; i < 8; i++) pad[len - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha256_blocks1(h, pad, len / 64);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

static Sha *
sha_alloc(void)
{
    Sha *s = PyObject_New(Sha, &ShaType);
    if (s == NULL) return NULL;
    s->lock = PyThread_allocate_lock();
    if (s->lock == NULL) {
        Py_DECREF(s);
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(s->h, IV, sizeof IV);
    s->have = 0;
    s->total = 0;
    return s;
}

static void
sha_dealloc(Sha *s)
{
    if (s->lock) PyThread_free_lock(s->lock);
    PyObject_Free(s);
}

static int
get_buffer(PyObject *obj, Py_buffer *view)
{
    if (PyUnicode_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "Strings must be encoded before hashing");
        return -1;
    }
    return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE);
}

static PyObject *
sha_update(Sha *s, PyObject *obj)
{
    Py_buffer v;
    if (get_buffer(obj, &v) < 0) return NULL;
    if (v.len >= GIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(s->lock, 1);
        update1(s, v.buf, (size_t)v.len);
        PyThread_release_lock(s->lock);
        Py_END_ALLOW_THREADS
    } else {
        PyThread_acquire_lock(s->lock, 1);
        update1(s, v.buf, (size_t)v.len);
        PyThread_release_lock(s->lock);
    }
    PyBuffer_Release(&v);
    Py_RETURN_NONE;
}

static PyObject *
sha_digest(Sha *s, PyObject *Py_UNUSED(ignored))
{
    uint8_t out[32];
    PyThread_acquire_lock(s->lock, 1);
    finish(s, out);
    PyThread_release_lock(s->lock);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyObject *
sha_hexdigest(Sha *s, PyObject *Py_UNUSED(ignored))
{
    static const char hex[] = "0123456789abcdef";
    uint8_t out[32];
    char text[64];
    PyThread_acquire_lock(s->lock, 1);
    finish(s, out);
    PyThread_release_lock(s->lock);
    for (int i = 0; i < 32; i++) {
        text[2 * i] = hex[out[i] >> 4];
        text[2 * i + 1] = hex[out[i] & 15];
    }
    return PyUnicode_FromStringAndSize(text, 64);
}

static PyObject *
sha_copy(Sha *s, PyObject *Py_UNUSED(ignored))
{
    Sha *c = sha_alloc();
    if (c == NULL) return NULL;
    PyThread_acquire_lock(s->lock, 1);
    memcpy(c->h, s->h, sizeof c->h);
    memcpy(c->buf, s->buf, sizeof c->buf);
    c->have = s->have;
    c->total = s->total;
    PyThread_release_lock(s->lock);
    return (PyObject *)c;
}

static PyObject *
sha_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *data = NULL;
    static char *kwlist[] = {"data", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:Sha256", kwlist, &data)) return NULL;
    Sha *s = sha_alloc();
    if (s == NULL) return NULL;
    if (data != NULL) {
        PyObject *r = sha_update(s, data);
        if (r == NULL) {
            Py_DECREF(s);
            return NULL;
        }
        Py_DECREF(r);
    }
    return (PyObject *)s;
}

static PyObject *
sha_name(Sha *Py_UNUSED(s), void *Py_UNUSED(closure)) { return PyUnicode_FromString("sha256"); }
static PyObject *
sha_digest_size(Sha *Py_UNUSED(s), void *Py_UNUSED(closure)) { return PyLong_FromLong(32); }
static PyObject *
sha_block_size(Sha *Py_UNUSED(s), void *Py_UNUSED(closure)) { return PyLong_FromLong(64); }

static PyMethodDef sha_methods[] = {
    {"update", (PyCFunction)sha_update, METH_O, "Hash more bytes."},
    {"digest", (PyCFunction)sha_digest, METH_NOARGS, "The digest of the bytes so far, as bytes."},
    {"hexdigest", (PyCFunction)sha_hexdigest, METH_NOARGS, "The digest of the bytes so far, in hex."},
    {"copy", (PyCFunction)sha_copy, METH_NOARGS, "An independent copy of this hash."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sha_getset[] = {
    {"name", (getter)sha_name, NULL, NULL, NULL},
    {"digest_size", (getter)sha_digest_size, NULL, NULL, NULL},
    {"block_size", (getter)sha_block_size, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ShaType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "transcoder._sha256.Sha256",
    .tp_basicsize = sizeof(Sha),
    .tp_dealloc = (destructor)sha_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SHA-256 with the x86 SHA extensions (hashlib's interface).",
    .tp_methods = sha_methods,
    .tp_getset = sha_getset,
    .tp_new = sha_new,
};

static PyObject *
update_pair(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *a, *b, *da, *db;
    if (!PyArg_ParseTuple(args, "O!OO!O:update_pair", &ShaType, &a, &da, &ShaType, &b, &db)) return NULL;
    if (a == b) {
        PyErr_SetString(PyExc_ValueError, "update_pair: the two hashes must differ");
        return NULL;
    }
    Py_buffer va, vb;
    if (get_buffer(da, &va) < 0) return NULL;
    if (get_buffer(db, &vb) < 0) {
        PyBuffer_Release(&va);
        return NULL;
    }
    Sha *x = (Sha *)a, *y = (Sha *)b;
    /* Locks in address order, so two threads pairing the same hashes cannot deadlock. */
    Sha *first = x < y ? x : y, *second = x < y ? y : x;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(first->lock, 1);
    PyThread_acquire_lock(second->lock, 1);
    update2(x, va.buf, (size_t)va.len, y, vb.buf, (size_t)vb.len);
    PyThread_release_lock(second->lock);
    PyThread_release_lock(first->lock);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&va);
    PyBuffer_Release(&vb);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"update_pair", update_pair, METH_VARARGS,
     "update_pair(a, data_a, b, data_b): a.update(data_a) and b.update(data_b), the two interleaved."},
    {NULL, NULL, 0, NULL},
};

static int
cpu_has_avx(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    /* AVX, and the OS saves the YMM state (OSXSAVE, then XCR0 bits 1 and 2) */
    if (!((ecx >> 28) & 1) || !((ecx >> 27) & 1)) return 0;
    unsigned int lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;
}

static int
cpu_has_sha(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    int sse41 = (ecx >> 19) & 1, ssse3 = (ecx >> 9) & 1;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    return sse41 && ssse3 && ((ebx >> 29) & 1);
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "transcoder._sha256",
    "SHA-256 with the x86 SHA extensions; update_pair hashes two streams at once.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__sha256(void)
{
    if (PyType_Ready(&ShaType) < 0) return NULL;
    has_avx = cpu_has_avx();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ShaType);
    if (PyModule_AddObject(m, "Sha256", (PyObject *)&ShaType) < 0 ||
        PyModule_AddIntConstant(m, "available", cpu_has_sha()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
