/* The fast path of spitguard.sip.parse(), in C.
 *
 * Why C: parsing is the first thing every packet meets, and in pure Python just splitting
 * a message's headers costs the whole per-message budget (see bench/parse.py). No
 * maintained C SIP parser for CPython exists that gives our typed values, so this is ours.
 *
 * Contract: parse(data, limits) returns the same Request/Response, with the same header
 * lines, body, raw bytes, typed cache and defects, as the Python parser in message.py
 * would, or None. None means "not the everyday shape, or not valid": the caller then
 * runs the Python parser, which stays the reference and the only source of
 * SipParseError reasons. So this file never decides that input is malformed; it only
 * recognises the common well-formed shapes (CRLF line ends, no folding or control bytes,
 * the regex fast paths of uri.py, headers.py and grammar.py) and builds the objects.
 * tests/test_sip_cparse.py checks the two agree on every corpus and on generated input.
 *
 * Memory safety: every read is bounded by an explicit length; no NUL-terminated string
 * functions on network data; no fixed-size buffer is written past its capacity (counts
 * are checked first, and overflowing counts mean None, not truncation).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* ---- character classes (the regex classes of grammar.py, uri.py, headers.py) ---- */

enum {
    C_TOKEN = 1,   /* [A-Za-z0-9\-.!%*_+`'~]            token */
    C_HVAL = 2,    /* token + [:\[\]/]                    gen-value fast shape */
    C_UCH = 4,     /* [A-Za-z0-9\-_.!~*'()%\[\]/:&+$]     URI param chars */
    C_USER = 8,    /* [A-Za-z0-9\-_.!~*'()&=+$,]          URI user / password */
    C_HOST = 16,   /* [A-Za-z0-9\-.]                      hostname / IPv4 */
    C_IPV6 = 32,   /* [0-9A-Fa-f:.]                       inside [...] */
    C_DIGIT = 64,  /* [0-9] */
    C_SCHEME = 128 /* [A-Za-z0-9+\-.]                     scheme (after the first) */
};
static unsigned char cls[256];

static void
set_class(const char *chars, unsigned char bit)
{
    for (const char *c = chars; *c; c++)
        cls[(unsigned char)*c] |= bit;
}

static void
init_classes(void)
{
    const char *alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    set_class(alnum, C_TOKEN | C_HVAL | C_UCH | C_USER | C_HOST | C_SCHEME);
    set_class("-.!%*_+`'~", C_TOKEN | C_HVAL);
    set_class(":[]/", C_HVAL);
    set_class("-_.!~*'()%[]/:&+$", C_UCH);
    set_class("-_.!~*'()&=+$,", C_USER);
    set_class("-.", C_HOST);
    set_class("0123456789abcdefABCDEF:.", C_IPV6);
    set_class("0123456789", C_DIGIT);
    set_class("+-.", C_SCHEME);
}

#define IS(c, bit) (cls[(unsigned char)(c)] & (bit))

/* Eight bytes at a time (SWAR): the head is scanned for line ends and control bytes,
 * and values for 8-bit bytes, several hundred bytes per message. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static inline uint64_t
load8(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* Nonzero when a byte of w may be below 0x20 or equal to 0x7f (false positives are
 * possible above a true one; callers then look byte by byte). */
static inline uint64_t
maybe_control(uint64_t w)
{
    uint64_t del = w ^ (ONES * 0x7f);
    return ((w - ONES * 0x20) & ~w & HIGHS) | ((del - ONES) & ~del & HIGHS);
}

/* Result of the shape recognisers: a value, "not the fast shape" (the caller returns
 * None), or a Python exception (MemoryError) to propagate. */
#define OK 1
#define NOT_FAST 0
#define FAIL (-1)

/* ---- objects handed over by message.py at import (setup()) ---- */

static PyTypeObject *MessageType, *RequestType, *ResponseType, *SipUriType, *ViaType, *NameAddrType,
    *CSeqType;
static PyObject *Star, *EmptyParams;
static PyObject *CompactKeys[26]; /* 'a'..'z' -> full key, or NULL */

/* Slot offsets of Request/Response (and their Message base), read from the member
 * descriptors so the objects are filled exactly as Python's own attribute stores would. */
static Py_ssize_t off_fields, off_body, off_raw, off_typed, off_defects;
static Py_ssize_t off_req_uri, off_req_method, off_resp_status, off_resp_reason;

static PyObject *S_sip, *S_sips, *S_sip20, *S_branch;
static PyObject *K_via, *K_from, *K_to, *K_call_id, *K_cseq, *K_max_forwards, *K_contact,
    *K_expires, *K_route, *K_record_route, *K_proxy_require;
static PyObject *D_missing[5], *D_multiple[7], *D_missing_mf, *D_branch_missing,
    *D_branch_rfc2543, *D_branch_empty;

/* Set as the last step of a successful setup(): before that, parse() answers None. */
static int ready;

/* Limits: cached per Limits object (the default one, nearly always). */
static PyObject *cached_limits;
static Py_ssize_t lim_size, lim_headers, lim_line, lim_uri;
#define NAME_ADDR_MAX_URI 2048 /* parse_name_addr's default, used by _validate */
#define MAX_PARAMS 64
#define MAX_CSEQ 2147483647ULL
#define MAX_UINT32 4294967295ULL
#define MAX_LINES 256 /* more lines than this: the Python parser handles the message */
#define MAX_SEGS 64   /* comma-separated values per header line, same */

/* ---- small helpers ---- */

/* A str from head bytes, decoded as the Python parser decodes the head: UTF-8 with
 * surrogateescape. Slices start and end at ASCII separators, and an ASCII byte always
 * ends a UTF-8 sequence, so decoding a slice gives what decoding the whole head and
 * slicing would. Nearly every value is ASCII: that takes a plain copy. */
static PyObject *
S(const char *p, Py_ssize_t n)
{
    uint64_t high = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        high |= load8(p + i);
    for (; i < n; i++)
        high |= (unsigned char)p[i];
    if (high & HIGHS)
        return PyUnicode_DecodeUTF8(p, n, "surrogateescape");
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL && n > 0)
        memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
    return s;
}

/* An ASCII str with letters folded to one case (`to` is 'a' or 'A'). */
static PyObject *
S_case(const char *p, Py_ssize_t n, char to)
{
    unsigned char lo = to == 'a' ? 'A' : 'a';
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL) {
        Py_UCS1 *d = PyUnicode_1BYTE_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)p[i];
            d[i] = (c >= lo && c <= lo + 25) ? (Py_UCS1)(c ^ 0x20) : (Py_UCS1)c;
        }
    }
    return s;
}

static int
ieq(const char *p, Py_ssize_t n, const char *lit)
{
    Py_ssize_t m = (Py_ssize_t)strlen(lit);
    if (n != m)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

static void
strip(const char **p, Py_ssize_t *n)
{
    /* Space and tab only. Other ASCII whitespace is rejected while scanning; Unicode
     * whitespace at the ends of a header value sends the message to Python (edge_space),
     * and anywhere else it fails the ASCII grammar classes. */
    const char *s = *p;
    Py_ssize_t len = *n;
    while (len > 0 && (s[0] == ' ' || s[0] == '\t')) {
        s++;
        len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    *p = s;
    *n = len;
}

static int
all_class(const char *p, Py_ssize_t n, unsigned char bit)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (!IS(p[i], bit))
            return 0;
    return 1;
}

static Py_ssize_t
find_char(const char *p, Py_ssize_t n, char c)
{
    const char *q = memchr(p, c, (size_t)n);
    return q == NULL ? -1 : (Py_ssize_t)(q - p);
}

/* grammar.parse_uint on an ASCII value: strip, 1..20 digits, at most `limit`. */
static int
parse_uint(const char *p, Py_ssize_t n, unsigned long long limit, unsigned long long *out)
{
    strip(&p, &n);
    if (n == 0 || n > 20)
        return NOT_FAST;
    unsigned long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!IS(p[i], C_DIGIT))
            return NOT_FAST;
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (limit - d) / 10) /* v * 10 + d > limit, without overflow */
            return NOT_FAST;
        v = v * 10 + d;
    }
    *out = v;
    return OK;
}

