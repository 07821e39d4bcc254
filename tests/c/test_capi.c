/*
 * Tests of the enctensor C ABI (rust_core/include/enctensor.h), built and run by
 * scripts/c_tests.sh with the system C compiler, against the shared and the static library.
 *
 *   test_capi all <manifest> <vectors dir> <big file>   every entry point and error code, then
 *                                                       every spec vector (vectors_manifest.py)
 *   test_capi api <manifest> <vectors dir> <big file>   the entry points and error codes only
 *   test_capi hostile <file or dir>...                  hostile inputs: open (memory and path)
 *                                                       with the vectors' key, read everything;
 *                                                       any status is fine, a crash or leak is not
 *   test_capi flip <file>...                            every one-bit change and truncations of
 *                                                       valid files: a typed error, or the same
 *                                                       tensors
 *
 * <big file> holds tensors "a" (3 MiB of uint32 0, 1, 2, ...) and "b" (5 MiB of uint32 i * 3),
 * written by scripts/c_tests.sh with the Python package under key bytes(range(32)): large
 * enough for the reader's parallel path (2 MiB and more), so that the per-handle thread pools
 * are exercised.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "enctensor.h"
#include "sha256.h"

/* ---- checks ---------------------------------------------------------------------------------- */

static long checks, failures;
/* Which status codes an EXPECT_STATUS has seen returned as expected. */
static int seen[ENCT_ERR_PANIC + 1];

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: (%s) ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " [last error: %s]\n", enct_last_error());                     \
        }                                                                                  \
    } while (0)

#define EXPECT_STATUS(call, want)                                                          \
    do {                                                                                   \
        enct_status got_ = (call);                                                         \
        enct_status want_ = (want);                                                        \
        checks++;                                                                          \
        if (got_ != want_) {                                                               \
            failures++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: %s returned %s, expected %s: %s\n", __FILE__,      \
                    __LINE__, #call, enct_status_name(got_), enct_status_name(want_),      \
                    got_ == ENCT_OK ? "" : enct_last_error());                             \
        } else if (want_ >= 0 && want_ <= ENCT_ERR_PANIC) {                                \
            seen[want_] = 1;                                                               \
        }                                                                                  \
    } while (0)

/* The last error message contains `needle`. */
static int message_has(const char *needle) { return strstr(enct_last_error(), needle) != NULL; }

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static int all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

typedef struct {
    uint8_t *p;
    size_t n;
} bytes;

static bytes read_file(const char *path) {
    bytes b = {NULL, 0};
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    b.n = (size_t)len;
    b.p = xmalloc(b.n);
    if (b.n && fread(b.p, 1, b.n, f) != b.n) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    return b;
}

/* ---- the manifest (see vectors_manifest.py) ------------------------------------------------ */

typedef struct {
    bytes name;
    char dtype[16];
    int encrypted;
    size_t ndim;
    uint64_t dims[64];
    char sha256[65];
} mtensor;

typedef struct {
    bytes kind, salt, share, body;
    uint32_t log_n;
} mstanza;

typedef struct {
    bytes key, value;
} mmeta;

typedef struct {
    char name[160];
    char expect[16];
    char cred[16];
    bytes secret, verify, filekey;
    unsigned cap;
    mtensor *tensors;
    size_t n_tensors;
    mmeta *meta;
    size_t n_meta;
    mstanza *stanzas;
    size_t n_stanzas;
} mvector;

typedef struct {
    mvector *v;
    size_t n;
} manifest;

static bytes unhex(const char *tok) {
    bytes b = {NULL, 0};
    if (!tok || tok[0] != 'x') {
        fprintf(stderr, "manifest: bad hex token %s\n", tok ? tok : "(none)");
        exit(2);
    }
    size_t n = strlen(tok + 1) / 2;
    b.p = xmalloc(n);
    b.n = n;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(tok + 1 + 2 * i, "%2x", &v);
        b.p[i] = (uint8_t)v;
    }
    return b;
}

#define GROW(arr, count) (arr = realloc(arr, ((count) + 1) * sizeof *(arr)), &(arr)[(count)++])

static manifest load_manifest(const char *path) {
    manifest m = {NULL, 0};
    bytes text = read_file(path);
    char *buf = xmalloc(text.n + 1);
    memcpy(buf, text.p, text.n);
    buf[text.n] = 0;
    free(text.p);
    mvector *cur = NULL;
    char *save_line = NULL;
    for (char *line = strtok_r(buf, "\n", &save_line); line; line = strtok_r(NULL, "\n", &save_line)) {
        char *save = NULL;
        char *word = strtok_r(line, " ", &save);
        if (!word) continue;
        if (!strcmp(word, "vector")) {
            cur = GROW(m.v, m.n);
            memset(cur, 0, sizeof *cur);
            snprintf(cur->name, sizeof cur->name, "%s", strtok_r(NULL, " ", &save));
            snprintf(cur->expect, sizeof cur->expect, "%s", strtok_r(NULL, " ", &save));
        } else if (!strcmp(word, "cred")) {
            snprintf(cur->cred, sizeof cur->cred, "%s", strtok_r(NULL, " ", &save));
            cur->secret = unhex(strtok_r(NULL, " ", &save));
        } else if (!strcmp(word, "verify")) {
            cur->verify = unhex(strtok_r(NULL, " ", &save));
        } else if (!strcmp(word, "cap")) {
            cur->cap = (unsigned)strtoul(strtok_r(NULL, " ", &save), NULL, 10);
        } else if (!strcmp(word, "tensor")) {
            mtensor *t = GROW(cur->tensors, cur->n_tensors);
            t->name = unhex(strtok_r(NULL, " ", &save));
            snprintf(t->dtype, sizeof t->dtype, "%s", strtok_r(NULL, " ", &save));
            t->encrypted = atoi(strtok_r(NULL, " ", &save));
            t->ndim = strtoul(strtok_r(NULL, " ", &save), NULL, 10);
            for (size_t d = 0; d < t->ndim; d++) t->dims[d] = strtoull(strtok_r(NULL, " ", &save), NULL, 10);
            snprintf(t->sha256, sizeof t->sha256, "%s", strtok_r(NULL, " ", &save));
        } else if (!strcmp(word, "meta")) {
            mmeta *e = GROW(cur->meta, cur->n_meta);
            e->key = unhex(strtok_r(NULL, " ", &save));
            e->value = unhex(strtok_r(NULL, " ", &save));
        } else if (!strcmp(word, "filekey")) {
            cur->filekey = unhex(strtok_r(NULL, " ", &save));
        } else if (!strcmp(word, "stanza")) {
            mstanza *s = GROW(cur->stanzas, cur->n_stanzas);
            s->kind = unhex(strtok_r(NULL, " ", &save));
            s->salt = unhex(strtok_r(NULL, " ", &save));
            s->log_n = (uint32_t)strtoul(strtok_r(NULL, " ", &save), NULL, 10);
            s->share = unhex(strtok_r(NULL, " ", &save));
            s->body = unhex(strtok_r(NULL, " ", &save));
        } else if (strcmp(word, "end") != 0) {
            fprintf(stderr, "manifest: unknown line %s\n", word);
            exit(2);
        }
    }
    free(buf);
    return m;
}

static void free_manifest(manifest *m) {
    for (size_t i = 0; i < m->n; i++) {
        mvector *v = &m->v[i];
        free(v->secret.p);
        free(v->verify.p);
        free(v->filekey.p);
        for (size_t j = 0; j < v->n_tensors; j++) free(v->tensors[j].name.p);
        for (size_t j = 0; j < v->n_meta; j++) {
            free(v->meta[j].key.p);
            free(v->meta[j].value.p);
        }
        for (size_t j = 0; j < v->n_stanzas; j++) {
            mstanza *s = &v->stanzas[j];
            free(s->kind.p);
            free(s->salt.p);
            free(s->share.p);
            free(s->body.p);
        }
        free(v->tensors);
        free(v->meta);
        free(v->stanzas);
    }
    free(m->v);
}

static const mvector *find_vector(const manifest *m, const char *name) {
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->v[i].name, name)) return &m->v[i];
    fprintf(stderr, "manifest has no vector %s\n", name);
    exit(2);
}

