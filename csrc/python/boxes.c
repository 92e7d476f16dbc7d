/*
 * pyamp_fds._boxes: AMP boxes as Python objects, made from bytes the
 * decoder (ampbox.c) has cut out already, and bytes made from boxes through
 * paf_encode.  The one C file that touches Python objects: everything the
 * wire allows or refuses is ampbox.c's; this file only moves bytes between
 * Python's objects and it.
 *
 * Built against CPython's stable ABI (3.10): one build serves every
 * supported CPython, as the cffi module does.
 *
 * Neither function runs Python code while it holds borrowed references:
 * nothing here calls back into Python (no __hash__, __eq__ or __del__ of a
 * foreign object), so a box cannot change under it.
 */
#define Py_LIMITED_API 0x030A0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ampbox.h"

/*
 * Keys recur (every command box has _command and _ask, every answer
 * _answer): the same bytes object is handed out again for the same key, so
 * each box does not allocate and hash its keys afresh.  A small direct-mapped
 * table, each slot holding the last key that fell in it; keys longer than
 * KEY_CACHED_MAX are made afresh.  The table holds at most KEY_SLOTS objects
 * of KEY_CACHED_MAX bytes, whatever keys a peer sends.
 */
#define KEY_SLOTS 64
#define KEY_CACHED_MAX 32

struct cached_key {
    PyObject *object;
    Py_ssize_t length;
    const char *bytes;
};

static struct cached_key key_cache[KEY_SLOTS];

static PyObject *key_object(const unsigned char *key, Py_ssize_t length)
{
    if (length > KEY_CACHED_MAX)
        return PyBytes_FromStringAndSize((const char *)key, length);
    uint32_t hash = 2166136261u ^ (uint32_t)length;
    for (Py_ssize_t i = 0; i < length; i++)
        hash = (hash ^ key[i]) * 16777619u;
    struct cached_key *slot = &key_cache[hash & (KEY_SLOTS - 1)];
    if (slot->object != NULL && slot->length == length &&
        memcmp(slot->bytes, key, (size_t)length) == 0) {
        Py_INCREF(slot->object);
        return slot->object;
    }
    PyObject *fresh = PyBytes_FromStringAndSize((const char *)key, length);
    if (fresh == NULL)
        return NULL;
    const char *bytes = PyBytes_AsString(fresh);
    if (bytes == NULL) {
        Py_DECREF(fresh);
        return NULL;
    }
    PyObject *old = slot->object;
    Py_INCREF(fresh);
    slot->object = fresh;
    slot->length = length;
    slot->bytes = bytes;
    Py_XDECREF(old);
    return fresh;
}

static PyObject *empty_tuple;

static unsigned read_length(const unsigned char *at)
{
    return ((unsigned)at[0] << 8) | at[1];
}

/*
 * build(box_type, source, count) -> list of count boxes
 *
 * The first count boxes of source, which starts with the first of them, as
 * box_type instances (box_type.__new__(box_type), its __init__ skipped;
 * keys and values set in wire order, as dict.update sets them).  The
 * decoder has checked the boxes are whole; this checks every length against
 * the source anyway, and raises ValueError if one runs past it.
 */
static PyObject *build(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "build() takes box_type, source and count");
        return NULL;
    }
    PyObject *box_type = args[0];
    PyObject *source = args[1];
    Py_ssize_t count = PyLong_AsSsize_t(args[2]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    if (!PyType_Check(box_type) ||
        !PyType_IsSubtype((PyTypeObject *)box_type, &PyDict_Type)) {
        PyErr_SetString(PyExc_TypeError, "box_type must be dict or a subclass of it");
        return NULL;
    }
    if (!PyBytes_CheckExact(source)) {
        PyErr_SetString(PyExc_TypeError, "source must be bytes");
        return NULL;
    }
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must not be negative");
        return NULL;
    }
    newfunc make = (newfunc)PyType_GetSlot((PyTypeObject *)box_type, Py_tp_new);
    if (make == NULL) {
        PyErr_SetString(PyExc_TypeError, "box_type cannot be instantiated");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AsString(source);
    Py_ssize_t size = PyBytes_Size(source);
    if (data == NULL || size < 0)
        return NULL;
    /* Every box takes two bytes at least: the list is never larger than the
     * source allows, whatever count says. */
    if (count > size / 2) {
        PyErr_Format(PyExc_ValueError, "%zd boxes run past the end of a source of %zd bytes",
                     count, size);
        return NULL;
    }

    PyObject *boxes = PyList_New(count);
    if (boxes == NULL)
        return NULL;
    Py_ssize_t at = 0, j;
    for (j = 0; j < count; j++) {
        PyObject *box = make((PyTypeObject *)box_type, empty_tuple, NULL);
        if (box == NULL)
            goto fail;
        /* Steals the reference: the list frees the box on failure. */
        if (PyList_SetItem(boxes, j, box) < 0)
            goto fail;
        if (!PyDict_Check(box)) {
            PyErr_SetString(PyExc_TypeError, "box_type.__new__ did not make a dict");
            goto fail;
        }
        for (;;) {
            if (size - at < 2)
                goto truncated;
            Py_ssize_t key_length = read_length(data + at);
            at += 2;
            if (key_length == 0)
                break;
            if (size - at < key_length + 2)
                goto truncated;
            const unsigned char *key_at = data + at;
            at += key_length;
            Py_ssize_t value_length = read_length(data + at);
            at += 2;
            if (size - at < value_length)
                goto truncated;
            PyObject *key = key_object(key_at, key_length);
            if (key == NULL)
                goto fail;
            PyObject *value = PyBytes_FromStringAndSize((const char *)data + at, value_length);
            at += value_length;
            if (value == NULL) {
                Py_DECREF(key);
                goto fail;
            }
            int set = PyDict_SetItem(box, key, value);
            Py_DECREF(key);
            Py_DECREF(value);
            if (set < 0)
                goto fail;
        }
    }
    return boxes;

truncated:
    PyErr_Format(PyExc_ValueError, "box %zd runs past the end of its source", j);
fail:
    Py_DECREF(boxes);
    return NULL;
}