/* A tuple subclass instance (our NamedTuples) without running its Python __new__.
 * Steals the items; a NULL among them (a failed allocation) releases the others. */
static PyObject *
new_tuple_of(PyTypeObject *type, Py_ssize_t n, PyObject **items)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (items[i] == NULL) {
            for (Py_ssize_t j = 0; j < n; j++)
                Py_XDECREF(items[j]);
            return NULL;
        }
    }
#if PY_VERSION_HEX < 0x030E0000
    PyObject *t = type->tp_alloc(type, n);
    if (t == NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            Py_DECREF(items[i]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, items[i]); /* steals */
    return t;
#else
    /* 3.14 caches tuple hashes in the object: go through tuple.__new__ to set it up. */
    PyObject *plain = PyTuple_New(n);
    if (plain == NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            Py_DECREF(items[i]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(plain, i, items[i]);
    PyObject *args = PyTuple_Pack(1, plain);
    Py_DECREF(plain);
    if (args == NULL)
        return NULL;
    PyObject *t = PyTuple_Type.tp_new(type, args, NULL);
    Py_DECREF(args);
    return t;
#endif
}

/* ---- params (grammar.parse_param_text, fast shapes only) ---- */

/* Parameter names seen in nearly every message: interned once, so building a params
 * dict costs no allocation or hashing for them. */
static const char *common_params[] = {
    "tag",    "branch",   "rport",  "received", "lr",     "transport", "expires", "q",
    "user",   "maddr",    "ftag",   "methods",  "reg-id", "+sip.instance", "ob",
    "rinstance", "line",  "did",    "npi",      "ton",    "phone",     "model",   "mac",
};
#define N_COMMON_PARAMS ((int)(sizeof(common_params) / sizeof(common_params[0])))
static PyObject *common_param_objs[N_COMMON_PARAMS];
static Py_ssize_t common_param_lens[N_COMMON_PARAMS];

static PyObject *
param_name(const char *p, Py_ssize_t n)
{
    for (int k = 0; k < N_COMMON_PARAMS; k++) {
        if (common_param_lens[k] != n)
            continue;
        const char *c = common_params[k];
        Py_ssize_t i = 0;
        while (i < n) {
            unsigned char ch = (unsigned char)p[i];
            if (ch >= 'A' && ch <= 'Z')
                ch = (unsigned char)(ch + 32);
            if (ch != (unsigned char)c[i])
                break;
            i++;
        }
        if (i == n)
            return Py_NewRef(common_param_objs[k]);
    }
    return S_case(p, n, 'a');
}

/* Header params (`uri` = 0): TOK(=(HVAL+|"[^"\\]*"))? (;...)*;
 * URI params (`uri` = 1): UCH+(=UCH+)? (;...)*. Names lower-cased; a repeated name keeps
 * its first place and takes the last value (dict semantics, as in Python). */
static int
params_fast(const char *p, Py_ssize_t n, int uri, PyObject **out)
{
    unsigned char name_cls = uri ? C_UCH : C_TOKEN;
    unsigned char val_cls = uri ? C_UCH : C_HVAL;
    if (n == 0)
        return NOT_FAST;
    PyObject *d = PyDict_New();
    if (d == NULL)
        return FAIL;
    Py_ssize_t i = 0, segs = 0;
    for (;;) {
        Py_ssize_t ns = i;
        while (i < n && IS(p[i], name_cls))
            i++;
        if (i == ns)
            goto not_fast;
        Py_ssize_t ne = i;
        PyObject *value;
        if (i < n && p[i] == '=') {
            i++;
            Py_ssize_t vs = i;
            if (!uri && i < n && p[i] == '"') {
                i++;
                while (i < n && p[i] != '"' && p[i] != '\\')
                    i++;
                if (i >= n || p[i] != '"')
                    goto not_fast;
                i++;
            }
            else {
                while (i < n && IS(p[i], val_cls))
                    i++;
                if (i == vs)
                    goto not_fast;
            }
            value = S(p + vs, i - vs);
            if (value == NULL)
                goto fail;
        }
        else {
            value = Py_NewRef(Py_None);
        }
        if (++segs > MAX_PARAMS) {
            Py_DECREF(value);
            goto not_fast;
        }
        PyObject *name = param_name(p + ns, ne - ns);
        if (name == NULL) {
            Py_DECREF(value);
            goto fail;
        }
        int rc = PyDict_SetItem(d, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (rc < 0)
            goto fail;
        if (i == n)
            break;
        if (p[i] != ';')
            goto not_fast;
        i++;
    }
    *out = d;
    return OK;
not_fast:
    Py_DECREF(d);
    return NOT_FAST;
fail:
    Py_DECREF(d);
    return FAIL;
}

/* What may follow a host[:port] or a name-addr's '>': nothing (the shared empty
 * params) or ';' and parameters. */
static int
tail_params(const char *p, Py_ssize_t n, Py_ssize_t at, int uri, PyObject **out)
{
    if (at == n) {
        *out = Py_NewRef(EmptyParams);
        return OK;
    }
    if (p[at] != ';')
        return NOT_FAST;
    return params_fast(p + at + 1, n - at - 1, uri, out);
}

/* ---- URIs (uri.parse_uri for sip:/sips: in the _SIP_FAST shape) ---- */

static int
hostport(const char *p, Py_ssize_t n, Py_ssize_t *host_end, long *port, Py_ssize_t *after)
{
    /* ([A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))? ; stops at ';' or the end */
    Py_ssize_t i = 0;
    if (n > 0 && p[0] == '[') {
        i = 1;
        while (i < n && IS(p[i], C_IPV6))
            i++;
        if (i == 1 || i >= n || p[i] != ']')
            return NOT_FAST;
        i++;
    }
    else {
        while (i < n && IS(p[i], C_HOST))
            i++;
        if (i == 0)
            return NOT_FAST;
    }
    *host_end = i;
    *port = -1;
    if (i < n && p[i] == ':') {
        Py_ssize_t ds = ++i;
        while (i < n && IS(p[i], C_DIGIT) && i - ds < 6)
            i++;
        Py_ssize_t nd = i - ds;
        if (nd == 0 || nd > 5)
            return NOT_FAST;
        long v = 0;
        for (Py_ssize_t k = ds; k < i; k++)
            v = v * 10 + (p[k] - '0');
        if (v > 65535)
            return NOT_FAST; /* Python: bad_port */
        *port = v;
    }
    *after = i;
    return OK;
}

/* `host[:port][;params]` as three new references (host, port or None, params) in
 * out[0..2]; an allocation failure leaves a NULL there for new_tuple_of to handle. */
static int
host_port_params(const char *p, Py_ssize_t n, int uri, PyObject **out)
{
    Py_ssize_t host_end, after;
    long port;
    if (hostport(p, n, &host_end, &port, &after) != OK)
        return NOT_FAST;
    int rc = tail_params(p, n, after, uri, &out[2]);
    if (rc != OK)
        return rc;
    out[0] = S(p, host_end);
    out[1] = port >= 0 ? PyLong_FromLong(port) : Py_NewRef(Py_None);
    return OK;
}

static int
uri_fast(const char *p, Py_ssize_t n, Py_ssize_t max_len, PyObject **out)
{
    if (n > max_len)
        return NOT_FAST;
    Py_ssize_t colon = find_char(p, n, ':');
    if (colon <= 0)
        return NOT_FAST;
    PyObject *scheme;
    if (ieq(p, colon, "sip"))
        scheme = S_sip;
    else if (ieq(p, colon, "sips"))
        scheme = S_sips;
    else
        return NOT_FAST; /* tel:, other schemes: the Python parser */
    const char *r = p + colon + 1;
    Py_ssize_t rn = n - colon - 1;
    if (find_char(r, rn, '?') >= 0)
        return NOT_FAST;
    Py_ssize_t at = find_char(r, rn, '@');
    const char *user = NULL, *pw = NULL;
    Py_ssize_t user_n = 0, pw_n = 0;
    if (at >= 0) {
        if (find_char(r + at + 1, rn - at - 1, '@') >= 0)
            return NOT_FAST;
        Py_ssize_t uc = find_char(r, at, ':');
        user = r;
        user_n = uc >= 0 ? uc : at;
        if (user_n == 0 || !all_class(user, user_n, C_USER))
            return NOT_FAST;
        if (uc >= 0) {
            pw = r + uc + 1;
            pw_n = at - uc - 1;
            if (!all_class(pw, pw_n, C_USER))
                return NOT_FAST;
        }
        r += at + 1;
        rn -= at + 1;
    }
    PyObject *items[7];
    int rc = host_port_params(r, rn, 1, items + 3);
    if (rc != OK)
        return rc;
    items[0] = Py_NewRef(scheme);
    items[1] = user ? S(user, user_n) : Py_NewRef(Py_None);
    items[2] = pw ? S(pw, pw_n) : Py_NewRef(Py_None);
    items[6] = Py_NewRef(Py_None);
    *out = new_tuple_of(SipUriType, 7, items);
    return *out ? OK : FAIL;
}

/* ---- Via (headers._VIA_FAST) ---- */

static int
via_fast(const char *p, Py_ssize_t n, PyObject **out)
{
    if (n < 8 || memcmp(p, "SIP/2.0/", 8) != 0)
        return NOT_FAST;
    Py_ssize_t i = 8, ts = 8;
    while (i < n && IS(p[i], C_TOKEN))
        i++;
    if (i == ts || i >= n || p[i] != ' ')
        return NOT_FAST;
    Py_ssize_t te = i++;
    const char *h = p + i;
    Py_ssize_t hn = n - i;
    PyObject *items[5];
    int rc = host_port_params(h, hn, 0, items + 2);
    if (rc != OK)
        return rc;
    items[0] = Py_NewRef(S_sip20);
    items[1] = S_case(p + ts, te - ts, 'A');
    *out = new_tuple_of(ViaType, 5, items);
    return *out ? OK : FAIL;
}

/* ---- name-addr and addr-spec (headers.parse_name_addr) ---- */

/* `"Display" <uri>;params`, `Display Words <uri>;params`, `<uri>;params` and the
 * addr-spec `uri;params`, as parse_name_addr's fast regex and its slow path read them.
 * A display name with backslashes, quotes elsewhere, or spaces inside the parameters
 * are left to the Python parser. */
static int
name_addr_fast(const char *p, Py_ssize_t n, PyObject **out)
{
    Py_ssize_t i = 0, disp_n = 0;
    const char *disp = NULL;
    PyObject *uri, *params;
    int rc;
    if (n == 0)
        return NOT_FAST;
    if (p[0] == '"') {
        i = 1;
        while (i < n && p[i] != '"' && p[i] != '\\')
            i++;
        if (i >= n || p[i] != '"')
            return NOT_FAST;
        disp = p + 1;
        disp_n = i - 1;
        i++;
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        if (i >= n || p[i] != '<')
            return NOT_FAST;
    }
    else {
        Py_ssize_t lt = find_char(p, n, '<');
        Py_ssize_t quote = find_char(p, n, '"');
        if (quote >= 0 && lt >= 0 && quote < lt)
            return NOT_FAST; /* a quote before '<' (which may then be quoted itself) */
        if (lt < 0) {
            /* addr-spec: the URI runs to the first ';' and may hold no '?', ',' or
             * whitespace (RFC 3261 §20); what follows are header params. */
            Py_ssize_t semi = find_char(p, n, ';');
            Py_ssize_t un = semi < 0 ? n : semi;
            const char *u = p;
            strip(&u, &un);
            if (memchr(u, ',', (size_t)un) || memchr(u, ' ', (size_t)un) ||
                memchr(u, '\t', (size_t)un))
                return NOT_FAST;
            if ((rc = uri_fast(u, un, NAME_ADDR_MAX_URI, &uri)) != OK)
                return rc;
            if ((rc = tail_params(p, n, semi < 0 ? n : semi, 0, &params)) != OK) {
                Py_DECREF(uri);
                return rc;
            }
            goto build;
        }
        if (lt > 0) {
            /* unquoted display name: words of token characters */
            Py_ssize_t dn = lt;
            while (dn > 0 && (p[dn - 1] == ' ' || p[dn - 1] == '\t'))
                dn--;
            for (Py_ssize_t k = 0; k < dn; k++)
                if (!IS(p[k], C_TOKEN) && p[k] != ' ' && p[k] != '\t')
                    return NOT_FAST;
            disp = p;
            disp_n = dn;
        }
        i = lt;
    }
    /* p[i] == '<' */
    Py_ssize_t us = ++i;
    while (i < n && p[i] != '>' && p[i] != '<' && p[i] != ' ' && p[i] != '\t')
        i++;
    if (i == us || i >= n || p[i] != '>')
        return NOT_FAST;
    Py_ssize_t ue = i++;
    if ((rc = uri_fast(p + us, ue - us, NAME_ADDR_MAX_URI, &uri)) != OK)
        return rc;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    if ((rc = tail_params(p, n, i, 0, &params)) != OK) {
        Py_DECREF(uri);
        return rc;
    }
build:;
    PyObject *items[3];
    items[0] = disp ? S(disp, disp_n) : Py_NewRef(Py_None);
    items[1] = uri;
    items[2] = params;
    *out = new_tuple_of(NameAddrType, 3, items);
    return *out ? OK : FAIL;
}

/* ---- comma-separated values (grammar.split_comma_values) ---- */

typedef struct {
    const char *p;
    Py_ssize_t n;
} Span;

/* Split on ',' outside quoted strings and <...>, strip each value; an empty value, an
 * unterminated quote or more than MAX_SEGS values: NOT_FAST. */
static int
split_commas(const char *p, Py_ssize_t n, Span *segs, int *count)
{
    int k = 0;
    long depth = 0;
    Py_ssize_t last = 0, i = 0;
    while (i < n) {
        char c = p[i];
        if (c == '"') {
            i++;
            while (i < n && p[i] != '"')
                i += (p[i] == '\\') ? 2 : 1;
            if (i >= n)
                return NOT_FAST;
            i++;
            continue;
        }
        if (c == '<')
            depth++;
        else if (c == '>')
            depth--;
        else if (c == ',' && depth == 0) {
            if (k >= MAX_SEGS)
                return NOT_FAST;
            segs[k].p = p + last;
            segs[k].n = i - last;
            k++;
            last = i + 1;
        }
        i++;
    }
    if (k >= MAX_SEGS)
        return NOT_FAST;
    segs[k].p = p + last;
    segs[k].n = n - last;
    k++;
    for (int j = 0; j < k; j++) {
        strip(&segs[j].p, &segs[j].n);
        if (segs[j].n == 0)
            return NOT_FAST;
    }
    *count = k;
    return OK;
}

typedef int (*ValueParser)(const char *, Py_ssize_t, PyObject **);

/* parse_vias / parse_name_addrs of one header line, appended to `list`. */
static int
append_values(const char *p, Py_ssize_t n, ValueParser parse, PyObject *list)
{
    Span segs[MAX_SEGS];
    int k = 1;
    if (memchr(p, ',', (size_t)n) == NULL) {
        segs[0].p = p;
        segs[0].n = n;
    }
    else {
        int rc = split_commas(p, n, segs, &k);
        if (rc != OK)
            return rc;
    }
    for (int j = 0; j < k; j++) {
        PyObject *v;
        int rc = parse(segs[j].p, segs[j].n, &v);
        if (rc != OK)
            return rc;
        rc = PyList_Append(list, v);
        Py_DECREF(v);
        if (rc < 0)
            return FAIL;
    }
    return OK;
}

/* ---- Date (message._DATE_RE) ---- */

static int
date_ok(const char *p, Py_ssize_t n)
{
    static const char *days = "MonTueWedThuFriSatSun";
    static const char *months = "JanFebMarAprMayJunJulAugSepOctNovDec";
    /* "Tue, 12 Nov 2024 09:14:07 GMT" */
    if (n != 29)
        return 0;
    int day = 0, month = 0;
    for (int k = 0; k < 7; k++)
        day |= memcmp(p, days + 3 * k, 3) == 0;
    for (int k = 0; k < 12; k++)
        month |= memcmp(p + 8, months + 3 * k, 3) == 0;
    if (!day || !month)
        return 0;
    static const char *shape = "xxx, 00 xxx 0000 00:00:00 GMT";
    for (int k = 0; k < 29; k++) {
        if (shape[k] == 'x')
            continue;
        if (shape[k] == '0') {
            if (!IS(p[k], C_DIGIT))
                return 0;
        }
        else if (p[k] != shape[k])
            return 0;
    }
    return 1;
}

/* ---- header names ---- */

enum {
    H_OTHER = -1,
    H_VIA,
    H_FROM,
    H_TO,
    H_CALL_ID,
    H_CSEQ,
    H_MAX_FORWARDS,
    H_CONTENT_TYPE,
    H_EXPIRES,
    H_CONTACT,
    H_ROUTE,
    H_RECORD_ROUTE,
    H_PROXY_REQUIRE,
    H_DATE,
    H_CONTENT_LENGTH,
    H_TRACKED /* count of the above */
};

typedef struct {
    const char *key;     /* lower-case full name */
    const char *written; /* the usual spelling on the wire */
    int id;
    PyObject *key_obj, *written_obj;
    Py_ssize_t len; /* of key and written: the same */
} KnownName;

static KnownName known[] = {
    {"via", "Via", H_VIA, NULL, NULL, 0},
    {"from", "From", H_FROM, NULL, NULL, 0},
    {"to", "To", H_TO, NULL, NULL, 0},
    {"call-id", "Call-ID", H_CALL_ID, NULL, NULL, 0},
    {"cseq", "CSeq", H_CSEQ, NULL, NULL, 0},
    {"max-forwards", "Max-Forwards", H_MAX_FORWARDS, NULL, NULL, 0},
    {"content-type", "Content-Type", H_CONTENT_TYPE, NULL, NULL, 0},
    {"expires", "Expires", H_EXPIRES, NULL, NULL, 0},
    {"contact", "Contact", H_CONTACT, NULL, NULL, 0},
    {"route", "Route", H_ROUTE, NULL, NULL, 0},
    {"record-route", "Record-Route", H_RECORD_ROUTE, NULL, NULL, 0},
    {"proxy-require", "Proxy-Require", H_PROXY_REQUIRE, NULL, NULL, 0},
    {"date", "Date", H_DATE, NULL, NULL, 0},
    {"content-length", "Content-Length", H_CONTENT_LENGTH, NULL, NULL, 0},
    {"user-agent", "User-Agent", H_OTHER, NULL, NULL, 0},
    {"server", "Server", H_OTHER, NULL, NULL, 0},
    {"allow", "Allow", H_OTHER, NULL, NULL, 0},
    {"supported", "Supported", H_OTHER, NULL, NULL, 0},
    {"require", "Require", H_OTHER, NULL, NULL, 0},
    {"authorization", "Authorization", H_OTHER, NULL, NULL, 0},
    {"proxy-authorization", "Proxy-Authorization", H_OTHER, NULL, NULL, 0},
    {"www-authenticate", "WWW-Authenticate", H_OTHER, NULL, NULL, 0},
    {"proxy-authenticate", "Proxy-Authenticate", H_OTHER, NULL, NULL, 0},
    {"event", "Event", H_OTHER, NULL, NULL, 0},
    {"accept", "Accept", H_OTHER, NULL, NULL, 0},
    {"accept-language", "Accept-Language", H_OTHER, NULL, NULL, 0},
    {"accept-encoding", "Accept-Encoding", H_OTHER, NULL, NULL, 0},
    {"allow-events", "Allow-Events", H_OTHER, NULL, NULL, 0},
    {"subscription-state", "Subscription-State", H_OTHER, NULL, NULL, 0},
    {"path", "Path", H_OTHER, NULL, NULL, 0},
    {"p-asserted-identity", "P-Asserted-Identity", H_OTHER, NULL, NULL, 0},
    {"p-preferred-identity", "P-Preferred-Identity", H_OTHER, NULL, NULL, 0},
    {"remote-party-id", "Remote-Party-ID", H_OTHER, NULL, NULL, 0},
    {"session-expires", "Session-Expires", H_OTHER, NULL, NULL, 0},
    {"min-se", "Min-SE", H_OTHER, NULL, NULL, 0},
    {"timestamp", "Timestamp", H_OTHER, NULL, NULL, 0},
    {"subject", "Subject", H_OTHER, NULL, NULL, 0},
    {"organization", "Organization", H_OTHER, NULL, NULL, 0},
    {"content-disposition", "Content-Disposition", H_OTHER, NULL, NULL, 0},
    {"mime-version", "MIME-Version", H_OTHER, NULL, NULL, 0},
    {"privacy", "Privacy", H_OTHER, NULL, NULL, 0},
    {"diversion", "Diversion", H_OTHER, NULL, NULL, 0},
    {"reason", "Reason", H_OTHER, NULL, NULL, 0},
    {"warning", "Warning", H_OTHER, NULL, NULL, 0},
    {"alert-info", "Alert-Info", H_OTHER, NULL, NULL, 0},
    {"call-info", "Call-Info", H_OTHER, NULL, NULL, 0},
    {"refer-to", "Refer-To", H_OTHER, NULL, NULL, 0},
    {"referred-by", "Referred-By", H_OTHER, NULL, NULL, 0},
    {"replaces", "Replaces", H_OTHER, NULL, NULL, 0},
    {"rseq", "RSeq", H_OTHER, NULL, NULL, 0},
    {"rack", "RAck", H_OTHER, NULL, NULL, 0},
    {"x-serialnumber", "X-Serialnumber", H_OTHER, NULL, NULL, 0},
};
#define N_KNOWN ((int)(sizeof(known) / sizeof(known[0])))

/* The key for a header name (lower-cased, compact forms expanded), its id, and the
 * name as written; new references. `p` is the name as written (up to the colon), `ln`
 * its length without trailing blanks, `lk` that part lower-cased. Common names reuse
 * interned strings instead of allocating. */
static int
name_objects(const char *p, Py_ssize_t n, const char *lk, Py_ssize_t ln, PyObject **key,
             PyObject **written, int *id)
{
    KnownName *hit = NULL;
    if (ln == 1 && lk[0] >= 'a' && lk[0] <= 'z' && CompactKeys[lk[0] - 'a'] != NULL) {
        PyObject *full = CompactKeys[lk[0] - 'a'];
        for (int k = 0; k < N_KNOWN; k++) {
            if (known[k].key_obj == full) {
                hit = &known[k];
                break;
            }
        }
        if ((*written = S(p, n)) == NULL)
            return FAIL;
        *key = Py_NewRef(hit ? hit->key_obj : full);
        *id = hit ? hit->id : H_OTHER;
        return OK;
    }
    for (int k = 0; k < N_KNOWN; k++) {
        if (known[k].len == ln && known[k].key[0] == lk[0] &&
            memcmp(known[k].key, lk, (size_t)ln) == 0) {
            hit = &known[k];
            break;
        }
    }
    if (hit != NULL) {
        if (n == hit->len && memcmp(hit->written, p, (size_t)n) == 0)
            *written = Py_NewRef(hit->written_obj);
        else if ((*written = S(p, n)) == NULL)
            return FAIL;
        *key = Py_NewRef(hit->key_obj);
        *id = hit->id;
        return OK;
    }
    *id = H_OTHER;
    if ((*key = S(lk, ln)) == NULL)
        return FAIL;
    if ((*written = S(p, n)) == NULL) {
        Py_DECREF(*key);
        return FAIL;
    }
    return OK;
}

/* ---- the message ---- */

typedef struct {
    const char *value; /* stripped */
    Py_ssize_t value_n;
    int id;
} Header;

static void
set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    /* Steals `value`. The object is new: its slots are empty. */
    *(PyObject **)((char *)obj + offset) = value;
}

/* 0: the limits are loaded; 1: they are not plain integers (the Python parser then
 * decides what they mean); -1: an exception. Values beyond Py_ssize_t are clamped:
 * as limits they mean the same. */
/* Whether a non-ASCII value starts or ends with Unicode whitespace (NBSP, NEL ...):
 * str.strip() removes those, and the C path strips only space and tab. */
static int
edge_space(PyObject *value)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    return n > 0 && (Py_UNICODE_ISSPACE(PyUnicode_READ_CHAR(value, 0)) ||
                     Py_UNICODE_ISSPACE(PyUnicode_READ_CHAR(value, n - 1)));
}

static int
load_limits(PyObject *limits)
{
    if (limits == cached_limits)
        return 0;
    static const char *names[4] = {"max_message_size", "max_headers", "max_line_length",
                                   "max_uri_length"};
    Py_ssize_t values[4];
    for (int k = 0; k < 4; k++) {
        PyObject *v = PyObject_GetAttrString(limits, names[k]);
        if (v == NULL || !PyLong_Check(v)) {
            Py_XDECREF(v);
            if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_AttributeError))
                return -1;
            PyErr_Clear();
            return 1;
        }
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        Py_DECREF(v);
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (overflow > 0 || x > PY_SSIZE_T_MAX)
            values[k] = PY_SSIZE_T_MAX;
        else if (overflow < 0 || x < 0)
            values[k] = -1; /* every message exceeds it: the Python parser says so */
        else
            values[k] = (Py_ssize_t)x;
    }
    lim_size = values[0];
    lim_headers = values[1];
    lim_line = values[2];
    lim_uri = values[3];
    Py_XSETREF(cached_limits, Py_NewRef(limits));
    return 0;
}