static char *vector_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 8;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s.enct", dir, name);
    return p;
}

/* ---- credentials ----------------------------------------------------------------------------- */

static const uint8_t ZERO_KEY[32];

/* The credential a vector asks for (none given: a zero key, as the Rust vector test does). */
static enct_credential *vector_credential(const mvector *v) {
    enct_credential *c = NULL;
    enct_status s;
    if (!strcmp(v->cred, "key")) {
        s = enct_credential_key(v->secret.p, v->secret.n, &c);
    } else if (!strcmp(v->cred, "passphrase")) {
        s = enct_credential_passphrase((const char *)v->secret.p, v->secret.n, &c);
    } else if (!strcmp(v->cred, "x25519")) {
        s = enct_credential_x25519(v->secret.p, v->secret.n, &c);
    } else if (!strcmp(v->cred, "rsa")) {
        s = enct_credential_rsa_pkcs8(v->secret.p, v->secret.n, &c);
    } else {
        s = enct_credential_key(ZERO_KEY, sizeof ZERO_KEY, &c);
    }
    CHECK(s == ENCT_OK && c != NULL, "%s: credential %s: %s", v->name, v->cred, enct_status_name(s));
    return c;
}

static enct_open_options vector_options(const mvector *v, uint32_t threads) {
    enct_open_options o = {0};
    o.verify_key = v->verify.n ? v->verify.p : NULL;
    o.verify_key_len = v->verify.n;
    o.max_scrypt_log_n = v->cap;
    o.threads = threads;
    return o;
}

/* A key provider that checks the stanzas it is given against the reference parser's (when it
 * knows them) and gives `key`, or fails with `fail_with`. */
typedef struct {
    const mvector *v;
    const uint8_t *key;
    int32_t fail_with;
    int calls;
    int bad_stanzas;
} provider_ctx;

static int same(const uint8_t *p, size_t n, bytes want) {
    if (n != want.n) return 0;
    if (n == 0) return p == NULL;
    return p != NULL && memcmp(p, want.p, n) == 0;
}

static int32_t test_provider(void *user_data, const enct_stanza *stanzas, size_t count, uint8_t *file_key) {
    provider_ctx *ctx = user_data;
    ctx->calls++;
    if (ctx->v) {
        if (count != ctx->v->n_stanzas) ctx->bad_stanzas++;
        for (size_t i = 0; i < count && i < ctx->v->n_stanzas; i++) {
            const enct_stanza *s = &stanzas[i];
            const mstanza *w = &ctx->v->stanzas[i];
            if (!same((const uint8_t *)s->kind, s->kind_len, w->kind) || s->kind[s->kind_len] != 0 ||
                !same(s->salt, s->salt_len, w->salt) || s->log_n != w->log_n ||
                !same(s->share, s->share_len, w->share) || !same(s->body, s->body_len, w->body))
                ctx->bad_stanzas++;
        }
    }
    if (ctx->fail_with) return ctx->fail_with;
    memcpy(file_key, ctx->key, ENCT_FILE_KEY_LEN);
    return 0;
}

/* ---- reading everything ---------------------------------------------------------------------- */

/* The class of an open's status. */
static const char *open_class(enct_status s) {
    switch (s) {
    case ENCT_ERR_FORMAT: return "format";
    case ENCT_ERR_WRONG_KEY: return "nomatch";
    case ENCT_ERR_INTEGRITY:
    case ENCT_ERR_SIGNATURE: return "header";
    default: return "unexpected";
    }
}