/* A key and its value, borrowed from a box: their bytes and lengths. */
struct pair {
    const char *key;
    const char *value;
    Py_ssize_t key_length;
    Py_ssize_t value_length;
};

/* Twisted's order: sorted(box.items()), keys being unique bytes. */
static int key_before(const struct pair *a, const struct pair *b)
{
    Py_ssize_t common = a->key_length < b->key_length ? a->key_length : b->key_length;
    int order = memcmp(a->key, b->key, (size_t)common);
    return order < 0 || (order == 0 && a->key_length < b->key_length);
}

static int compare_pairs(const void *a, const void *b)
{
    return key_before(a, b) ? -1 : key_before(b, a);
}

/* Boxes of more keys than this are sorted by qsort. */
#define INSERTION_SORT_MAX 16

static void sort_pairs(struct pair *pairs, Py_ssize_t count)
{
    /* A box of many keys, in whatever order, must not take quadratic time:
     * one a peer sent may be sent on. */
    if (count > INSERTION_SORT_MAX) {
        qsort(pairs, (size_t)count, sizeof *pairs, compare_pairs);
        return;
    }
    /* Insertion sort: a box has a handful of keys, usually in order already. */
    for (Py_ssize_t i = 1; i < count; i++) {
        struct pair moving = pairs[i];
        Py_ssize_t j = i;
        while (j > 0 && key_before(&moving, &pairs[j - 1])) {
            pairs[j] = pairs[j - 1];
            j--;
        }
        pairs[j] = moving;
    }
}

/*
 * encode(boxes, plain_type) -> bytes, or None
 *
 * The boxes of a list or tuple encoded one after the other, exactly as
 * Twisted's AmpBox.serialize encodes each, through paf_encode.  Only boxes
 * of type dict or plain_type (a dict subclass that changes nothing about
 * iteration or item access, such as AmpBox) whose keys and values are all
 * bytes (not subclasses), with no empty key, are taken here; for anything
 * else, or a key or value too long, the answer is None and the caller
 * encodes in Python, which says exactly what is wrong.
 */