static PyObject *
not_fast(void)
{
    Py_RETURN_NONE;
}

/* typed[key] = value, stealing `value` (NULL: an allocation failed). */
static int
put(PyObject *typed, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return FAIL;
    int rc = PyDict_SetItem(typed, key, value);
    Py_DECREF(value);
    return rc < 0 ? FAIL : OK;
}

/* typed[key] = an unsigned header value (Max-Forwards, Expires) at most `limit`. */
static int
put_uint(PyObject *typed, PyObject *key, const Header *h, unsigned long long limit)
{
    unsigned long long number;
    if (parse_uint(h->value, h->value_n, limit, &number) != OK)
        return NOT_FAST;
    return put(typed, key, PyLong_FromUnsignedLongLong(number));
}

/* typed[key] = the values of every line of header `id`, in order (Via, Route,
 * Record-Route); the list, borrowed from the dict, in *out. */
static int
collect(PyObject *typed, PyObject *key, int id, ValueParser parse, Header *hs, Py_ssize_t nh,
        Py_ssize_t from, PyObject **out)
{
    PyObject *list = PyList_New(0);
    if (put(typed, key, list) != OK) /* the dict keeps the list alive */
        return FAIL;
    *out = list;
    for (Py_ssize_t j = from < 0 ? nh : from; j < nh; j++) {
        if (hs[j].id != id)
            continue;
        int rc = append_values(hs[j].value, hs[j].value_n, parse, list);
        if (rc != OK)
            return rc;
    }
    return OK;
}