/* Compares what the reader lists with the vector's tensors and metadata. */
static void check_contents(const enct_reader *r, const mvector *v, uint8_t **bufs, const char *how) {
    size_t n = 0;
    EXPECT_STATUS(enct_tensor_count(r, &n), ENCT_OK);
    CHECK(n == v->n_tensors, "%s (%s): %zu tensors, expected %zu", v->name, how, n, v->n_tensors);
    for (size_t i = 0; i < n && i < v->n_tensors; i++) {
        const mtensor *t = &v->tensors[i];
        enct_tensor_info info;
        EXPECT_STATUS(enct_describe_tensor(r, i, &info), ENCT_OK);
        CHECK(info.name_len == t->name.n && !memcmp(info.name, t->name.p, t->name.n) && info.name[info.name_len] == 0,
              "%s: tensor %zu name", v->name, i);
        CHECK(!strcmp(info.dtype, t->dtype), "%s: tensor %zu dtype %s, expected %s", v->name, i, info.dtype, t->dtype);
        CHECK(info.encrypted == (t->encrypted != 0), "%s: tensor %zu encrypted", v->name, i);
        CHECK(info.ndim == t->ndim && (t->ndim == 0 ? info.shape == NULL : !memcmp(info.shape, t->dims, t->ndim * 8)),
              "%s: tensor %zu shape", v->name, i);
        uint64_t elems = 1;
        for (size_t d = 0; d < t->ndim; d++) elems *= t->dims[d];
        CHECK(info.nbytes == elems * info.elem_size, "%s: tensor %zu nbytes", v->name, i);
        char hex[65];
        sha256_hex(bufs[i], (size_t)info.nbytes, hex);
        CHECK(!strcmp(hex, t->sha256), "%s (%s): tensor %zu: sha256 %s, expected %s", v->name, how, i, hex, t->sha256);
        if (memchr(t->name.p, 0, t->name.n) == NULL) {
            char *name = xmalloc(t->name.n + 1);
            memcpy(name, t->name.p, t->name.n);
            name[t->name.n] = 0;
            size_t found = SIZE_MAX;
            EXPECT_STATUS(enct_find_tensor(r, name, &found), ENCT_OK);
            CHECK(found == i, "%s: find_tensor gave %zu, expected %zu", v->name, found, i);
            free(name);
        }
    }
    size_t nm = 0;
    EXPECT_STATUS(enct_metadata_count(r, &nm), ENCT_OK);
    CHECK(nm == v->n_meta, "%s: %zu metadata entries, expected %zu", v->name, nm, v->n_meta);
    for (size_t i = 0; i < nm && i < v->n_meta; i++) {
        const char *k = NULL, *val = NULL;
        size_t kl = 0, vl = 0;
        EXPECT_STATUS(enct_metadata_entry(r, i, &k, &kl, &val, &vl), ENCT_OK);
        CHECK(kl == v->meta[i].key.n && !memcmp(k, v->meta[i].key.p, kl) && k[kl] == 0, "%s: metadata key %zu", v->name, i);
        CHECK(vl == v->meta[i].value.n && !memcmp(val, v->meta[i].value.p, vl) && val[vl] == 0, "%s: metadata value %zu",
              v->name, i);
        if (memchr(k, 0, kl) == NULL) {
            const char *got = NULL;
            size_t gl = 0;
            EXPECT_STATUS(enct_metadata_get(r, k, &got, &gl), ENCT_OK);
            CHECK(got == val && gl == vl, "%s: metadata_get(%s)", v->name, k);
        }
    }
}

/* Reads every tensor of an open reader whole, all at once, and in ranges, checks that they
 * agree and that verify_all agrees; with `v` expected to succeed, checks the contents too.
 * Returns "success" or "payload". `max_total` caps the bytes allocated (hostile files). */
static const char *read_everything(const enct_reader *r, const mvector *v, const char *how, uint64_t max_total) {
    const char *name = v ? v->name : how;
    size_t n = 0;
    EXPECT_STATUS(enct_tensor_count(r, &n), ENCT_OK);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        enct_tensor_info info;
        EXPECT_STATUS(enct_describe_tensor(r, i, &info), ENCT_OK);
        total += info.nbytes;
    }
    if (total > max_total) {
        enct_status s = enct_verify_all(r);
        CHECK(s == ENCT_OK || s == ENCT_ERR_INTEGRITY, "%s: verify_all: %s", name, enct_status_name(s));
        return s == ENCT_OK ? "success" : "payload";
    }
    uint8_t **whole = xmalloc(n * sizeof *whole), **many = xmalloc(n * sizeof *many);
    void **dsts = xmalloc(n * sizeof *dsts);
    size_t *lens = xmalloc(n * sizeof *lens), *idx = xmalloc(n * sizeof *idx);
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        enct_tensor_info info;
        enct_describe_tensor(r, i, &info);
        lens[i] = (size_t)info.nbytes;
        idx[i] = i;
        whole[i] = xmalloc(lens[i]);
        many[i] = xmalloc(lens[i]);
        memset(whole[i], 0xA5, lens[i]);
        memset(many[i], 0x5A, lens[i]);
        dsts[i] = lens[i] ? many[i] : NULL; /* NULL is fine for an empty destination */
        enct_status s = enct_read_tensor(r, i, lens[i] ? whole[i] : NULL, lens[i]);
        if (s == ENCT_ERR_INTEGRITY) {
            failed = 1;
            CHECK(all_zero(whole[i], lens[i]), "%s: a failed read left bytes in its destination", name);
        } else {
            CHECK(s == ENCT_OK, "%s: read_tensor %zu: %s", name, i, enct_status_name(s));
        }
    }
    enct_status s = enct_read_tensors(r, idx, (void *const *)dsts, lens, n);
    CHECK(s == (failed ? ENCT_ERR_INTEGRITY : ENCT_OK), "%s (%s): read_tensors gave %s, reading one by one %s", name, how,
          enct_status_name(s), failed ? "failed" : "succeeded");
    for (size_t i = 0; i < n; i++) {
        if (s != ENCT_OK)
            CHECK(all_zero(many[i], lens[i]), "%s: a failed read_tensors left bytes in destination %zu", name, i);
        else
            CHECK(!memcmp(many[i], whole[i], lens[i]), "%s: read_tensors and read_tensor differ for %zu", name, i);
    }
    if (!failed) {
        /* Ranges of 4093 bytes (prime: they straddle chunks), and a 3-byte range at the end. */
        for (size_t i = 0; i < n; i++) {
            uint8_t piece[4093];
            for (size_t at = 0; at < lens[i]; at += sizeof piece) {
                size_t len = lens[i] - at < sizeof piece ? lens[i] - at : sizeof piece;
                EXPECT_STATUS(enct_read_range(r, i, at, piece, len), ENCT_OK);
                CHECK(!memcmp(piece, whole[i] + at, len), "%s: range %zu+%zu of tensor %zu", name, at, len, i);
            }
            if (lens[i] >= 3) {
                EXPECT_STATUS(enct_read_range(r, i, lens[i] - 3, piece, 3), ENCT_OK);
                CHECK(!memcmp(piece, whole[i] + lens[i] - 3, 3), "%s: last bytes of tensor %zu", name, i);
            }
        }
    }
    enct_status verified = enct_verify_all(r);
    CHECK(verified == (failed ? ENCT_ERR_INTEGRITY : ENCT_OK), "%s (%s): verify_all gave %s, reading %s", name, how,
          enct_status_name(verified), failed ? "failed" : "succeeded");
    if (v && !failed && !strcmp(v->expect, "success")) check_contents(r, v, whole, how);
    for (size_t i = 0; i < n; i++) {
        free(whole[i]);
        free(many[i]);
    }
    free(whole);
    free(many);
    free(dsts);
    free(lens);
    free(idx);
    return failed ? "payload" : "success";
}

/* ---- the spec vectors ------------------------------------------------------------------------ */

/* Opens the vector from memory (one thread), from its path (a pool of two) and, for success
 * vectors, from its path through a key provider (all cores); each must give its class. */