static PyObject *encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode() takes boxes and plain_type");
        return NULL;
    }
    PyObject *boxes = args[0];
    PyObject *plain_type = args[1];
    int is_list = PyList_Check(boxes);
    if (!is_list && !PyTuple_Check(boxes)) {
        PyErr_SetString(PyExc_TypeError, "boxes must be a list or a tuple");
        return NULL;
    }
    Py_ssize_t nboxes = is_list ? PyList_Size(boxes) : PyTuple_Size(boxes);
    if (nboxes < 0)
        return NULL;

    /* How many pairs in all, and whether every box is one taken here. */
    Py_ssize_t npairs = 0;
    for (Py_ssize_t j = 0; j < nboxes; j++) {
        PyObject *box = is_list ? PyList_GetItem(boxes, j) : PyTuple_GetItem(boxes, j);
        if (box == NULL)
            return NULL;
        PyObject *type = (PyObject *)Py_TYPE(box);
        if (type != (PyObject *)&PyDict_Type && type != plain_type)
            Py_RETURN_NONE;
        npairs += PyDict_Size(box);
    }
    /* Every pair, then the lengths paf_encode walks: key and value of each
     * pair, and a zero ending each box. */
    Py_ssize_t nlens = 2 * npairs + nboxes;
    struct pair *pairs = PyMem_Malloc((size_t)(npairs ? npairs : 1) * sizeof *pairs);
    int32_t *lens = PyMem_Malloc((size_t)(nlens ? nlens : 1) * sizeof *lens);
    char *flat = NULL;
    PyObject *out = NULL;
    if (pairs == NULL || lens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t data_length = 0;
    Py_ssize_t filled = 0;
    for (Py_ssize_t j = 0; j < nboxes; j++) {
        PyObject *box = is_list ? PyList_GetItem(boxes, j) : PyTuple_GetItem(boxes, j);
        Py_ssize_t position = 0;
        PyObject *key, *value;
        Py_ssize_t first = filled;
        while (PyDict_Next(box, &position, &key, &value)) {
            if (!PyBytes_CheckExact(key) || !PyBytes_CheckExact(value) || filled == npairs)
                goto in_python;
            struct pair *pair = &pairs[filled++];
            pair->key = PyBytes_AsString(key);
            pair->key_length = PyBytes_Size(key);
            pair->value = PyBytes_AsString(value);
            pair->value_length = PyBytes_Size(value);
            if (pair->key_length == 0 || pair->key_length > PAF_AMP_MAX_KEY_LENGTH ||
                pair->value_length > PAF_AMP_MAX_VALUE_LENGTH)
                goto in_python;
            data_length += pair->key_length + pair->value_length;
        }
        sort_pairs(pairs + first, filled - first);
    }
    if (filled != npairs)
        goto in_python;

    flat = PyMem_Malloc((size_t)(data_length ? data_length : 1));
    if (flat == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    {
        /* The boxes' pairs are back to back in pairs, box by box; the
         * lengths give each box's end. */
        Py_ssize_t p = 0, l = 0, at = 0;
        for (Py_ssize_t j = 0; j < nboxes; j++) {
            PyObject *box = is_list ? PyList_GetItem(boxes, j) : PyTuple_GetItem(boxes, j);
            Py_ssize_t end = p + PyDict_Size(box);
            for (; p < end; p++) {
                memcpy(flat + at, pairs[p].key, (size_t)pairs[p].key_length);
                at += pairs[p].key_length;
                memcpy(flat + at, pairs[p].value, (size_t)pairs[p].value_length);
                at += pairs[p].value_length;
                lens[l++] = (int32_t)pairs[p].key_length;
                lens[l++] = (int32_t)pairs[p].value_length;
            }
            lens[l++] = 0;
        }
    }
    Py_ssize_t out_length = data_length + 2 * nlens;
    out = PyBytes_FromStringAndSize(NULL, out_length);
    if (out == NULL)
        goto done;
    size_t bad = 0;
    ssize_t written = paf_encode((const uint8_t *)flat, (size_t)data_length, lens, (size_t)nlens,
                                 (uint8_t *)PyBytes_AsString(out), (size_t)out_length, &bad);
    if (written != out_length) {
        /* Checked above: cannot happen.  Python says what is wrong, if anything. */
        Py_CLEAR(out);
        goto in_python;
    }
    goto done;

in_python:
    out = Py_None;
    Py_INCREF(out);
done:
    PyMem_Free(pairs);
    PyMem_Free(lens);
    PyMem_Free(flat);
    return out;
}

/* keys_held() -> how many key objects the key table holds now. */
static PyObject *keys_held(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    long held = 0;
    for (int i = 0; i < KEY_SLOTS; i++)
        held += key_cache[i].object != NULL;
    return PyLong_FromLong(held);
}

static PyMethodDef methods[] = {
    {"build", (PyCFunction)(void (*)(void))build, METH_FASTCALL,
     "build(box_type, source, count): the first count boxes of source."},
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(boxes, plain_type): the boxes as bytes, or None to encode them in Python."},
    {"keys_held", keys_held, METH_NOARGS, "keys_held(): how many keys the key table holds."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    "pyamp_fds._boxes",
    "AMP boxes as Python objects, to and from the bytes of pyamp_fds._native.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__boxes(void)
{
    if (empty_tuple == NULL) {
        empty_tuple = PyTuple_New(0);
        if (empty_tuple == NULL)
            return NULL;
    }
    PyObject *module = PyModule_Create(&module_definition);
    if (module != NULL && (PyModule_AddIntConstant(module, "KEYS_KEPT", KEY_SLOTS) < 0 ||
                           PyModule_AddIntConstant(module, "KEY_KEPT_MAX", KEY_CACHED_MAX) < 0))
        Py_CLEAR(module);
    return module;
}