/* Build the typed cache and defects (message._validate) into msg. */
static int
validate(PyObject *msg, int is_request, PyObject *method, Header *hs, Py_ssize_t nh,
         const Py_ssize_t *first, const int *count, PyObject *typed)
{
    PyObject *v = NULL;
    int rc;
    PyObject *defects[16];
    int nd = 0;

    static const int required[5] = {H_VIA, H_FROM, H_TO, H_CALL_ID, H_CSEQ};
    for (int k = 0; k < 5; k++)
        if (first[required[k]] < 0)
            defects[nd++] = D_missing[k];
    static const int single[7] = {H_FROM,         H_TO,           H_CALL_ID, H_CSEQ,
                                  H_MAX_FORWARDS, H_CONTENT_TYPE, H_EXPIRES};
    for (int k = 0; k < 7; k++)
        if (count[single[k]] > 1)
            defects[nd++] = D_multiple[k];

    PyObject *vias;
    if ((rc = collect(typed, K_via, H_VIA, via_fast, hs, nh, first[H_VIA], &vias)) != OK)
        return rc;
    Py_ssize_t j;
    if ((j = first[H_FROM]) >= 0) {
        if ((rc = name_addr_fast(hs[j].value, hs[j].value_n, &v)) != OK)
            return rc;
        if (put(typed, K_from, v) != OK)
            return FAIL;
    }
    if ((j = first[H_TO]) >= 0) {
        if ((rc = name_addr_fast(hs[j].value, hs[j].value_n, &v)) != OK)
            return rc;
        if (put(typed, K_to, v) != OK)
            return FAIL;
    }
    if ((j = first[H_CALL_ID]) >= 0) {
        const char *p = hs[j].value;
        Py_ssize_t n = hs[j].value_n;
        if (n == 0 || memchr(p, ' ', (size_t)n) || memchr(p, '\t', (size_t)n))
            return NOT_FAST;
        if (put(typed, K_call_id, S(p, n)) != OK)
            return FAIL;
    }
    if ((j = first[H_CSEQ]) >= 0) {
        /* value.split(): exactly two words; the method a token */
        const char *p = hs[j].value;
        Py_ssize_t n = hs[j].value_n, i = 0;
        while (i < n && p[i] != ' ' && p[i] != '\t')
            i++;
        Py_ssize_t num_n = i;
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        Py_ssize_t ms = i;
        while (i < n && IS(p[i], C_TOKEN))
            i++;
        if (num_n == 0 || i == ms || i != n)
            return NOT_FAST;
        unsigned long long number;
        if (parse_uint(p, num_n, MAX_CSEQ, &number) != OK)
            return NOT_FAST;
        PyObject *m;
        if (is_request) {
            if (PyUnicode_GET_LENGTH(method) != i - ms ||
                memcmp(PyUnicode_1BYTE_DATA(method), p + ms, (size_t)(i - ms)) != 0)
                return NOT_FAST; /* cseq_method_mismatch */
            m = Py_NewRef(method);
        }
        else if ((m = S(p + ms, i - ms)) == NULL) {
            return FAIL;
        }
        PyObject *items[2] = {PyLong_FromUnsignedLongLong(number), m};
        if (items[0] == NULL) {
            Py_DECREF(m);
            return FAIL;
        }
        if ((v = new_tuple_of(CSeqType, 2, items)) == NULL)
            return FAIL;
        if (put(typed, K_cseq, v) != OK)
            return FAIL;
    }
    if ((j = first[H_MAX_FORWARDS]) >= 0 &&
        (rc = put_uint(typed, K_max_forwards, &hs[j], 255)) != OK)
        return rc;
    if ((j = first[H_CONTACT]) >= 0) {
        if (count[H_CONTACT] > 1)
            return NOT_FAST; /* several Contact lines: rare, the Python parser */
        if (hs[j].value_n == 1 && hs[j].value[0] == '*')
            rc = put(typed, K_contact, Py_NewRef(Star));
        else
            rc = collect(typed, K_contact, H_CONTACT, name_addr_fast, hs, nh, j, &v);
        if (rc != OK)
            return rc;
    }
    if ((j = first[H_EXPIRES]) >= 0 &&
        (rc = put_uint(typed, K_expires, &hs[j], MAX_UINT32)) != OK)
        return rc;
    if ((rc = collect(typed, K_route, H_ROUTE, name_addr_fast, hs, nh, first[H_ROUTE], &v)) !=
            OK ||
        (rc = collect(typed, K_record_route, H_RECORD_ROUTE, name_addr_fast, hs, nh,
                      first[H_RECORD_ROUTE], &v)) != OK)
        return rc;
    if (first[H_PROXY_REQUIRE] < 0 && put(typed, K_proxy_require, PyList_New(0)) != OK)
        return FAIL;
    if ((j = first[H_DATE]) >= 0 && !date_ok(hs[j].value, hs[j].value_n))
        return NOT_FAST;

    if (is_request && first[H_MAX_FORWARDS] < 0)
        defects[nd++] = D_missing_mf;
    if (PyList_GET_SIZE(vias) > 0) {
        PyObject *top_params = PyTuple_GET_ITEM(PyList_GET_ITEM(vias, 0), 4);
        PyObject *branch = PyDict_GetItemWithError(top_params, S_branch); /* borrowed */
        if (branch == NULL && PyErr_Occurred())
            return FAIL;
        if (branch == NULL || branch == Py_None) {
            defects[nd++] = D_branch_missing;
        }
        else {
            Py_ssize_t bn = PyUnicode_GET_LENGTH(branch);
            const Py_UCS1 *b = PyUnicode_1BYTE_DATA(branch);
            if (bn < 7 || memcmp(b, "z9hG4bK", 7) != 0)
                defects[nd++] = D_branch_rfc2543;
            else if (bn == 7)
                defects[nd++] = D_branch_empty;
        }
    }
    if (nd > 0) {
        PyObject *t = PyTuple_New(nd);
        if (t == NULL)
            return FAIL;
        for (int k = 0; k < nd; k++)
            PyTuple_SET_ITEM(t, k, Py_NewRef(defects[k]));
        PyObject *old = *(PyObject **)((char *)msg + off_defects);
        set_slot(msg, off_defects, t);
        Py_XDECREF(old);
    }
    return OK;
}