static void run_vectors(const manifest *m, const char *dir, long counts[5]) {
    static const char *classes[5] = {"success", "format", "nomatch", "header", "payload"};
    for (size_t i = 0; i < m->n; i++) {
        const mvector *v = &m->v[i];
        char *path = vector_path(dir, v->name);
        bytes data = read_file(path);
        enct_credential *cred = vector_credential(v);
        for (int way = 0; way < 3; way++) {
            enct_credential *used = cred;
            provider_ctx ctx = {v, v->filekey.p, 0, 0, 0};
            if (way == 2) {
                if (strcmp(v->expect, "success") != 0) break;
                used = NULL;
                EXPECT_STATUS(enct_credential_provider(test_provider, &ctx, &used), ENCT_OK);
            }
            enct_open_options o = vector_options(v, way == 0 ? 1 : way == 1 ? 2 : 0);
            enct_reader *r = (enct_reader *)&o; /* must be reset to NULL on failure */
            const char *how = way == 0 ? "memory" : way == 1 ? "path" : "provider";
            enct_status s = way == 0 ? enct_open_memory(data.p, data.n, used, &o, &r) : enct_open_path(path, used, &o, &r);
            const char *got;
            if (s == ENCT_OK) {
                got = read_everything(r, v, how, UINT64_MAX);
            } else {
                CHECK(r == NULL, "%s: a failed open left *out set", v->name);
                CHECK(enct_last_error()[0] != 0, "%s: a failed open left no message", v->name);
                got = open_class(s);
            }
            CHECK(!strcmp(got, v->expect), "%s (%s): expected %s, got %s (%s: %s)", v->name, how, v->expect, got,
                  enct_status_name(s), enct_last_error());
            if (way == 2) {
                CHECK(ctx.calls == 1 && ctx.bad_stanzas == 0, "%s: provider called %d times, %d stanza mismatches",
                      v->name, ctx.calls, ctx.bad_stanzas);
                enct_credential_free(used);
            }
            enct_close(r);
        }
        for (int c = 0; c < 5; c++)
            if (!strcmp(v->expect, classes[c])) counts[c]++;
        enct_credential_free(cred);
        free(data.p);
        free(path);
    }
}

/* ---- entry points and error codes ------------------------------------------------------------ */