static PyObject *
cparse(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse(data, limits)");
        return NULL;
    }
    PyObject *data = args[0];
    if (!ready || !PyBytes_CheckExact(data))
        return not_fast();
    int lim = load_limits(args[1]);
    if (lim < 0)
        return NULL;
    if (lim > 0)
        return not_fast();
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size > lim_size)
        return not_fast();

    /* Framing: leading CRLFs, the head up to CRLFCRLF, then the body. */
    Py_ssize_t start = 0;
    while (start + 1 < size && buf[start] == '\r' && buf[start + 1] == '\n')
        start += 2;
    Py_ssize_t end = -1;
    for (Py_ssize_t i = start; i + 3 < size; i++) {
        const char *q = memchr(buf + i, '\r', (size_t)(size - 3 - i));
        if (q == NULL)
            break;
        i = q - buf;
        if (buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') {
            end = i;
            break;
        }
    }
    if (end <= start)
        return not_fast(); /* no empty line (or an empty head): the Python parser */
    Py_ssize_t body_start = end + 4;

    /* Lines: no control bytes but tab, CRLF-separated, no folding. Bytes above 0x7f
     * may appear (UTF-8 display names, reason phrases): values are decoded by S(), and
     * every grammar class is ASCII-only, so they never enter a URI, token or param. */
    Py_ssize_t line_start[MAX_LINES], line_len[MAX_LINES];
    Py_ssize_t max_lines = lim_headers < MAX_LINES - 1 ? lim_headers + 1 : MAX_LINES;
    Py_ssize_t nlines = 0, ls = start, i = start;
    for (;;) {
        /* Skip ordinary bytes a word at a time; stop at a possible control byte. */
        while (i + 8 <= end && !maybe_control(load8(buf + i)))
            i += 8;
        unsigned char c = i < end ? (unsigned char)buf[i] : '\r';
        if (c == '\r') {
            if (i < end && buf[i + 1] != '\n')
                return not_fast();
            if (nlines >= max_lines || i - ls > lim_line)
                return not_fast();
            line_start[nlines] = ls;
            line_len[nlines] = i - ls;
            nlines++;
            if (i >= end)
                break;
            i += 2; /* CR LF */
            ls = i;
            if (ls < end && (buf[ls] == ' ' || buf[ls] == '\t'))
                return not_fast(); /* folded line */
            continue;
        }
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return not_fast();
        i++;
    }

    /* Header lines. */
    Header hs[MAX_LINES];
    Py_ssize_t nh = nlines - 1;
    Py_ssize_t first[H_TRACKED];
    int count[H_TRACKED];
    for (int k = 0; k < H_TRACKED; k++) {
        first[k] = -1;
        count[k] = 0;
    }
    PyObject *fields = PyList_New(nh);
    if (fields == NULL)
        return NULL;
    PyObject *result = NULL, *msg = NULL, *typed = NULL, *body = NULL, *raw = NULL;
    PyObject *uri = NULL;
    PyObject *method = NULL;
    for (Py_ssize_t h = 0; h < nh; h++) {
        const char *p = buf + line_start[h + 1];
        Py_ssize_t n = line_len[h + 1];
        Py_ssize_t colon = find_char(p, n, ':');
        if (colon < 0)
            goto not_fast;
        Py_ssize_t ln = colon;
        while (ln > 0 && (p[ln - 1] == ' ' || p[ln - 1] == '\t'))
            ln--;
        if (ln == 0 || ln > 64 || !all_class(p, ln, C_TOKEN))
            goto not_fast;
        char lk[64];
        for (Py_ssize_t k = 0; k < ln; k++)
            lk[k] = (p[k] >= 'A' && p[k] <= 'Z') ? (char)(p[k] + 32) : p[k];
        PyObject *key, *written, *value;
        int id;
        if (name_objects(p, colon, lk, ln, &key, &written, &id) != OK)
            goto fail;
        const char *v = p + colon + 1;
        Py_ssize_t vn = n - colon - 1;
        strip(&v, &vn);
        hs[h].value = v;
        hs[h].value_n = vn;
        hs[h].id = id;
        if (id >= 0) {
            if (first[id] < 0)
                first[id] = h;
            count[id]++;
        }
        PyObject *t = NULL;
        if ((value = S(v, vn)) == NULL || (t = PyTuple_New(3)) == NULL) {
            Py_DECREF(key);
            Py_DECREF(written);
            Py_XDECREF(value);
            goto fail;
        }
        PyList_SET_ITEM(fields, h, t);
        PyTuple_SET_ITEM(t, 0, key);
        PyTuple_SET_ITEM(t, 1, written);
        PyTuple_SET_ITEM(t, 2, value);
        if (!PyUnicode_IS_ASCII(value) && edge_space(value))
            goto not_fast; /* Python's strip() would take this one off too */
    }


    /* Body framing by Content-Length; without one the body is the rest. */
    Py_ssize_t rest_len = size - body_start;
    Py_ssize_t body_len = rest_len;
    if (first[H_CONTENT_LENGTH] >= 0) {
        if (count[H_CONTENT_LENGTH] > 1)
            goto not_fast;
        unsigned long long cl;
        Header *c = &hs[first[H_CONTENT_LENGTH]];
        if (parse_uint(c->value, c->value_n, MAX_UINT32, &cl) != OK ||
            cl > (unsigned long long)rest_len)
            goto not_fast;
        body_len = (Py_ssize_t)cl;
    }
    body = PyBytes_FromStringAndSize(buf + body_start, body_len);
    if (body == NULL)
        goto fail;
    if (start == 0 && body_len == rest_len)
        raw = Py_NewRef(data);
    else
        raw = PyBytes_FromStringAndSize(buf + start, body_start + body_len - start);
    if (raw == NULL)
        goto fail;

    /* Start line. */
    const char *l0 = buf + line_start[0];
    Py_ssize_t n0 = line_len[0];
    int is_request = !(n0 >= 4 && memcmp(l0, "SIP/", 4) == 0);
    if (is_request) {
        Py_ssize_t sp1 = find_char(l0, n0, ' ');
        if (sp1 <= 0)
            goto not_fast;
        Py_ssize_t sp2 = find_char(l0 + sp1 + 1, n0 - sp1 - 1, ' ');
        if (sp2 <= 0)
            goto not_fast; /* also an empty Request-URI */
        sp2 += sp1 + 1;
        if (find_char(l0 + sp2 + 1, n0 - sp2 - 1, ' ') >= 0)
            goto not_fast;
        if (!all_class(l0, sp1, C_TOKEN) || !ieq(l0 + sp2 + 1, n0 - sp2 - 1, "sip/2.0"))
            goto not_fast;
        const char *u = l0 + sp1 + 1;
        Py_ssize_t un = sp2 - sp1 - 1;
        if (u[0] == '<')
            goto not_fast;
        int rc = uri_fast(u, un, lim_uri, &uri);
        if (rc == FAIL)
            goto fail;
        if (rc == NOT_FAST)
            goto not_fast;
        method = S(l0, sp1);
        if (method == NULL)
            goto fail;
        msg = RequestType->tp_alloc(RequestType, 0);
        if (msg == NULL)
            goto fail;
        set_slot(msg, off_req_method, Py_NewRef(method));
        set_slot(msg, off_req_uri, uri);
        uri = NULL;
    }
    else {
        /* "SIP/2.0 NNN reason" (the reason may be empty, or absent with its space) */
        if (n0 < 11 || !ieq(l0, 7, "sip/2.0") || l0[7] != ' ')
            goto not_fast;
        if (!IS(l0[8], C_DIGIT) || !IS(l0[9], C_DIGIT) || !IS(l0[10], C_DIGIT))
            goto not_fast;
        if (n0 > 11 && l0[11] != ' ')
            goto not_fast;
        long status = (l0[8] - '0') * 100 + (l0[9] - '0') * 10 + (l0[10] - '0');
        if (status < 100 || status > 699)
            goto not_fast;
        PyObject *st = PyLong_FromLong(status);
        PyObject *reason = n0 > 12 ? S(l0 + 12, n0 - 12) : PyUnicode_New(0, 0);
        msg = (st && reason) ? ResponseType->tp_alloc(ResponseType, 0) : NULL;
        if (msg == NULL) {
            Py_XDECREF(st);
            Py_XDECREF(reason);
            goto fail;
        }
        set_slot(msg, off_resp_status, st);
        set_slot(msg, off_resp_reason, reason);
    }
    typed = PyDict_New();
    if (typed == NULL)
        goto fail;
    set_slot(msg, off_fields, Py_NewRef(fields));
    set_slot(msg, off_body, Py_NewRef(body));
    set_slot(msg, off_raw, Py_NewRef(raw));
    set_slot(msg, off_typed, Py_NewRef(typed));
    set_slot(msg, off_defects, PyTuple_New(0));
    {
        int rc = validate(msg, is_request, method, hs, nh, first, count, typed);
        if (rc == FAIL)
            goto fail;
        if (rc == NOT_FAST)
            goto not_fast;
    }
    result = msg; /* success: the reference moves to the caller */
    msg = NULL;
    goto done;
not_fast:
    result = Py_NewRef(Py_None);
fail: /* result stays NULL: an exception is set */
done:
    Py_DECREF(fields);
    Py_XDECREF(msg);
    Py_XDECREF(typed);
    Py_XDECREF(body);
    Py_XDECREF(raw);
    Py_XDECREF(uri);
    Py_XDECREF(method);
    return result;
}

/* ---- accessors: the typed cache and header params, read without a Python frame ----
 *
 * A Python property costs a frame per read, and the proxy reads Via, From, To, Call-ID
 * and CSeq of every message several times. These two descriptors do in C what the
 * Python properties in message.py and headers.py do (message.py installs them over
 * those properties when this module loads; tests/test_sip_cparse.py holds them equal). */

typedef struct {
    PyObject_HEAD
    PyObject *key;     /* CachedAttr: typed-cache key; ParamAttr: parameter name */
    PyObject *compute; /* CachedAttr: callable(message) -> value, for a cache miss */
    Py_ssize_t index;  /* ParamAttr: the tuple field that holds the params dict */
    PyObject *doc;
} Attr;

static int
attr_traverse(Attr *self, visitproc visit, void *arg)
{
    Py_VISIT(self->key);
    Py_VISIT(self->compute);
    Py_VISIT(self->doc);
    return 0;
}