static const uint8_t KEY_A[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                  16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

static enct_credential *key_credential(const uint8_t *key) {
    enct_credential *c = NULL;
    EXPECT_STATUS(enct_credential_key(key, 32, &c), ENCT_OK);
    return c;
}

static enct_reader *open_ok(const char *path, const enct_credential *cred, const enct_open_options *o) {
    enct_reader *r = NULL;
    EXPECT_STATUS(enct_open_path(path, cred, o, &r), ENCT_OK);
    if (!r) {
        fprintf(stderr, "cannot continue without %s\n", path);
        exit(1);
    }
    return r;
}

static void test_basics(void) {
    CHECK(enct_last_error() != NULL && enct_last_error()[0] == 0, "no failure yet: empty message");
    CHECK(enct_last_os_error() == 0, "no failure yet: errno 0");
    unsigned a, b, c;
    CHECK(sscanf(enct_version(), "%u.%u.%u", &a, &b, &c) == 3, "version %s", enct_version());
    static const char *names[] = {"ENCT_OK", "ENCT_ERR_FORMAT", "ENCT_ERR_WRONG_KEY", "ENCT_ERR_INTEGRITY",
                                  "ENCT_ERR_SIGNATURE", "ENCT_ERR_NOT_FOUND", "ENCT_ERR_INVALID_ARGUMENT",
                                  "ENCT_ERR_IO", "ENCT_ERR_KEY_PROVIDER", "ENCT_ERR_PANIC"};
    for (int i = 0; i <= ENCT_ERR_PANIC; i++) CHECK(!strcmp(enct_status_name(i), names[i]), "name of %d", i);
    CHECK(!strcmp(enct_status_name(-1), "ENCT_ERR_UNKNOWN"), "unknown status");
    CHECK(!strcmp(enct_status_name(ENCT_ERR_PANIC + 1), "ENCT_ERR_UNKNOWN"), "unknown status");
}

static void test_credentials(void) {
    enct_credential *c = (enct_credential *)&c;
    EXPECT_STATUS(enct_credential_key(KEY_A, 32, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_credential_key(NULL, 32, &c), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(c == NULL && message_has("key is NULL"), "NULL key");
    EXPECT_STATUS(enct_credential_key(KEY_A, 31, &c), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(message_has("32 bytes"), "short key message");
    EXPECT_STATUS(enct_credential_key(NULL, 0, &c), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_credential_key(KEY_A, SIZE_MAX, &c), ENCT_ERR_INVALID_ARGUMENT); /* never read */
    EXPECT_STATUS(enct_credential_x25519(KEY_A, 33, &c), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_credential_x25519(NULL, 32, &c), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_credential_x25519(KEY_A, 32, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_credential_rsa_pkcs8(KEY_A, 32, &c), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(c == NULL && message_has("RSA"), "garbage RSA key");
    EXPECT_STATUS(enct_credential_rsa_pkcs8(NULL, 100, &c), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_credential_rsa_pkcs8(KEY_A, 32, NULL), ENCT_ERR_INVALID_ARGUMENT);
    const char bad_utf8[] = "secret\xff\xfe-passphrase";
    EXPECT_STATUS(enct_credential_passphrase(bad_utf8, sizeof bad_utf8 - 1, &c), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(message_has("UTF-8") && !message_has("secret"), "invalid UTF-8 passphrase: not shown");
    EXPECT_STATUS(enct_credential_passphrase("", 0, &c), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(message_has("empty"), "empty passphrase");
    EXPECT_STATUS(enct_credential_passphrase(NULL, 5, &c), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_credential_passphrase("abc", 3, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_credential_provider(NULL, NULL, &c), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(c == NULL, "NULL provider");
    EXPECT_STATUS(enct_credential_provider(test_provider, NULL, NULL), ENCT_ERR_INVALID_ARGUMENT);
    /* A passphrase is taken by length: the NUL and what follows it are not part of it. */
    EXPECT_STATUS(enct_credential_passphrase("abc\0def", 3, &c), ENCT_OK);
    enct_credential_free(c);
    enct_credential_free(NULL);
}

static void test_open_errors(const manifest *m, const char *dir) {
    char *several = vector_path(dir, "chunks_several_tensors");
    enct_credential *key = key_credential(KEY_A);
    enct_reader *r = (enct_reader *)&r;

    EXPECT_STATUS(enct_open_path(NULL, key, NULL, &r), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(r == NULL, "out reset");
    EXPECT_STATUS(enct_open_path(several, NULL, NULL, &r), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_open_path(several, key, NULL, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_open_memory(NULL, 100, key, NULL, &r), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_open_memory(KEY_A, SIZE_MAX, key, NULL, &r), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_open_memory(KEY_A, 32, NULL, NULL, &r), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_open_memory(KEY_A, 32, key, NULL, NULL), ENCT_ERR_INVALID_ARGUMENT);

    /* ENCT_ERR_IO, with errno. */
    EXPECT_STATUS(enct_open_path("/nonexistent/enctensor/model.enct", key, NULL, &r), ENCT_ERR_IO);
    CHECK(enct_last_os_error() == ENOENT && message_has("/nonexistent/enctensor/model.enct"), "ENOENT");
    EXPECT_STATUS(enct_open_path(dir, key, NULL, &r), ENCT_ERR_IO); /* a directory */
    CHECK(enct_last_os_error() != 0, "errno of a directory: %d", enct_last_os_error());

    /* ENCT_ERR_FORMAT: garbage, and an empty file. */
    EXPECT_STATUS(enct_open_memory(KEY_A, 32, key, NULL, &r), ENCT_ERR_FORMAT);
    CHECK(r == NULL && message_has("not a valid enctensor file"), "garbage");
    EXPECT_STATUS(enct_open_memory(NULL, 0, key, NULL, &r), ENCT_ERR_FORMAT);

    /* Options. */
    const mvector *signed_v = find_vector(m, "signature_verified");
    char *signed_path = vector_path(dir, "signature_verified");
    enct_open_options o = {0};
    o.verify_key = NULL;
    o.verify_key_len = 32;
    EXPECT_STATUS(enct_open_path(several, key, &o, &r), ENCT_ERR_INVALID_ARGUMENT);
    o.verify_key = signed_v->verify.p;
    o.verify_key_len = 31;
    EXPECT_STATUS(enct_open_path(several, key, &o, &r), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(message_has("32 bytes"), "verify key length message");
    o = (enct_open_options){0};
    o.verify_key = (const uint8_t *)1;
    o.verify_key_len = SIZE_MAX;
    EXPECT_STATUS(enct_open_path(several, key, &o, &r), ENCT_ERR_INVALID_ARGUMENT);
    unsigned bad_caps[] = {1, 9, 21, 256, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof bad_caps / sizeof *bad_caps; i++) {
        o = (enct_open_options){0};
        o.max_scrypt_log_n = bad_caps[i];
        EXPECT_STATUS(enct_open_path(several, key, &o, &r), ENCT_ERR_INVALID_ARGUMENT);
        CHECK(message_has("max_scrypt_log_n"), "cap %u", bad_caps[i]);
    }
    o = (enct_open_options){0};
    o.threads = ENCT_MAX_THREADS + 1;
    EXPECT_STATUS(enct_open_path(several, key, &o, &r), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(r == NULL, "out reset");

    /* ENCT_ERR_WRONG_KEY: a wrong key, and a wrong kind of credential. */
    uint8_t wrong[32];
    for (int i = 0; i < 32; i++) wrong[i] = (uint8_t)(64 + i);
    enct_credential *wrong_key = key_credential(wrong);
    EXPECT_STATUS(enct_open_path(several, wrong_key, NULL, &r), ENCT_ERR_WRONG_KEY);
    CHECK(r == NULL && message_has("no key opens"), "wrong key");
    CHECK(!message_has("404142434445"), "the key is not in the message");
    enct_credential *pass = NULL;
    EXPECT_STATUS(enct_credential_passphrase("correct horse battery staple", 28, &pass), ENCT_OK);
    EXPECT_STATUS(enct_open_path(several, pass, NULL, &r), ENCT_ERR_WRONG_KEY);
    CHECK(!message_has("horse"), "the passphrase is not in the message");
    enct_credential_free(pass);
    enct_credential_free(wrong_key);

    /* ENCT_ERR_SIGNATURE: the signed file with another publisher's key; ENCT_ERR_INTEGRITY: a
     * flipped header MAC. */
    uint8_t other_pub[32];
    memcpy(other_pub, signed_v->verify.p, 32);
    other_pub[0] ^= 1;
    o = (enct_open_options){0};
    o.verify_key = other_pub;
    o.verify_key_len = 32;
    enct_status s = enct_open_path(signed_path, key, &o, &r);
    CHECK(s == ENCT_ERR_SIGNATURE || s == ENCT_ERR_INTEGRITY, "other publisher: %s", enct_status_name(s));
    const mvector *unsigned_v = find_vector(m, "chunk_digest_unsigned_with_verify_key");
    char *unsigned_path = vector_path(dir, unsigned_v->name);
    o.verify_key = unsigned_v->verify.p;
    EXPECT_STATUS(enct_open_path(unsigned_path, key, &o, &r), ENCT_ERR_SIGNATURE);
    CHECK(message_has("not signed"), "unsigned file with a verification key");
    char *mac_path = vector_path(dir, "mac_flipped");
    EXPECT_STATUS(enct_open_path(mac_path, key, NULL, &r), ENCT_ERR_INTEGRITY);
    CHECK(message_has("header authentication failed"), "MAC");

    /* The key provider: failing, giving a wrong key, refused before it is asked. */
    const mvector *several_v = find_vector(m, "chunks_several_tensors");
    provider_ctx ctx = {several_v, several_v->filekey.p, 7, 0, 0};
    enct_credential *prov = NULL;
    EXPECT_STATUS(enct_credential_provider(test_provider, &ctx, &prov), ENCT_OK);
    EXPECT_STATUS(enct_open_path(several, prov, NULL, &r), ENCT_ERR_KEY_PROVIDER);
    CHECK(ctx.calls == 1 && ctx.bad_stanzas == 0 && message_has("returned 7"), "provider failure");
    ctx.fail_with = 0;
    ctx.key = wrong;
    EXPECT_STATUS(enct_open_path(several, prov, NULL, &r), ENCT_ERR_WRONG_KEY);
    CHECK(ctx.calls == 2, "provider called again");
    ctx.key = several_v->filekey.p;
    EXPECT_STATUS(enct_open_memory(KEY_A, 32, prov, NULL, &r), ENCT_ERR_FORMAT); /* never asked */
    CHECK(ctx.calls == 2, "a malformed file does not reach the provider");
    char *costly = vector_path(dir, "passphrase_log_n_19_default_policy");
    ctx.v = NULL;
    EXPECT_STATUS(enct_open_path(costly, prov, NULL, &r), ENCT_ERR_FORMAT); /* the scrypt policy */
    CHECK(ctx.calls == 2 && message_has("max_scrypt_log_n"), "a refused file does not reach the provider");
    ctx.v = several_v;
    r = open_ok(several, prov, NULL);
    CHECK(ctx.calls == 3, "provider success");
    enct_close(r);
    enct_credential_free(prov);

    enct_credential_free(key);
    free(costly);
    free(mac_path);
    free(unsigned_path);
    free(signed_path);
    free(several);
}

static void test_queries_and_reads(const char *dir) {
    char *several = vector_path(dir, "chunks_several_tensors");
    char *unicode = vector_path(dir, "header_unicode");
    char *flipped = vector_path(dir, "chunk_ciphertext_flipped");
    enct_credential *key = key_credential(KEY_A);
    enct_reader *r = open_ok(several, key, NULL);
    size_t n = 0, idx = 0;
    enct_tensor_info info;

    EXPECT_STATUS(enct_tensor_count(NULL, &n), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_tensor_count(r, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_tensor_count(r, &n), ENCT_OK);
    CHECK(n == 5, "5 tensors");
    EXPECT_STATUS(enct_describe_tensor(NULL, 0, &info), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_describe_tensor(r, 0, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_describe_tensor(r, 5, &info), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(message_has("out of range"), "index message");
    EXPECT_STATUS(enct_describe_tensor(r, SIZE_MAX, &info), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_find_tensor(NULL, "a", &idx), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_find_tensor(r, NULL, &idx), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_find_tensor(r, "a", NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_find_tensor(r, "missing", &idx), ENCT_ERR_NOT_FOUND);
    CHECK(message_has("missing"), "not found names the tensor");
    EXPECT_STATUS(enct_find_tensor(r, "d", &idx), ENCT_OK);
    CHECK(idx == 3, "d is tensor 3");
    EXPECT_STATUS(enct_describe_tensor(r, idx, &info), ENCT_OK);
    CHECK(!strcmp(info.name, "d") && !strcmp(info.dtype, "I32") && info.elem_size == 4 && info.ndim == 1 &&
              info.shape[0] == 3000 && info.nbytes == 12000 && !info.encrypted,
          "info of d");

    /* Reading: arguments. */
    uint8_t *buf = xmalloc(12000);
    EXPECT_STATUS(enct_read_tensor(NULL, 3, buf, 12000), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensor(r, 3, NULL, 12000), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensor(r, 3, buf, 11999), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(message_has("12000"), "size message");
    EXPECT_STATUS(enct_read_tensor(r, 3, buf, SIZE_MAX), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensor(r, 9, buf, 12000), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensor(r, 3, buf, 12000), ENCT_OK);
    uint8_t range[100];
    EXPECT_STATUS(enct_read_range(NULL, 3, 0, range, 10), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_range(r, 3, 0, NULL, 10), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_range(r, 3, 11995, range, 10), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(message_has("outside"), "range message");
    EXPECT_STATUS(enct_read_range(r, 3, UINT64_MAX, range, 2), ENCT_ERR_INVALID_ARGUMENT); /* wraps */
    EXPECT_STATUS(enct_read_range(r, 7, 0, range, 2), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_range(r, 3, 12000, NULL, 0), ENCT_OK); /* empty, at the end */
    EXPECT_STATUS(enct_read_range(r, 3, 5000, range, 100), ENCT_OK);
    CHECK(!memcmp(range, buf + 5000, 100), "range agrees with the whole tensor");

    /* read_tensors: arguments, overlap, and reading a tensor twice into two places. */
    uint8_t *two = xmalloc(2 * 12000);
    size_t idxs[2] = {3, 3}, lens[2] = {12000, 12000};
    void *dsts[2] = {two, two + 11999};
    EXPECT_STATUS(enct_read_tensors(r, idxs, (void *const *)dsts, lens, 2), ENCT_ERR_INVALID_ARGUMENT);
    CHECK(message_has("overlap"), "overlap message");
    dsts[1] = two + 12000;
    EXPECT_STATUS(enct_read_tensors(NULL, idxs, (void *const *)dsts, lens, 2), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensors(r, NULL, (void *const *)dsts, lens, 2), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensors(r, idxs, NULL, lens, 2), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensors(r, idxs, (void *const *)dsts, NULL, 2), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensors(r, idxs, (void *const *)dsts, lens, SIZE_MAX), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensors(r, NULL, NULL, NULL, 0), ENCT_OK);
    size_t bad_idx[2] = {3, 5};
    EXPECT_STATUS(enct_read_tensors(r, bad_idx, (void *const *)dsts, lens, 2), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_read_tensors(r, idxs, (void *const *)dsts, lens, 2), ENCT_OK);
    CHECK(!memcmp(two, buf, 12000) && !memcmp(two + 12000, buf, 12000), "the same tensor twice");
    EXPECT_STATUS(enct_verify_all(NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_verify_all(r), ENCT_OK);
    enct_close(r);
    enct_close(NULL);

    /* Metadata. */
    r = open_ok(unicode, key, NULL);
    size_t nm = 0;
    const char *k = NULL, *v = NULL;
    size_t vl = 99;
    EXPECT_STATUS(enct_metadata_count(NULL, &nm), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_metadata_count(r, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_metadata_count(r, &nm), ENCT_OK);
    CHECK(nm == 4, "4 metadata entries");
    EXPECT_STATUS(enct_metadata_entry(NULL, 0, &k, NULL, &v, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_metadata_entry(r, 0, NULL, NULL, &v, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_metadata_entry(r, 0, &k, NULL, NULL, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_metadata_entry(r, 4, &k, NULL, &v, NULL), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_metadata_entry(r, 0, &k, NULL, &v, NULL), ENCT_OK); /* lengths optional */
    CHECK(!strcmp(k, "\xe6\x8f\x8f\xe8\xbf\xb0") && !strcmp(v, "\xe6\xa8\xa1\xe5\x9e\x8b\xe6\x9d\x83\xe9\x87\x8d"),
          "UTF-8 metadata");
    EXPECT_STATUS(enct_metadata_get(NULL, "emoji", &v, &vl), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_metadata_get(r, NULL, &v, &vl), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_metadata_get(r, "emoji", NULL, &vl), ENCT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(enct_metadata_get(r, "nope", &v, &vl), ENCT_ERR_NOT_FOUND);
    CHECK(message_has("nope"), "missing metadata message");
    EXPECT_STATUS(enct_metadata_get(r, "empty", &v, &vl), ENCT_OK);
    CHECK(vl == 0 && v[0] == 0, "empty value");
    EXPECT_STATUS(enct_metadata_get(r, "", &v, NULL), ENCT_OK);
    CHECK(!strcmp(v, "empty name"), "empty key");
    enct_close(r);

    /* ENCT_ERR_INTEGRITY on a read: the destinations are zeroed. */
    r = open_ok(flipped, key, NULL);
    EXPECT_STATUS(enct_describe_tensor(r, 0, &info), ENCT_OK);
    uint8_t *dst = xmalloc((size_t)info.nbytes);
    memset(dst, 0xEE, (size_t)info.nbytes);
    EXPECT_STATUS(enct_read_tensor(r, 0, dst, (size_t)info.nbytes), ENCT_ERR_INTEGRITY);
    CHECK(all_zero(dst, (size_t)info.nbytes) && message_has("failed authentication"), "zeroed on failure");
    EXPECT_STATUS(enct_verify_all(r), ENCT_ERR_INTEGRITY);
    free(dst);
    enct_close(r);

    enct_credential_free(key);
    free(two);
    free(buf);
    free(flipped);
    free(unicode);
    free(several);
}

/* ---- threads --------------------------------------------------------------------------------- */

/* Threads of this process named "enctensor-*" (a reader's own pool). */
static int pool_threads(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[300], comm[64] = {0};
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(comm, sizeof comm, f) && !strncmp(comm, "enctensor-", 10)) n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

static int big_ok(const uint32_t *a, size_t na, const uint32_t *b, size_t nb) {
    for (size_t i = 0; i < na; i++)
        if (a[i] != (uint32_t)i) return 0;
    for (size_t i = 0; i < nb; i++)
        if (b[i] != (uint32_t)(i * 3)) return 0;
    return 1;
}

typedef struct {
    const enct_reader *r;
    int ok;
} reader_job;

/* Reads the big file's tensors on another thread, while the main thread does too. */
static void *read_big(void *arg) {
    reader_job *job = arg;
    size_t na = (3u << 20) / 4, nb = (5u << 20) / 4;
    uint32_t *a = xmalloc(na * 4), *b = xmalloc(nb * 4);
    size_t idx[2] = {0, 1}, lens[2] = {na * 4, nb * 4};
    void *dsts[2] = {a, b};
    job->ok = enct_read_tensors(job->r, idx, (void *const *)dsts, lens, 2) == ENCT_OK && big_ok(a, na, b, nb);
    /* A failure on this thread leaves the main thread's message alone. */
    enct_tensor_info info;
    job->ok &= enct_describe_tensor(job->r, 99, &info) == ENCT_ERR_INVALID_ARGUMENT && message_has("99");
    free(a);
    free(b);
    return NULL;
}

static void test_threads(const char *big) {
    enct_credential *key = key_credential(KEY_A);
    size_t na = (3u << 20) / 4, nb = (5u << 20) / 4;
    uint32_t *a = xmalloc(na * 4 + 1), *b = xmalloc(nb * 4);
    int before = pool_threads();
    for (uint32_t threads = 0; threads <= 3; threads++) {
        enct_open_options o = {0};
        o.threads = threads;
        enct_reader *r = open_ok(big, key, &o);
        /* The pool's threads name themselves once they run. */
        for (int wait = 0; wait < 1000 && pool_threads() != before + (int)threads; wait++) usleep(10000);
        CHECK(pool_threads() == before + (int)threads, "%u threads: %d pool threads running", threads,
              pool_threads() - before);
        memset(a, 0, na * 4);
        memset(b, 0, nb * 4);
        size_t ia = 0, ib = 0;
        EXPECT_STATUS(enct_find_tensor(r, "a", &ia), ENCT_OK);
        EXPECT_STATUS(enct_find_tensor(r, "b", &ib), ENCT_OK);
        EXPECT_STATUS(enct_read_tensor(r, ia, a, na * 4), ENCT_OK);
        EXPECT_STATUS(enct_read_tensor(r, ib, b, nb * 4), ENCT_OK);
        CHECK(big_ok(a, na, b, nb), "%u threads: contents", threads);
        /* Misaligned destination, and a range across many chunks. */
        EXPECT_STATUS(enct_read_tensor(r, ia, (uint8_t *)a + 1, na * 4), ENCT_OK);
        uint32_t first;
        memcpy(&first, (uint8_t *)a + 1 + 4 * 1000, 4);
        CHECK(first == 1000, "misaligned destination");
        EXPECT_STATUS(enct_read_range(r, ib, 4 * 12345, a, 4 * 600000), ENCT_OK);
        CHECK(a[0] == 12345 * 3 && a[599999] == (12345 + 599999) * 3, "range across chunks");
        /* Two threads reading from one handle, and thread-local messages. */
        EXPECT_STATUS(enct_find_tensor(r, "main-thread-miss", &ia), ENCT_ERR_NOT_FOUND);
        reader_job job = {r, 0};
        pthread_t t;
        pthread_create(&t, NULL, read_big, &job);
        EXPECT_STATUS(enct_read_tensor(r, ib, b, nb * 4), ENCT_OK);
        pthread_join(t, NULL);
        CHECK(job.ok, "%u threads: concurrent read on another thread", threads);
        CHECK(message_has("main-thread-miss"), "this thread's message is its own");
        EXPECT_STATUS(enct_verify_all(r), ENCT_OK);
        enct_close(r);
        /* The pool's threads have ended when close returns (it joins them: the Rust test
         * threads_have_ended_when_dropped checks that); the kernel drops a task's /proc entry
         * a moment after its join, so that is polled for. */
        for (int wait = 0; wait < 1000 && pool_threads() != before; wait++) usleep(10000);
        CHECK(pool_threads() == before, "%u threads: pool stopped after close", threads);
    }
    enct_credential_free(key);
    free(a);
    free(b);
}

/* ---- hostile inputs -------------------------------------------------------------------------- */

static long hostile_counts[ENCT_ERR_PANIC + 1];

static void hostile_file(const char *path, const enct_credential *key) {
    bytes data = read_file(path);
    for (int way = 0; way < 2; way++) {
        enct_reader *r = NULL;
        enct_status s = way == 0 ? enct_open_memory(data.p, data.n, key, NULL, &r) : enct_open_path(path, key, NULL, &r);
        CHECK(s >= ENCT_OK && s < ENCT_ERR_PANIC && s != ENCT_ERR_INVALID_ARGUMENT, "%s: %s", path, enct_status_name(s));
        CHECK((s == ENCT_OK) == (r != NULL), "%s: handle and status disagree", path);
        if (way == 0) hostile_counts[s >= 0 && s <= ENCT_ERR_PANIC ? s : ENCT_ERR_PANIC]++;
        if (r) {
            read_everything(r, NULL, path, 64u << 20);
            enct_close(r);
        }
    }
    free(data.p);
}

static void run_hostile(int argc, char **argv) {
    enct_credential *key = key_credential(KEY_A);
    long files = 0;
    for (int i = 0; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            struct dirent **entries;
            int n = scandir(argv[i], &entries, NULL, alphasort);
            for (int j = 0; j < n; j++) {
                size_t len = strlen(argv[i]) + strlen(entries[j]->d_name) + 2;
                char *p = xmalloc(len);
                snprintf(p, len, "%s/%s", argv[i], entries[j]->d_name);
                struct stat entry;
                if (stat(p, &entry) == 0 && S_ISREG(entry.st_mode)) { /* not the subdirectories */
                    hostile_file(p, key);
                    files++;
                }
                free(p);
                free(entries[j]);
            }
            free(entries);
        } else {
            hostile_file(argv[i], key);
            files++;
        }
    }
    enct_credential_free(key);
    printf("hostile: %ld files:", files);
    for (int s = 0; s <= ENCT_ERR_PANIC; s++)
        if (hostile_counts[s]) printf(" %s %ld", enct_status_name(s), hostile_counts[s]);
    printf("\n");
}

/* Every tensor's bytes, one after the other, read in one call; NULL if a read fails. */
static uint8_t *read_concat(const enct_reader *r, size_t *total) {
    size_t n = 0;
    *total = 0;
    if (enct_tensor_count(r, &n) != ENCT_OK) return NULL;
    size_t *idx = xmalloc(n * sizeof *idx), *lens = xmalloc(n * sizeof *lens);
    void **dsts = xmalloc(n * sizeof *dsts);
    for (size_t i = 0; i < n; i++) {
        enct_tensor_info info;
        enct_describe_tensor(r, i, &info);
        idx[i] = i;
        lens[i] = (size_t)info.nbytes;
        *total += lens[i];
    }
    uint8_t *out = xmalloc(*total);
    for (size_t i = 0, at = 0; i < n; at += lens[i], i++) dsts[i] = lens[i] ? out + at : NULL;
    enct_status s = enct_read_tensors(r, idx, (void *const *)dsts, lens, n);
    free(idx);
    free(lens);
    free(dsts);
    if (s != ENCT_OK) {
        CHECK(s == ENCT_ERR_INTEGRITY && all_zero(out, *total), "a failed read: %s", enct_status_name(s));
        free(out);
        return NULL;
    }
    return out;
}

/* Every one-bit change of a valid file (bit 0 of each byte in turn), and truncations: each
 * variant fails with a typed error or, if it opens and reads, gives exactly the original
 * tensors (a change the format ignores, such as JSON whitespace). */
static void run_flips(int argc, char **argv) {
    enct_credential *key = key_credential(KEY_A);
    long variants = 0, same_bytes = 0, counts[ENCT_ERR_PANIC + 1] = {0};
    for (int f = 0; f < argc; f++) {
        bytes data = read_file(argv[f]);
        enct_reader *r = NULL;
        EXPECT_STATUS(enct_open_memory(data.p, data.n, key, NULL, &r), ENCT_OK);
        size_t want_len = 0;
        uint8_t *want = r ? read_concat(r, &want_len) : NULL;
        CHECK(want != NULL, "%s: the original reads", argv[f]);
        enct_close(r);
        uint8_t *copy = xmalloc(data.n);
        for (size_t i = 0; i < data.n; i++) {
            memcpy(copy, data.p, data.n);
            copy[i] ^= 1;
            enct_status s = enct_open_memory(copy, data.n, key, NULL, &r);
            CHECK(s >= ENCT_OK && s < ENCT_ERR_PANIC && s != ENCT_ERR_INVALID_ARGUMENT, "%s: flip at %zu: %s", argv[f],
                  i, enct_status_name(s));
            variants++;
            if (s == ENCT_OK) {
                size_t got_len = 0;
                uint8_t *got = read_concat(r, &got_len);
                if (got) {
                    CHECK(got_len == want_len && !memcmp(got, want, want_len),
                          "%s: flip at %zu opened and read different bytes", argv[f], i);
                    same_bytes++;
                } else {
                    counts[ENCT_ERR_INTEGRITY]++;
                }
                free(got);
                enct_close(r);
            } else {
                counts[s]++;
            }
        }
        for (size_t len = 0; len < data.n; len += 61) {
            EXPECT_STATUS(enct_open_memory(data.p, len, key, NULL, &r), ENCT_ERR_FORMAT);
            variants++;
        }
        free(copy);
        free(want);
        free(data.p);
    }
    enct_credential_free(key);
    printf("flips and truncations: %ld variants: read the original bytes %ld,", variants, same_bytes);
    for (int s = 1; s < ENCT_ERR_PANIC; s++)
        if (counts[s]) printf(" %s %ld", enct_status_name(s), counts[s]);
    printf("\n");
}

/* ---- main -------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "hostile")) {
        run_hostile(argc - 2, argv + 2);
    } else if (argc >= 3 && !strcmp(argv[1], "flip")) {
        run_flips(argc - 2, argv + 2);
    } else if (argc == 5 && (!strcmp(argv[1], "all") || !strcmp(argv[1], "api"))) {
        manifest m = load_manifest(argv[2]);
        test_basics();
        test_credentials();
        test_open_errors(&m, argv[3]);
        test_queries_and_reads(argv[3]);
        test_threads(argv[4]);
        /* Every status but ENCT_ERR_PANIC was returned where expected. (A panic cannot be
         * provoked through the ABI; `cargo test --features capi` checks that one is caught.) */
        for (int s = ENCT_OK; s < ENCT_ERR_PANIC; s++)
            CHECK(seen[s], "status %s was never returned by a test", enct_status_name(s));
        if (!strcmp(argv[1], "all")) {
            long counts[5] = {0};
            run_vectors(&m, argv[3], counts);
            printf("vectors: %zu (success %ld, format failure %ld, no match %ld, header failure %ld, payload "
                   "failure %ld), each through memory, path and (success) a key provider\n",
                   m.n, counts[0], counts[1], counts[2], counts[3], counts[4]);
        }
        free_manifest(&m);
    } else {
        fprintf(stderr, "usage: %s all|api <manifest> <vectors dir> <big file> | hostile <file or dir>... | flip <file>...\n",
                argv[0]);
        return 2;
    }
    printf("%ld checks, %ld failures\n", checks, failures);
    return failures ? 1 : 0;
}