static int
attr_clear(Attr *self)
{
    Py_CLEAR(self->key);
    Py_CLEAR(self->compute);
    Py_CLEAR(self->doc);
    return 0;
}

static void
attr_dealloc(Attr *self)
{
    PyObject_GC_UnTrack(self);
    attr_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
attr_get_doc(Attr *self, void *closure)
{
    return Py_NewRef(self->doc ? self->doc : Py_None);
}

static PyGetSetDef attr_getset[] = {{"__doc__", (getter)attr_get_doc, NULL, NULL, NULL},
                                    {NULL, NULL, NULL, NULL, NULL}};

/* Equivalent of:  try: return msg._typed[key]
 *                 except KeyError: msg._typed[key] = v = compute(msg); return v */
static PyObject *
cached_get(Attr *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    if (MessageType == NULL || !PyObject_TypeCheck(obj, MessageType)) {
        PyErr_Format(PyExc_TypeError, "expected a SIP message, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyObject *typed = *(PyObject **)((char *)obj + off_typed);
    if (typed != NULL && PyDict_CheckExact(typed)) {
        PyObject *v = PyDict_GetItemWithError(typed, self->key);
        if (v != NULL)
            return Py_NewRef(v);
        if (PyErr_Occurred())
            return NULL;
    }
    PyObject *v = PyObject_CallOneArg(self->compute, obj);
    if (v == NULL)
        return NULL;
    typed = *(PyObject **)((char *)obj + off_typed); /* compute() may have replaced it */
    if (typed != NULL && PyDict_CheckExact(typed) && PyDict_SetItem(typed, self->key, v) < 0) {
        Py_DECREF(v);
        return NULL;
    }
    return v;
}

/* Equivalent of:  return self.params.get(name)  on a NamedTuple (Via, NameAddr). */
static PyObject *
param_get(Attr *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) <= self->index) {
        PyErr_Format(PyExc_TypeError, "expected a header value, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyObject *params = PyTuple_GET_ITEM(obj, self->index);
    if (!PyDict_CheckExact(params))
        return PyObject_CallMethod(params, "get", "O", self->key);
    PyObject *v = PyDict_GetItemWithError(params, self->key);
    if (v == NULL && PyErr_Occurred())
        return NULL;
    return Py_NewRef(v ? v : Py_None);
}

static PyObject *
attr_new(PyTypeObject *type, PyObject *key, PyObject *compute, Py_ssize_t index, PyObject *doc)
{
    Attr *self = PyObject_GC_New(Attr, type);
    if (self == NULL)
        return NULL;
    self->key = Py_NewRef(key);
    self->compute = Py_XNewRef(compute);
    self->index = index;
    self->doc = doc == Py_None ? NULL : Py_XNewRef(doc);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyTypeObject CachedAttrType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "spitguard.sip._cparse.CachedAttr",
    .tp_basicsize = sizeof(Attr),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)attr_dealloc,
    .tp_traverse = (traverseproc)attr_traverse,
    .tp_clear = (inquiry)attr_clear,
    .tp_descr_get = (descrgetfunc)cached_get,
    .tp_getset = attr_getset,
};

static PyTypeObject ParamAttrType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "spitguard.sip._cparse.ParamAttr",
    .tp_basicsize = sizeof(Attr),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)attr_dealloc,
    .tp_traverse = (traverseproc)attr_traverse,
    .tp_clear = (inquiry)attr_clear,
    .tp_descr_get = (descrgetfunc)param_get,
    .tp_getset = attr_getset,
};

static PyObject *
cached_attr(PyObject *module, PyObject *args)
{
    PyObject *key, *compute, *doc = Py_None;
    if (!PyArg_ParseTuple(args, "UO|O", &key, &compute, &doc))
        return NULL;
    if (!PyCallable_Check(compute)) {
        PyErr_SetString(PyExc_TypeError, "compute must be callable");
        return NULL;
    }
    return attr_new(&CachedAttrType, key, compute, 0, doc);
}

static PyObject *
param_attr(PyObject *module, PyObject *args)
{
    PyObject *name, *doc = Py_None;
    Py_ssize_t index;
    if (!PyArg_ParseTuple(args, "nU|O", &index, &name, &doc))
        return NULL;
    if (index < 0) {
        PyErr_SetString(PyExc_ValueError, "index must be >= 0");
        return NULL;
    }
    return attr_new(&ParamAttrType, name, NULL, index, doc);
}

/* ---- setup: the Python classes and constants this builds ---- */

static int
slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset)
{
    PyObject *d = PyObject_GetAttrString((PyObject *)type, name);
    if (d == NULL)
        return -1;
    if (!Py_IS_TYPE(d, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
        Py_DECREF(d);
        PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ member", type->tp_name, name);
        return -1;
    }
    *offset = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    return 0;
}

static int
tuple_type(PyObject *obj, Py_ssize_t fields, PyTypeObject **out, const char *what)
{
    if (!PyType_Check(obj) || !PyType_IsSubtype((PyTypeObject *)obj, &PyTuple_Type)) {
        PyErr_Format(PyExc_TypeError, "%s must be a NamedTuple class", what);
        return -1;
    }
    PyObject *f = PyObject_GetAttrString(obj, "_fields");
    if (f == NULL)
        return -1;
    Py_ssize_t n = PyTuple_Check(f) ? PyTuple_GET_SIZE(f) : -1;
    Py_DECREF(f);
    if (n != fields) {
        PyErr_Format(PyExc_TypeError, "%s must have %zd fields", what, fields);
        return -1;
    }
    Py_XSETREF(*out, (PyTypeObject *)Py_NewRef(obj));
    return 0;
}

static PyObject *
intern(const char *s)
{
    return PyUnicode_InternFromString(s);
}

static PyObject *
setup(PyObject *module, PyObject *args)
{
    PyObject *base, *req, *resp, *sip_uri, *via, *name_addr, *cseq, *star, *empty, *compact;
    ready = 0;
    if (!PyArg_ParseTuple(args, "O!O!O!OOOOOO!O!", &PyType_Type, &base, &PyType_Type, &req,
                          &PyType_Type, &resp,
                          &sip_uri, &via, &name_addr, &cseq, &star, &PyDict_Type, &empty,
                          &PyDict_Type, &compact))
        return NULL;
    if (tuple_type(sip_uri, 7, &SipUriType, "SipUri") < 0 ||
        tuple_type(via, 5, &ViaType, "Via") < 0 ||
        tuple_type(name_addr, 3, &NameAddrType, "NameAddr") < 0 ||
        tuple_type(cseq, 2, &CSeqType, "CSeq") < 0)
        return NULL;
    PyTypeObject *rq = (PyTypeObject *)req, *rs = (PyTypeObject *)resp;
    if (!PyType_IsSubtype(rq, (PyTypeObject *)base) || !PyType_IsSubtype(rs, (PyTypeObject *)base)) {
        PyErr_SetString(PyExc_TypeError, "Request and Response must derive from Message");
        return NULL;
    }
    if (slot_offset(rq, "_fields", &off_fields) < 0 || slot_offset(rq, "_body", &off_body) < 0 ||
        slot_offset(rq, "_raw", &off_raw) < 0 || slot_offset(rq, "_typed", &off_typed) < 0 ||
        slot_offset(rq, "defects", &off_defects) < 0 ||
        slot_offset(rq, "_uri", &off_req_uri) < 0 ||
        slot_offset(rq, "method", &off_req_method) < 0 ||
        slot_offset(rs, "status", &off_resp_status) < 0 ||
        slot_offset(rs, "reason", &off_resp_reason) < 0)
        return NULL;
    Py_ssize_t check;
    if (slot_offset(rs, "_fields", &check) < 0)
        return NULL;
    if (check != off_fields) {
        PyErr_SetString(PyExc_TypeError, "Request and Response must share Message's slots");
        return NULL;
    }
    Py_XSETREF(MessageType, (PyTypeObject *)Py_NewRef(base));
    Py_XSETREF(RequestType, (PyTypeObject *)Py_NewRef(req));
    Py_XSETREF(ResponseType, (PyTypeObject *)Py_NewRef(resp));
    Py_XSETREF(Star, Py_NewRef(star));
    Py_XSETREF(EmptyParams, Py_NewRef(empty));

    for (int k = 0; k < 26; k++)
        Py_CLEAR(CompactKeys[k]);
    PyObject *name, *full;
    Py_ssize_t pos = 0;
    while (PyDict_Next(compact, &pos, &name, &full)) {
        if (!PyUnicode_Check(name) || PyUnicode_GET_LENGTH(name) != 1 ||
            !PyUnicode_Check(full) || !PyUnicode_IS_ASCII(full)) {
            PyErr_SetString(PyExc_TypeError, "compact forms: one letter -> full name");
            return NULL;
        }
        Py_UCS4 c = PyUnicode_READ_CHAR(name, 0);
        if (c < 'a' || c > 'z') {
            PyErr_SetString(PyExc_TypeError, "compact forms: lower-case letters");
            return NULL;
        }
        Py_INCREF(full);
        PyUnicode_InternInPlace(&full);
        Py_XSETREF(CompactKeys[c - 'a'], full);
    }
    ready = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))cparse, METH_FASTCALL,
     "parse(data, limits) -> Request | Response | None\n\n"
     "The everyday shapes of spitguard.sip.parse(); None for anything else (the Python "
     "parser then decides, and is the only one that raises)."},
    {"setup", setup, METH_VARARGS,
     "setup(Message, Request, Response, SipUri, Via, NameAddr, CSeq, STAR, EMPTY_PARAMS, "
     "COMPACT): the classes to build."},
    {"CachedAttr", cached_attr, METH_VARARGS,
     "CachedAttr(key, compute, doc=None): a message attribute read from the typed cache; "
     "on a miss, compute(message) fills it."},
    {"ParamAttr", param_attr, METH_VARARGS,
     "ParamAttr(index, name, doc=None): params.get(name) of a NamedTuple header value "
     "whose field `index` holds the params."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_cparse", "C fast path of spitguard.sip.parse.", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC
PyInit__cparse(void)
{
    init_classes();
    for (int k = 0; k < N_KNOWN; k++) {
        known[k].len = (Py_ssize_t)strlen(known[k].key);
        if ((Py_ssize_t)strlen(known[k].written) != known[k].len) {
            PyErr_SetString(PyExc_SystemError, "_cparse: known header table");
            return NULL;
        }
        if ((known[k].key_obj = intern(known[k].key)) == NULL ||
            (known[k].written_obj = intern(known[k].written)) == NULL)
            return NULL;
    }
    for (int k = 0; k < N_COMMON_PARAMS; k++) {
        common_param_lens[k] = (Py_ssize_t)strlen(common_params[k]);
        if ((common_param_objs[k] = intern(common_params[k])) == NULL)
            return NULL;
    }
    static const char *missing[5] = {"missing:via", "missing:from", "missing:to",
                                     "missing:call-id", "missing:cseq"};
    static const char *multiple[7] = {"multiple:from",         "multiple:to",
                                      "multiple:call-id",      "multiple:cseq",
                                      "multiple:max-forwards", "multiple:content-type",
                                      "multiple:expires"};
    for (int k = 0; k < 5; k++)
        if ((D_missing[k] = intern(missing[k])) == NULL)
            return NULL;
    for (int k = 0; k < 7; k++)
        if ((D_multiple[k] = intern(multiple[k])) == NULL)
            return NULL;
    if ((D_missing_mf = intern("missing:max-forwards")) == NULL ||
        (D_branch_missing = intern("branch:missing")) == NULL ||
        (D_branch_rfc2543 = intern("branch:rfc2543")) == NULL ||
        (D_branch_empty = intern("branch:empty")) == NULL || (S_sip = intern("sip")) == NULL ||
        (S_sips = intern("sips")) == NULL || (S_sip20 = intern("SIP/2.0")) == NULL ||
        (S_branch = intern("branch")) == NULL || (K_via = intern("via")) == NULL ||
        (K_from = intern("from")) == NULL || (K_to = intern("to")) == NULL ||
        (K_call_id = intern("call-id")) == NULL || (K_cseq = intern("cseq")) == NULL ||
        (K_max_forwards = intern("max-forwards")) == NULL ||
        (K_contact = intern("contact")) == NULL || (K_expires = intern("expires")) == NULL ||
        (K_route = intern("route")) == NULL || (K_record_route = intern("record-route")) == NULL ||
        (K_proxy_require = intern("proxy-require")) == NULL)
        return NULL;
    if (PyType_Ready(&CachedAttrType) < 0 || PyType_Ready(&ParamAttrType) < 0)
        return NULL;
    return PyModule_Create(&moduledef);
}
