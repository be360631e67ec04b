/*
 * host.c: a small OpenFX host that checks how an image effect renders in tiles, which no packaged host here does.
 *
 *   ofx_host [OPTIONS] BUNDLE.ofx.bundle PLUGIN_ID CHECK [PARAM=VALUE ...]
 *
 * It loads any OFX bundle (Contents/Linux-x86-64 with dlopen, Contents/Win64 on Windows), implements the host
 * side (property, image effect, parameter, memory, multithread, message and progress suites), runs Load, Describe,
 * DescribeInContext (Filter), CreateInstance, and then one CHECK:
 *
 *   describe  print what the plug-in declares; require the Filter context, Source and Output clips.
 *   tiles     for each render scale, render the whole frame, then a grid of tiles for each tile size, rowBytes
 *             alternating in sign from tile to tile: each tile asks GetRegionsOfInterest and is served a source
 *             image of exactly that region (rows padded with poison), into an output whose pixels around the render
 *             window are poisoned (NaN for float); the tiles must leave no NaN, touch nothing outside their window,
 *             and equal the whole-frame render within --tolerance (unless --report-only). Two instances are used:
 *             a plug-in that logs its model loads ("loaded model") must log at most one.
 *   identity  for every depth (byte, short, half, float), RGBA and RGB, straight and premultiplied alpha: render
 *             2 x 2 tiles (rowBytes alternating in sign) and require output = input within the depth's
 *             quantisation (for pass-through models such as dpir's oracle bundle).
 *   fail      a render must return kOfxStatFailed with an error message, leave no poison in its window, not crash.
 *   abort     the host's abort answers yes after --abort-after polls: the render must stop (not kOfxStatOK)
 *             without an error message and leave no poison.
 *   still     the same source rendered at frames 0 and 1 must give identical results (no flicker);
 *   varying   ... must give different results (noise that changes per frame).
 *   edited    the source changes upstream between two renders of the same frame (same time, scale, parameters):
 *             the second must equal what a fresh instance renders from the changed source (a plug-in that keeps
 *             per-frame state must notice the change).
 *   changed   the PARAM=VALUE arguments are applied one by one as a user's edits, each followed by
 *             kOfxActionInstanceChanged (a push button's name alone presses it); then every value is printed.
 *
 * The OpenFX declarations are the project's (plugins/ofx/openfx.h, shared with the plug-in); melt, built with the
 * standard's own headers, cross-checks them in tests/ofx/melt.sh.
 *
 * PARAM=VALUE sets the instance's parameters (choices by label or index) before it is created; for `changed`,
 * after. Exit status 0 when the check passes.
 * Options: --frame WxH (canonical size, default 150x110), --tiles WxH[,WxH...] (default 64x48,37x53),
 * --scales S[,S...] (default 1,0.5), --threads N (tiles rendered at once, default 2), --tolerance T (default
 * 1e-4), --report-only, --serve-whole (serve the whole frame whatever the RoI, like MLT and Resolve),
 * --abort-after N (default 0), --depth byte|short|half|float and --components RGBA|RGB (tiles check; default
 * float RGBA), --verbose.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../plugins/ofx/openfx.h"
#include "../windows/utf8_args.h"

#ifndef _WIN32
#include <dlfcn.h>
#endif

#define MAGIC_PROPS 0x50524f50u
#define MAGIC_EFFECT 0x45464643u
#define MAGIC_CLIP 0x434c4950u
#define MAGIC_PARAM 0x50415241u
#define MAGIC_PARAMSET 0x50534554u

static int verbose;
static atomic_int failures;

#define FAIL(...)                                                                                                     \
    do {                                                                                                              \
        fprintf(stderr, "FAIL: " __VA_ARGS__);                                                                        \
        fputc('\n', stderr);                                                                                          \
        failures++;                                                                                                   \
    } while (0)

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ofx_host: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) die("out of memory");
    return p;
}

static char *xstrdup(const char *s) {
    char *p = strdup(s ? s : "");
    if (!p) die("out of memory");
    return p;
}

/* ==== Property sets ==== */

enum ptype { PT_INT, PT_DOUBLE, PT_STRING, PT_POINTER };

struct prop {
    char *name;
    enum ptype type;
    int n;
    int *i;
    double *d;
    char **s;
    void **p;
};

struct propset {
    uint32_t magic;
    struct prop *props;
    int n, cap;
};

static struct propset *props_new(void) {
    struct propset *ps = xcalloc(1, sizeof *ps);
    ps->magic = MAGIC_PROPS;
    return ps;
}

static void prop_clear_values(struct prop *p) {
    if (p->s)
        for (int k = 0; k < p->n; k++) free(p->s[k]);
    free(p->i), free(p->d), free(p->s), free(p->p);
    p->i = NULL, p->d = NULL, p->s = NULL, p->p = NULL;
    p->n = 0;
}

static void props_free(struct propset *ps) {
    if (!ps) return;
    for (int k = 0; k < ps->n; k++) {
        prop_clear_values(&ps->props[k]);
        free(ps->props[k].name);
    }
    free(ps->props);
    ps->magic = 0;
    free(ps);
}

static struct propset *as_props(OfxPropertySetHandle h) {
    struct propset *ps = (struct propset *)h;
    return ps && ps->magic == MAGIC_PROPS ? ps : NULL;
}

static struct prop *prop_find(struct propset *ps, const char *name) {
    for (int k = 0; k < ps->n; k++)
        if (strcmp(ps->props[k].name, name) == 0) return &ps->props[k];
    return NULL;
}

/* The property, created with `type` if missing, holding at least `n` values. NULL on a type mismatch. */
static struct prop *prop_make(struct propset *ps, const char *name, enum ptype type, int n) {
    struct prop *p = prop_find(ps, name);
    if (!p) {
        if (ps->n == ps->cap) {
            ps->cap = ps->cap ? 2 * ps->cap : 16;
            ps->props = realloc(ps->props, (size_t)ps->cap * sizeof *ps->props);
            if (!ps->props) die("out of memory");
        }
        p = &ps->props[ps->n++];
        memset(p, 0, sizeof *p);
        p->name = xstrdup(name);
        p->type = type;
    }
    if (p->type != type) return NULL;
    if (n > p->n) {
        switch (type) {
        case PT_INT: p->i = realloc(p->i, (size_t)n * sizeof *p->i); break;
        case PT_DOUBLE: p->d = realloc(p->d, (size_t)n * sizeof *p->d); break;
        case PT_STRING: p->s = realloc(p->s, (size_t)n * sizeof *p->s); break;
        case PT_POINTER: p->p = realloc(p->p, (size_t)n * sizeof *p->p); break;
        }
        for (int k = p->n; k < n; k++) {
            if (type == PT_INT) p->i[k] = 0;
            if (type == PT_DOUBLE) p->d[k] = 0;
            if (type == PT_STRING) p->s[k] = xstrdup("");
            if (type == PT_POINTER) p->p[k] = NULL;
        }
        p->n = n;
    }
    return p;
}

#define SETTER(NAME, CTYPE, PTYPE, FIELD, STORE)                                                                     \
    static OfxStatus NAME(OfxPropertySetHandle h, const char *name, int index, CTYPE value) {                        \
        struct propset *ps = as_props(h);                                                                             \
        if (!ps || !name) return kOfxStatErrBadHandle;                                                                \
        if (index < 0) return kOfxStatErrBadIndex;                                                                    \
        struct prop *p = prop_make(ps, name, PTYPE, index + 1);                                                       \
        if (!p) return kOfxStatErrValue;                                                                              \
        STORE;                                                                                                        \
        return kOfxStatOK;                                                                                            \
    }
SETTER(prop_set_pointer, void *, PT_POINTER, p, p->p[index] = value)
SETTER(prop_set_string, const char *, PT_STRING, s, (free(p->s[index]), p->s[index] = xstrdup(value)))
SETTER(prop_set_double, double, PT_DOUBLE, d, p->d[index] = value)
SETTER(prop_set_int, int, PT_INT, i, p->i[index] = value)

#define SETTER_N(NAME, CTYPE, ONE)                                                                                    \
    static OfxStatus NAME(OfxPropertySetHandle h, const char *name, int count, CTYPE value) {                        \
        if (count < 0 || (count && !value)) return kOfxStatErrValue;                                                 \
        struct propset *ps = as_props(h);                                                                             \
        if (!ps || !name) return kOfxStatErrBadHandle;                                                                \
        struct prop *p = prop_find(ps, name);                                                                         \
        if (p) prop_clear_values(p);                                                                                  \
        for (int k = 0; k < count; k++) {                                                                             \
            OfxStatus st = ONE(h, name, k, value[k]);                                                                 \
            if (st != kOfxStatOK) return st;                                                                          \
        }                                                                                                             \
        return kOfxStatOK;                                                                                            \
    }
SETTER_N(prop_set_pointer_n, void *const *, prop_set_pointer)
SETTER_N(prop_set_string_n, const char *const *, prop_set_string)
SETTER_N(prop_set_double_n, const double *, prop_set_double)
SETTER_N(prop_set_int_n, const int *, prop_set_int)

#define GETTER(NAME, CTYPE, PTYPE, LOAD)                                                                             \
    static OfxStatus NAME(OfxPropertySetHandle h, const char *name, int index, CTYPE *value) {                       \
        struct propset *ps = as_props(h);                                                                             \
        if (!ps || !name) return kOfxStatErrBadHandle;                                                                \
        if (!value) return kOfxStatErrValue;                                                                          \
        struct prop *p = prop_find(ps, name);                                                                         \
        if (!p) return kOfxStatErrUnknown;                                                                            \
        if (p->type != PTYPE) return kOfxStatErrValue;                                                                \
        if (index < 0 || index >= p->n) return kOfxStatErrBadIndex;                                                   \
        *value = LOAD;                                                                                                \
        return kOfxStatOK;                                                                                            \
    }
GETTER(prop_get_pointer, void *, PT_POINTER, p->p[index])
GETTER(prop_get_string, char *, PT_STRING, p->s[index])
GETTER(prop_get_double, double, PT_DOUBLE, p->d[index])
GETTER(prop_get_int, int, PT_INT, p->i[index])

#define GETTER_N(NAME, CTYPE, ONE)                                                                                    \
    static OfxStatus NAME(OfxPropertySetHandle h, const char *name, int count, CTYPE *value) {                       \
        if (count < 0 || (count && !value)) return kOfxStatErrValue;                                                 \
        for (int k = 0; k < count; k++) {                                                                             \
            OfxStatus st = ONE(h, name, k, &value[k]);                                                                \
            if (st != kOfxStatOK) return st;                                                                          \
        }                                                                                                             \
        return kOfxStatOK;                                                                                            \
    }
GETTER_N(prop_get_pointer_n, void *, prop_get_pointer)
GETTER_N(prop_get_string_n, char *, prop_get_string)
GETTER_N(prop_get_double_n, double, prop_get_double)
GETTER_N(prop_get_int_n, int, prop_get_int)

static OfxStatus prop_reset(OfxPropertySetHandle h, const char *name) {
    struct propset *ps = as_props(h);
    if (!ps || !name) return kOfxStatErrBadHandle;
    struct prop *p = prop_find(ps, name);
    if (!p) return kOfxStatErrUnknown;
    prop_clear_values(p);
    return kOfxStatOK;
}

static OfxStatus prop_get_dimension(OfxPropertySetHandle h, const char *name, int *count) {
    struct propset *ps = as_props(h);
    if (!ps || !name) return kOfxStatErrBadHandle;
    struct prop *p = prop_find(ps, name);
    if (!p) return kOfxStatErrUnknown;
    *count = p->n;
    return kOfxStatOK;
}

static const OfxPropertySuiteV1 property_suite = {
    prop_set_pointer,   prop_set_string,    prop_set_double,   prop_set_int,     prop_set_pointer_n,
    prop_set_string_n,  prop_set_double_n,  prop_set_int_n,    prop_get_pointer, prop_get_string,
    prop_get_double,    prop_get_int,       prop_get_pointer_n, prop_get_string_n, prop_get_double_n,
    prop_get_int_n,     prop_reset,         prop_get_dimension,
};

/* Host-side shorthands. */
static void set_str(struct propset *ps, const char *name, const char *v) {
    prop_set_string((OfxPropertySetHandle)ps, name, 0, v);
}
static void set_int(struct propset *ps, const char *name, int v) { prop_set_int((OfxPropertySetHandle)ps, name, 0, v); }
static void set_dbl(struct propset *ps, const char *name, double v) {
    prop_set_double((OfxPropertySetHandle)ps, name, 0, v);
}
static const char *get_str(struct propset *ps, const char *name, int index) {
    char *v = NULL;
    return prop_get_string((OfxPropertySetHandle)ps, name, index, &v) == kOfxStatOK ? v : NULL;
}
static int get_int(struct propset *ps, const char *name, int fallback) {
    int v;
    return prop_get_int((OfxPropertySetHandle)ps, name, 0, &v) == kOfxStatOK ? v : fallback;
}
static double get_dbl(struct propset *ps, const char *name, double fallback) {
    double v;
    return prop_get_double((OfxPropertySetHandle)ps, name, 0, &v) == kOfxStatOK ? v : fallback;
}
static int dimension(struct propset *ps, const char *name) {
    int n = 0;
    return prop_get_dimension((OfxPropertySetHandle)ps, name, &n) == kOfxStatOK ? n : 0;
}
static int has_string(struct propset *ps, const char *name, const char *value) {
    for (int k = 0; k < dimension(ps, name); k++) {
        const char *v = get_str(ps, name, k);
        if (v && strcmp(v, value) == 0) return 1;
    }
    return 0;
}

static void copy_props(struct propset *to, struct propset *from) {
    for (int k = 0; k < from->n; k++) {
        struct prop *p = &from->props[k];
        for (int j = 0; j < p->n; j++) {
            OfxPropertySetHandle h = (OfxPropertySetHandle)to;
            if (p->type == PT_INT) prop_set_int(h, p->name, j, p->i[j]);
            if (p->type == PT_DOUBLE) prop_set_double(h, p->name, j, p->d[j]);
            if (p->type == PT_STRING) prop_set_string(h, p->name, j, p->s[j]);
            if (p->type == PT_POINTER) prop_set_pointer(h, p->name, j, p->p[j]);
        }
    }
}

/* ==== Pixels ==== */

enum depth { D_BYTE, D_SHORT, D_HALF, D_FLOAT };
static const char *const DEPTH_NAMES[] = {kOfxBitDepthByte, kOfxBitDepthShort, kOfxBitDepthHalf, kOfxBitDepthFloat};
static const char *const DEPTH_SHORT_NAMES[] = {"byte", "short", "half", "float"};
static const size_t DEPTH_BYTES[] = {1, 2, 2, 4};

struct format {
    enum depth depth;
    int channels;      /* 4 or 3 */
    int premultiplied; /* 4 channels only */
};

static const char *premultiplication(struct format f) {
    if (f.channels == 3) return kOfxImageOpaque;
    return f.premultiplied ? kOfxImagePreMultiplied : kOfxImageUnPreMultiplied;
}

static double read_sample(const void *p, enum depth d) {
    switch (d) {
    case D_BYTE: return *(const uint8_t *)p / 255.0;
    case D_SHORT: return *(const uint16_t *)p / 65535.0;
    case D_HALF: return (double)*(const _Float16 *)p;
    case D_FLOAT: return *(const float *)p;
    }
    return 0;
}

static void write_sample(void *p, enum depth d, double v) {
    switch (d) {
    case D_BYTE: *(uint8_t *)p = (uint8_t)lrint(fmin(fmax(v, 0), 1) * 255.0); break;
    case D_SHORT: *(uint16_t *)p = (uint16_t)lrint(fmin(fmax(v, 0), 1) * 65535.0); break;
    case D_HALF: *(_Float16 *)p = (_Float16)v; break;
    case D_FLOAT: *(float *)p = (float)v; break;
    }
}

/* The poison written around and under outputs: NaN for float and half, 0xA5 bytes for integers. */
static void write_poison(void *p, enum depth d) {
    if (d == D_FLOAT) *(float *)p = NAN;
    else if (d == D_HALF) *(_Float16 *)p = (_Float16)NAN;
    else memset(p, 0xA5, DEPTH_BYTES[d]);
}

static int is_poison(const void *p, enum depth d) {
    if (d == D_FLOAT) return isnan(*(const float *)p);
    if (d == D_HALF) return isnan((double)*(const _Float16 *)p);
    const uint8_t *b = p;
    for (size_t k = 0; k < DEPTH_BYTES[d]; k++)
        if (b[k] != 0xA5) return 0;
    return 1;
}

/* The source frame: smooth structure plus fine texture; alpha in [0.5, 1]. (x, y) are pixel coordinates at the
 * render scale, y up. The value is straight (not premultiplied). */
/* An upstream edit: the `edited` check shifts the source's colour channels by this much. */
static double source_shift;

static double pattern(int c, int x, int y, double scale) {
    double u = (x + 0.5) / scale, v = (y + 0.5) / scale;
    if (c == 3) return 0.5 + 0.5 * (0.5 + 0.5 * sin(u * 0.05 + v * 0.03));
    uint32_t h = (uint32_t)x * 73856093u ^ (uint32_t)y * 19349663u ^ (uint32_t)c * 83492791u;
    h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
    double noise = (h & 0xffff) / 65535.0 - 0.5;
    double value = 0.45 + 0.3 * sin(u * 0.07 + c * 1.9) * cos(v * 0.05 - c * 0.7) + 0.1 * noise + 0.05 * c;
    return fmin(fmax(value + source_shift, 0.02), 0.98);
}

/* ==== Images ==== */

/* A host image: a property set plus the memory it describes, with poisoned row padding and guard bytes. */
struct image {
    struct propset *props;
    uint8_t *block;
    size_t block_size, guard;
    char *data;
    OfxRectI bounds;
    int row_bytes;
    struct format format;
    size_t pixel_bytes, row_used;
};

static char *image_pixel(struct image *im, int x, int y) {
    return im->data + (ptrdiff_t)(y - im->bounds.y1) * im->row_bytes +
           (ptrdiff_t)(x - im->bounds.x1) * (ptrdiff_t)im->pixel_bytes;
}

/* A poisoned image of `bounds`; rows hold 2 extra pixels of padding; negative rowBytes stores rows top-down. */
static struct image *image_new(OfxRectI bounds, struct format f, int negative, double scale, const char *unique) {
    struct image *im = xcalloc(1, sizeof *im);
    im->bounds = bounds;
    im->format = f;
    im->pixel_bytes = (size_t)f.channels * DEPTH_BYTES[f.depth];
    int w = bounds.x2 - bounds.x1, h = bounds.y2 - bounds.y1;
    im->row_used = (size_t)w * im->pixel_bytes;
    size_t row = im->row_used + 2 * im->pixel_bytes;
    im->guard = 64;
    im->block_size = row * (size_t)(h > 0 ? h : 0) + 2 * im->guard;
    im->block = xcalloc(1, im->block_size);
    memset(im->block, 0xA5, im->block_size);
    for (size_t k = im->guard; k + DEPTH_BYTES[f.depth] <= im->block_size - im->guard; k += DEPTH_BYTES[f.depth])
        write_poison(im->block + k, f.depth);
    im->row_bytes = negative ? -(int)row : (int)row;
    im->data = (char *)im->block + im->guard + (negative && h > 0 ? (size_t)(h - 1) * row : 0);

    struct propset *ps = im->props = props_new();
    set_str(ps, kOfxPropType, kOfxTypeImage);
    prop_set_pointer((OfxPropertySetHandle)ps, kOfxImagePropData, 0, im->data);
    int b[4] = {bounds.x1, bounds.y1, bounds.x2, bounds.y2};
    prop_set_int_n((OfxPropertySetHandle)ps, kOfxImagePropBounds, 4, b);
    prop_set_int_n((OfxPropertySetHandle)ps, kOfxImagePropRegionOfDefinition, 4, b);
    set_int(ps, kOfxImagePropRowBytes, im->row_bytes);
    set_str(ps, kOfxImageEffectPropPixelDepth, DEPTH_NAMES[f.depth]);
    set_str(ps, kOfxImageEffectPropComponents, f.channels == 4 ? kOfxImageComponentRGBA : kOfxImageComponentRGB);
    set_str(ps, kOfxImageEffectPropPreMultiplication, premultiplication(f));
    set_dbl(ps, kOfxImagePropPixelAspectRatio, 1.0);
    double s[2] = {scale, scale};
    prop_set_double_n((OfxPropertySetHandle)ps, kOfxImageEffectPropRenderScale, 2, s);
    set_str(ps, kOfxImagePropField, kOfxImageFieldNone);
    set_str(ps, kOfxImagePropUniqueIdentifier, unique);
    return im;
}

static void image_free(struct image *im) {
    if (!im) return;
    props_free(im->props);
    free(im->block);
    free(im);
}

/* Fills `r` of an image with the source pattern. */
static void image_fill_pattern(struct image *im, OfxRectI r, double scale) {
    for (int y = r.y1; y < r.y2; y++)
        for (int x = r.x1; x < r.x2; x++) {
            char *px = image_pixel(im, x, y);
            double alpha = im->format.channels == 4 ? pattern(3, x, y, scale) : 1.0;
            for (int c = 0; c < im->format.channels; c++) {
                double v = c == 3 ? alpha : pattern(c, x, y, scale);
                if (c < 3 && im->format.premultiplied) v *= alpha;
                write_sample(px + (size_t)c * DEPTH_BYTES[im->format.depth], im->format.depth, v);
            }
        }
}

/* Checks that nothing outside `window` was written: padding, guards and pixels of the bounds outside it. */
static int image_check_outside(struct image *im, OfxRectI window, const char *what) {
    size_t sample = DEPTH_BYTES[im->format.depth];
    for (size_t k = 0; k < im->guard; k++)
        if (im->block[k] != 0xA5 || im->block[im->block_size - 1 - k] != 0xA5) {
            FAIL("%s: a guard byte around the output buffer was overwritten", what);
            return 0;
        }
    for (int y = im->bounds.y1; y < im->bounds.y2; y++) {
        char *row = image_pixel(im, im->bounds.x1, y);
        for (size_t k = im->row_used; k < im->row_used + 2 * im->pixel_bytes; k += sample)
            if (!is_poison(row + k, im->format.depth)) {
                FAIL("%s: row padding after row %d was written", what, y);
                return 0;
            }
        for (int x = im->bounds.x1; x < im->bounds.x2; x++) {
            if (x >= window.x1 && x < window.x2 && y >= window.y1 && y < window.y2) continue;
            char *px = image_pixel(im, x, y);
            for (int c = 0; c < im->format.channels; c++)
                if (!is_poison(px + (size_t)c * sample, im->format.depth)) {
                    FAIL("%s: pixel (%d, %d) outside the render window was written", what, x, y);
                    return 0;
                }
        }
    }
    return 1;
}

/* ==== Effects, clips, parameters ==== */

struct effect;

struct clip {
    uint32_t magic;
    char *name;
    struct propset *props;
    struct effect *owner;
};

struct param {
    uint32_t magic;
    char *name, *type;
    struct propset *props;
    int ivalue;
    double dvalue;
    char *svalue;
};

struct paramset {
    uint32_t magic;
    struct effect *owner;
    struct propset *props;
};

#define MAX_CLIPS 8
#define MAX_PARAMS 64

struct effect {
    uint32_t magic;
    struct propset *props;
    struct clip *clips[MAX_CLIPS];
    int nclips;
    struct param *params[MAX_PARAMS];
    int nparams;
    struct paramset paramset;
    /* instance state, shared by the threads rendering it */
    atomic_int abort_polls, abort_after, progress_starts, progress_ends, progress_updates, progress_bad;
    struct format format;    /* what the clips carry */
    double canonical_w, canonical_h;
};

static struct effect *effect_new(const char *type) {
    struct effect *e = xcalloc(1, sizeof *e);
    e->magic = MAGIC_EFFECT;
    e->props = props_new();
    set_str(e->props, kOfxPropType, type);
    e->paramset.magic = MAGIC_PARAMSET;
    e->paramset.owner = e;
    e->paramset.props = props_new();
    atomic_init(&e->abort_after, -1);
    return e;
}

static void effect_free(struct effect *e) {
    if (!e) return;
    for (int k = 0; k < e->nclips; k++) {
        props_free(e->clips[k]->props);
        free(e->clips[k]->name);
        free(e->clips[k]);
    }
    for (int k = 0; k < e->nparams; k++) {
        props_free(e->params[k]->props);
        free(e->params[k]->name), free(e->params[k]->type), free(e->params[k]->svalue);
        free(e->params[k]);
    }
    props_free(e->props);
    props_free(e->paramset.props);
    free(e);
}

static struct effect *as_effect(const void *h) {
    struct effect *e = (struct effect *)h;
    return e && e->magic == MAGIC_EFFECT ? e : NULL;
}
static struct clip *as_clip(OfxImageClipHandle h) {
    struct clip *c = (struct clip *)h;
    return c && c->magic == MAGIC_CLIP ? c : NULL;
}
static struct param *as_param(OfxParamHandle h) {
    struct param *p = (struct param *)h;
    return p && p->magic == MAGIC_PARAM ? p : NULL;
}
static struct paramset *as_paramset(OfxParamSetHandle h) {
    struct paramset *p = (struct paramset *)h;
    return p && p->magic == MAGIC_PARAMSET ? p : NULL;
}

static struct clip *clip_add(struct effect *e, const char *name) {
    if (e->nclips == MAX_CLIPS) die("too many clips");
    struct clip *c = xcalloc(1, sizeof *c);
    c->magic = MAGIC_CLIP;
    c->name = xstrdup(name);
    c->props = props_new();
    c->owner = e;
    set_str(c->props, kOfxPropType, kOfxTypeClip);
    set_str(c->props, kOfxPropName, name);
    e->clips[e->nclips++] = c;
    return c;
}

static struct clip *clip_find(struct effect *e, const char *name) {
    for (int k = 0; k < e->nclips; k++)
        if (strcmp(e->clips[k]->name, name) == 0) return e->clips[k];
    return NULL;
}

static struct param *param_find(struct effect *e, const char *name) {
    for (int k = 0; k < e->nparams; k++)
        if (strcmp(e->params[k]->name, name) == 0) return e->params[k];
    return NULL;
}

static struct param *param_add(struct effect *e, const char *type, const char *name) {
    if (e->nparams == MAX_PARAMS) die("too many parameters");
    struct param *p = xcalloc(1, sizeof *p);
    p->magic = MAGIC_PARAM;
    p->name = xstrdup(name);
    p->type = xstrdup(type);
    p->props = props_new();
    p->svalue = xstrdup("");
    set_str(p->props, kOfxPropType, kOfxTypeParameter);
    set_str(p->props, kOfxPropName, name);
    set_str(p->props, "OfxParamPropType", type);
    e->params[e->nparams++] = p;
    return p;
}

/* ==== Renders: what clipGetImage serves on the rendering thread ==== */

struct render_ctx {
    struct effect *effect;
    double scale;
    OfxRectI frame;       /* source frame in pixels at this scale */
    OfxRectI serve;       /* what a clipGetImage of the source without region serves */
    struct image *output; /* the output image */
    int negative;         /* rowBytes sign for source images */
    int served, outstanding;
    OfxRectI served_bounds;
    struct image *live[8];
};

static _Thread_local struct render_ctx *current;

static OfxRectI to_pixels(OfxRectD r, double scale) {
    return (OfxRectI){(int)floor(r.x1 * scale + 1e-6), (int)floor(r.y1 * scale + 1e-6), (int)ceil(r.x2 * scale - 1e-6),
                      (int)ceil(r.y2 * scale - 1e-6)};
}

static OfxRectI intersect(OfxRectI a, OfxRectI b) {
    OfxRectI r = {a.x1 > b.x1 ? a.x1 : b.x1, a.y1 > b.y1 ? a.y1 : b.y1, a.x2 < b.x2 ? a.x2 : b.x2,
                  a.y2 < b.y2 ? a.y2 : b.y2};
    if (r.x2 < r.x1) r.x2 = r.x1;
    if (r.y2 < r.y1) r.y2 = r.y1;
    return r;
}

static int contains(OfxRectI outer, OfxRectI inner) {
    return inner.x1 >= outer.x1 && inner.y1 >= outer.y1 && inner.x2 <= outer.x2 && inner.y2 <= outer.y2;
}

/* ==== The image effect suite ==== */

static OfxStatus get_property_set(OfxImageEffectHandle h, OfxPropertySetHandle *props) {
    struct effect *e = as_effect(h);
    if (!e || !props) return kOfxStatErrBadHandle;
    *props = (OfxPropertySetHandle)e->props;
    return kOfxStatOK;
}

static OfxStatus get_param_set(OfxImageEffectHandle h, OfxParamSetHandle *params) {
    struct effect *e = as_effect(h);
    if (!e || !params) return kOfxStatErrBadHandle;
    *params = (OfxParamSetHandle)&e->paramset;
    return kOfxStatOK;
}

static OfxStatus clip_define(OfxImageEffectHandle h, const char *name, OfxPropertySetHandle *props) {
    struct effect *e = as_effect(h);
    if (!e || !name) return kOfxStatErrBadHandle;
    struct clip *c = clip_find(e, name);
    if (c) return kOfxStatErrExists;
    c = clip_add(e, name);
    if (props) *props = (OfxPropertySetHandle)c->props;
    return kOfxStatOK;
}

static OfxStatus clip_get_handle(OfxImageEffectHandle h, const char *name, OfxImageClipHandle *clip,
                                 OfxPropertySetHandle *props) {
    struct effect *e = as_effect(h);
    if (!e || !name || !clip) return kOfxStatErrBadHandle;
    struct clip *c = clip_find(e, name);
    if (!c) return kOfxStatErrUnknown;
    *clip = (OfxImageClipHandle)c;
    if (props) *props = (OfxPropertySetHandle)c->props;
    return kOfxStatOK;
}

static OfxStatus clip_get_property_set(OfxImageClipHandle h, OfxPropertySetHandle *props) {
    struct clip *c = as_clip(h);
    if (!c || !props) return kOfxStatErrBadHandle;
    *props = (OfxPropertySetHandle)c->props;
    return kOfxStatOK;
}

static atomic_int unique_counter;

static OfxStatus clip_get_image(OfxImageClipHandle h, OfxTime time, const OfxRectD *region,
                                OfxPropertySetHandle *image) {
    (void)time;
    struct clip *c = as_clip(h);
    if (!c || !image) return kOfxStatErrBadHandle;
    struct render_ctx *ctx = current;
    if (!ctx || ctx->effect != c->owner) {
        FAIL("clipGetImage(%s) outside a render of its instance", c->name);
        return kOfxStatFailed;
    }
    struct image *im;
    if (strcmp(c->name, kOfxImageEffectOutputClipName) == 0) {
        im = ctx->output;
        if (!im) return kOfxStatFailed;
        *image = (OfxPropertySetHandle)im->props;
        ctx->outstanding++;
        return kOfxStatOK;
    }
    OfxRectI bounds = region ? intersect(to_pixels(*region, ctx->scale), ctx->frame) : ctx->serve;
    char unique[32];
    snprintf(unique, sizeof unique, "source%d", atomic_fetch_add(&unique_counter, 1));
    im = image_new(bounds, c->owner->format, ctx->negative, ctx->scale, unique);
    image_fill_pattern(im, bounds, ctx->scale);
    int slot = -1;
    for (int k = 0; k < 8 && slot < 0; k++)
        if (!ctx->live[k]) slot = k;
    if (slot < 0) die("the plug-in holds more than 8 source images");
    ctx->live[slot] = im;
    ctx->served++;
    ctx->outstanding++;
    ctx->served_bounds = bounds;
    *image = (OfxPropertySetHandle)im->props;
    return kOfxStatOK;
}

static OfxStatus clip_release_image(OfxPropertySetHandle h) {
    struct render_ctx *ctx = current;
    if (!ctx) return kOfxStatErrBadHandle;
    if (ctx->output && (OfxPropertySetHandle)ctx->output->props == h) {
        ctx->outstanding--;
        return kOfxStatOK;
    }
    for (int k = 0; k < 8; k++)
        if (ctx->live[k] && (OfxPropertySetHandle)ctx->live[k]->props == h) {
            image_free(ctx->live[k]);
            ctx->live[k] = NULL;
            ctx->outstanding--;
            return kOfxStatOK;
        }
    FAIL("clipReleaseImage of an image this render did not hand out");
    return kOfxStatErrBadHandle;
}

static OfxStatus clip_get_rod(OfxImageClipHandle h, OfxTime time, OfxRectD *bounds) {
    (void)time;
    struct clip *c = as_clip(h);
    if (!c || !bounds) return kOfxStatErrBadHandle;
    *bounds = (OfxRectD){0, 0, c->owner->canonical_w, c->owner->canonical_h};
    return kOfxStatOK;
}

static int effect_abort(OfxImageEffectHandle h) {
    struct effect *e = as_effect(h);
    if (!e) return 0;
    int polls = atomic_fetch_add(&e->abort_polls, 1) + 1;
    int after = atomic_load(&e->abort_after);
    return after >= 0 && polls > after;
}

static OfxStatus image_memory_alloc(OfxImageEffectHandle h, size_t n, OfxImageMemoryHandle *memory) {
    (void)h;
    if (!memory) return kOfxStatErrBadHandle;
    *memory = malloc(n ? n : 1);
    return *memory ? kOfxStatOK : kOfxStatErrMemory;
}
static OfxStatus image_memory_free(OfxImageMemoryHandle memory) {
    free(memory);
    return kOfxStatOK;
}
static OfxStatus image_memory_lock(OfxImageMemoryHandle memory, void **pointer) {
    if (!memory || !pointer) return kOfxStatErrBadHandle;
    *pointer = memory;
    return kOfxStatOK;
}
static OfxStatus image_memory_unlock(OfxImageMemoryHandle memory) { return memory ? kOfxStatOK : kOfxStatErrBadHandle; }

static const OfxImageEffectSuiteV1 effect_suite = {
    get_property_set, get_param_set,       clip_define,     clip_get_handle,    clip_get_property_set,
    clip_get_image,   clip_release_image,  clip_get_rod,    effect_abort,       image_memory_alloc,
    image_memory_free, image_memory_lock,  image_memory_unlock,
};

/* ==== The parameter suite ==== */

static int param_is_int(const struct param *p) {
    return !strcmp(p->type, kOfxParamTypeInteger) || !strcmp(p->type, kOfxParamTypeBoolean) ||
           !strcmp(p->type, kOfxParamTypeChoice);
}

static OfxStatus param_define(OfxParamSetHandle h, const char *type, const char *name, OfxPropertySetHandle *props) {
    struct paramset *ps = as_paramset(h);
    if (!ps || !type || !name) return kOfxStatErrBadHandle;
    if (param_find(ps->owner, name)) return kOfxStatErrExists;
    if (strcmp(type, kOfxParamTypeInteger) && strcmp(type, kOfxParamTypeDouble) && strcmp(type, kOfxParamTypeBoolean) &&
        strcmp(type, kOfxParamTypeChoice) && strcmp(type, kOfxParamTypeString) && strcmp(type, "OfxParamTypeGroup") &&
        strcmp(type, "OfxParamTypePage") && strcmp(type, "OfxParamTypePushButton"))
        return kOfxStatErrUnsupported;
    struct param *p = param_add(ps->owner, type, name);
    if (props) *props = (OfxPropertySetHandle)p->props;
    return kOfxStatOK;
}

static OfxStatus param_get_handle(OfxParamSetHandle h, const char *name, OfxParamHandle *param,
                                  OfxPropertySetHandle *props) {
    struct paramset *ps = as_paramset(h);
    if (!ps || !name || !param) return kOfxStatErrBadHandle;
    struct param *p = param_find(ps->owner, name);
    if (!p) return kOfxStatErrUnknown;
    *param = (OfxParamHandle)p;
    if (props) *props = (OfxPropertySetHandle)p->props;
    return kOfxStatOK;
}

static OfxStatus paramset_get_property_set(OfxParamSetHandle h, OfxPropertySetHandle *props) {
    struct paramset *ps = as_paramset(h);
    if (!ps || !props) return kOfxStatErrBadHandle;
    *props = (OfxPropertySetHandle)ps->props;
    return kOfxStatOK;
}

static OfxStatus param_get_property_set(OfxParamHandle h, OfxPropertySetHandle *props) {
    struct param *p = as_param(h);
    if (!p || !props) return kOfxStatErrBadHandle;
    *props = (OfxPropertySetHandle)p->props;
    return kOfxStatOK;
}

static OfxStatus param_get_value_list(struct param *p, va_list ap) {
    if (param_is_int(p)) {
        int *v = va_arg(ap, int *);
        if (!v) return kOfxStatErrValue;
        *v = p->ivalue;
    } else if (!strcmp(p->type, kOfxParamTypeDouble)) {
        double *v = va_arg(ap, double *);
        if (!v) return kOfxStatErrValue;
        *v = p->dvalue;
    } else if (!strcmp(p->type, kOfxParamTypeString)) {
        char **v = va_arg(ap, char **);
        if (!v) return kOfxStatErrValue;
        *v = p->svalue;
    } else {
        return kOfxStatErrUnsupported;
    }
    return kOfxStatOK;
}

static OfxStatus param_get_value(OfxParamHandle h, ...) {
    struct param *p = as_param(h);
    if (!p) return kOfxStatErrBadHandle;
    va_list ap;
    va_start(ap, h);
    OfxStatus st = param_get_value_list(p, ap);
    va_end(ap);
    return st;
}

static OfxStatus param_get_value_at_time(OfxParamHandle h, OfxTime time, ...) {
    struct param *p = as_param(h);
    if (!p) return kOfxStatErrBadHandle;
    va_list ap;
    va_start(ap, time);
    OfxStatus st = param_get_value_list(p, ap);
    va_end(ap);
    return st;
}

static OfxStatus param_unsupported_t(OfxParamHandle h, OfxTime t, ...) {
    (void)h, (void)t;
    return kOfxStatErrUnsupported;
}
static OfxStatus param_unsupported_tt(OfxParamHandle h, OfxTime t1, OfxTime t2, ...) {
    (void)h, (void)t1, (void)t2;
    return kOfxStatErrUnsupported;
}
static OfxStatus param_set_value(OfxParamHandle h, ...) {
    struct param *p = as_param(h);
    if (!p) return kOfxStatErrBadHandle;
    va_list ap;
    va_start(ap, h);
    if (param_is_int(p)) {
        p->ivalue = va_arg(ap, int);
    } else if (!strcmp(p->type, kOfxParamTypeDouble)) {
        p->dvalue = va_arg(ap, double);
    } else if (!strcmp(p->type, kOfxParamTypeString)) {
        const char *v = va_arg(ap, const char *);
        free(p->svalue);
        p->svalue = xstrdup(v ? v : "");
    } else {
        va_end(ap);
        return kOfxStatErrUnsupported;
    }
    va_end(ap);
    return kOfxStatOK;
}
static OfxStatus param_num_keys(OfxParamHandle h, unsigned int *n) {
    if (!as_param(h) || !n) return kOfxStatErrBadHandle;
    *n = 0;
    return kOfxStatOK;
}
static OfxStatus param_key_time(OfxParamHandle h, unsigned int k, OfxTime *t) {
    (void)h, (void)k, (void)t;
    return kOfxStatErrBadIndex;
}
static OfxStatus param_key_index(OfxParamHandle h, OfxTime t, int d, int *i) {
    (void)h, (void)t, (void)d, (void)i;
    return kOfxStatFailed;
}
static OfxStatus param_delete_key(OfxParamHandle h, OfxTime t) {
    (void)h, (void)t;
    return kOfxStatErrBadIndex;
}
static OfxStatus param_delete_all_keys(OfxParamHandle h) { return as_param(h) ? kOfxStatOK : kOfxStatErrBadHandle; }
static OfxStatus param_copy(OfxParamHandle to, OfxParamHandle from, OfxTime offset, const OfxRangeD *range) {
    (void)to, (void)from, (void)offset, (void)range;
    return kOfxStatErrUnsupported;
}
static OfxStatus param_edit_begin(OfxParamSetHandle h, const char *name) {
    (void)name;
    return as_paramset(h) ? kOfxStatOK : kOfxStatErrBadHandle;
}
static OfxStatus param_edit_end(OfxParamSetHandle h) { return as_paramset(h) ? kOfxStatOK : kOfxStatErrBadHandle; }

static const OfxParameterSuiteV1 parameter_suite = {
    param_define,        param_get_handle,      paramset_get_property_set, param_get_property_set,
    param_get_value,     param_get_value_at_time, param_unsupported_t,    param_unsupported_tt,
    param_set_value,     param_unsupported_t,   param_num_keys,          param_key_time,
    param_key_index,     param_delete_key,      param_delete_all_keys,   param_copy,
    param_edit_begin,    param_edit_end,
};

/* ==== Memory, multithread ==== */

static OfxStatus memory_alloc(void *handle, size_t n, void **data) {
    (void)handle;
    if (!data) return kOfxStatErrBadHandle;
    *data = malloc(n ? n : 1);
    return *data ? kOfxStatOK : kOfxStatErrMemory;
}
static OfxStatus memory_free(void *data) {
    free(data);
    return kOfxStatOK;
}
static const OfxMemorySuiteV1 memory_suite = {memory_alloc, memory_free};

static _Thread_local int spawned_index = -1;

struct spawn {
    OfxThreadFunctionV1 *func;
    unsigned int index, count;
    void *arg;
};

static void *spawn_main(void *p) {
    struct spawn *s = p;
    spawned_index = (int)s->index;
    s->func(s->index, s->count, s->arg);
    return NULL;
}

static OfxStatus multi_thread(OfxThreadFunctionV1 func, unsigned int n, void *arg) {
    if (!func) return kOfxStatErrValue;
    if (n == 0) n = 1;
    if (n > 64) n = 64;
    pthread_t threads[64];
    struct spawn spawns[64];
    for (unsigned int k = 0; k < n; k++) {
        spawns[k] = (struct spawn){func, k, n, arg};
        if (pthread_create(&threads[k], NULL, spawn_main, &spawns[k])) die("pthread_create failed");
    }
    for (unsigned int k = 0; k < n; k++) pthread_join(threads[k], NULL);
    return kOfxStatOK;
}
static OfxStatus multi_thread_cpus(unsigned int *n) {
    if (!n) return kOfxStatErrValue;
    *n = 2;
    return kOfxStatOK;
}
static OfxStatus multi_thread_index(unsigned int *i) {
    if (!i) return kOfxStatErrValue;
    *i = spawned_index < 0 ? 0 : (unsigned)spawned_index;
    return kOfxStatOK;
}
static int multi_thread_is_spawned(void) { return spawned_index >= 0; }
static OfxStatus mutex_create(OfxMutexHandle *m, int lock_count) {
    if (!m) return kOfxStatErrValue;
    pthread_mutex_t *mutex = xcalloc(1, sizeof *mutex);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    for (int k = 0; k < lock_count; k++) pthread_mutex_lock(mutex);
    *m = (OfxMutexHandle)mutex;
    return kOfxStatOK;
}
static OfxStatus mutex_destroy(const OfxMutexHandle m) {
    if (!m) return kOfxStatErrBadHandle;
    pthread_mutex_destroy((pthread_mutex_t *)m);
    free(m);
    return kOfxStatOK;
}
static OfxStatus mutex_lock(const OfxMutexHandle m) {
    return m && !pthread_mutex_lock((pthread_mutex_t *)m) ? kOfxStatOK : kOfxStatErrBadHandle;
}
static OfxStatus mutex_unlock(const OfxMutexHandle m) {
    return m && !pthread_mutex_unlock((pthread_mutex_t *)m) ? kOfxStatOK : kOfxStatErrBadHandle;
}
static OfxStatus mutex_trylock(const OfxMutexHandle m) {
    return m && !pthread_mutex_trylock((pthread_mutex_t *)m) ? kOfxStatOK : kOfxStatFailed;
}
static const OfxMultiThreadSuiteV1 multithread_suite = {
    multi_thread, multi_thread_cpus, multi_thread_index, multi_thread_is_spawned, mutex_create,
    mutex_destroy, mutex_lock,       mutex_unlock,       mutex_trylock,
};

/* ==== Messages and progress ==== */

static pthread_mutex_t messages_lock = PTHREAD_MUTEX_INITIALIZER;
static int error_messages, log_messages, load_messages;

static OfxStatus message_list(const char *kind, void *handle, const char *type, const char *id, const char *format,
                              va_list ap) {
    (void)handle, (void)id;
    char text[2048];
    vsnprintf(text, sizeof text, format ? format : "", ap);
    pthread_mutex_lock(&messages_lock);
    if (type && (!strcmp(type, kOfxMessageError) || !strcmp(type, kOfxMessageFatal))) error_messages++;
    if (type && !strcmp(type, kOfxMessageLog)) {
        log_messages++;
        if (strstr(text, "loaded model")) load_messages++;
    }
    pthread_mutex_unlock(&messages_lock);
    if (verbose || (type && strcmp(type, kOfxMessageLog)))
        fprintf(stderr, "  [%s %s] %s\n", kind, type ? type : "?", text);
    return kOfxStatOK;
}

static OfxStatus message(void *handle, const char *type, const char *id, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    OfxStatus st = message_list("message", handle, type, id, format, ap);
    va_end(ap);
    return st;
}
static OfxStatus persistent_message(void *handle, const char *type, const char *id, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    OfxStatus st = message_list("persistent", handle, type, id, format, ap);
    va_end(ap);
    return st;
}
static OfxStatus clear_persistent_message(void *handle) {
    (void)handle;
    return kOfxStatOK;
}
static const OfxMessageSuiteV1 message_suite_v1 = {message};
static const OfxMessageSuiteV2 message_suite_v2 = {message, persistent_message, clear_persistent_message};

static OfxStatus progress_start(void *h, const char *label) {
    (void)label;
    struct effect *e = as_effect(h);
    if (!e) return kOfxStatErrBadHandle;
    atomic_fetch_add(&e->progress_starts, 1);
    return kOfxStatOK;
}
static OfxStatus progress_start_v2(void *h, const char *message_text, const char *id) {
    (void)id;
    return progress_start(h, message_text);
}
static OfxStatus progress_update(void *h, double progress) {
    struct effect *e = as_effect(h);
    if (!e) return kOfxStatErrBadHandle;
    atomic_fetch_add(&e->progress_updates, 1);
    if (!(progress >= 0 && progress <= 1)) atomic_fetch_add(&e->progress_bad, 1);
    return kOfxStatOK;
}
static OfxStatus progress_end(void *h) {
    struct effect *e = as_effect(h);
    if (!e) return kOfxStatErrBadHandle;
    atomic_fetch_add(&e->progress_ends, 1);
    return kOfxStatOK;
}
static const OfxProgressSuiteV1 progress_suite_v1 = {progress_start, progress_update, progress_end};
static const OfxProgressSuiteV2 progress_suite_v2 = {progress_start_v2, progress_update, progress_end};

/* ==== The host ==== */

static const void *fetch_suite(OfxPropertySetHandle host, const char *name, int version) {
    (void)host;
    if (!name) return NULL;
    if (!strcmp(name, kOfxPropertySuite) && version == 1) return &property_suite;
    if (!strcmp(name, kOfxImageEffectSuite) && version == 1) return &effect_suite;
    if (!strcmp(name, kOfxParameterSuite) && version == 1) return &parameter_suite;
    if (!strcmp(name, kOfxMemorySuite) && version == 1) return &memory_suite;
    if (!strcmp(name, kOfxMultiThreadSuite) && version == 1) return &multithread_suite;
    if (!strcmp(name, kOfxMessageSuite) && version == 1) return &message_suite_v1;
    if (!strcmp(name, kOfxMessageSuite) && version == 2) return &message_suite_v2;
    if (!strcmp(name, kOfxProgressSuite) && version == 1) return &progress_suite_v1;
    if (!strcmp(name, kOfxProgressSuite) && version == 2) return &progress_suite_v2;
    return NULL;
}

static struct propset *host_props(void) {
    struct propset *ps = props_new();
    set_str(ps, kOfxPropType, kOfxTypeImageEffectHost);
    set_str(ps, kOfxPropName, "org.dpir.ConformanceHost");
    set_str(ps, kOfxPropLabel, "dpir OFX conformance host");
    int api[2] = {1, 4};
    prop_set_int_n((OfxPropertySetHandle)ps, kOfxPropAPIVersion, 2, api);
    set_int(ps, kOfxImageEffectHostPropIsBackground, 1);
    set_int(ps, kOfxImageEffectPropSupportsTiles, 1);
    set_int(ps, kOfxImageEffectPropSupportsMultiResolution, 1);
    set_int(ps, kOfxImageEffectPropTemporalClipAccess, 0);
    set_int(ps, kOfxImageEffectPropSupportsMultipleClipDepths, 0);
    set_int(ps, kOfxImageEffectPropSupportsMultipleClipPARs, 0);
    const char *contexts[] = {kOfxImageEffectContextFilter, kOfxImageEffectContextGeneral};
    prop_set_string_n((OfxPropertySetHandle)ps, kOfxImageEffectPropSupportedContexts, 2, contexts);
    const char *components[] = {kOfxImageComponentRGBA, kOfxImageComponentRGB};
    prop_set_string_n((OfxPropertySetHandle)ps, kOfxImageEffectPropSupportedComponents, 2, components);
    prop_set_string_n((OfxPropertySetHandle)ps, kOfxImageEffectPropSupportedPixelDepths, 4, DEPTH_NAMES);
    return ps;
}

struct plugin {
    OfxPlugin *ofx;
    struct effect *descriptor, *context;
};

static OfxStatus call(struct plugin *pl, const char *action, const void *handle, struct propset *in,
                      struct propset *out) {
    return pl->ofx->mainEntry(action, handle, (OfxPropertySetHandle)in, (OfxPropertySetHandle)out);
}

static int status_ok(OfxStatus st) { return st == kOfxStatOK || st == kOfxStatReplyDefault; }

#ifdef _WIN32
#define BINARY_FOLDER "Win64"

/* Opens the plug-in's binary through the wide API, so that a bundle in a folder named in any script loads. */
static void *open_library(const char *path) {
    wchar_t wide[4096];
    if (!MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, path, -1, wide, 4096)) die("%s: not UTF-8", path);
    HMODULE lib = LoadLibraryW(wide);
    if (!lib) {
        DWORD code = GetLastError();
        char reason[512] = "";
        FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, code, 0, reason,
                       sizeof reason, NULL);
        die("LoadLibrary %s: %s(error %lu)", path, reason, (unsigned long)code);
    }
    return (void *)lib;
}

static void (*library_symbol(void *lib, const char *name))(void) {
    return (void (*)(void))GetProcAddress((HMODULE)lib, name);
}
#else
#define BINARY_FOLDER "Linux-x86-64"

static void *open_library(const char *path) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) die("dlopen %s: %s", path, dlerror());
    return lib;
}

static void (*library_symbol(void *lib, const char *name))(void) {
    void (*symbol)(void);
    *(void **)&symbol = dlsym(lib, name); /* POSIX's way around C's function/object pointer divide */
    return symbol;
}
#endif

static struct plugin load_plugin(const char *bundle, const char *id, OfxHost *host) {
    const char *base = strrchr(bundle, '/');
    base = base ? base + 1 : bundle;
    size_t len = strlen(base);
    while (len && base[len - 1] == '/') len--;
    const char *suffix = ".ofx.bundle";
    if (len <= strlen(suffix) || strncmp(base + len - strlen(suffix), suffix, strlen(suffix)))
        die("%s is not a NAME.ofx.bundle", bundle);
    char path[4096];
    snprintf(path, sizeof path, "%s/Contents/%s/%.*s.ofx", bundle, BINARY_FOLDER, (int)(len - strlen(suffix)), base);
    void *lib = open_library(path);
    int (*count)(void) = (int (*)(void))library_symbol(lib, "OfxGetNumberOfPlugins");
    OfxPlugin *(*get)(int) = (OfxPlugin * (*)(int)) library_symbol(lib, "OfxGetPlugin");
    if (!count || !get) die("%s does not export OfxGetNumberOfPlugins and OfxGetPlugin", path);
    struct plugin pl = {0};
    int n = count();
    for (int k = 0; k < n && !pl.ofx; k++) {
        OfxPlugin *p = get(k);
        if (p && p->pluginIdentifier && !strcmp(p->pluginIdentifier, id)) pl.ofx = p;
    }
    if (!pl.ofx) die("%s has no plug-in %s (%d plug-ins)", path, id, n);
    if (!pl.ofx->pluginApi || strcmp(pl.ofx->pluginApi, kOfxImageEffectPluginApi) || pl.ofx->apiVersion != 1)
        die("%s is not an image effect of API version 1", id);
    pl.ofx->setHost(host);
    OfxStatus st = call(&pl, kOfxActionLoad, NULL, NULL, NULL);
    if (!status_ok(st)) die("Load failed with status %d", st);
    pl.descriptor = effect_new(kOfxTypeImageEffect);
    st = call(&pl, kOfxActionDescribe, pl.descriptor, NULL, NULL);
    if (!status_ok(st)) die("Describe failed with status %d", st);
    if (!has_string(pl.descriptor->props, kOfxImageEffectPropSupportedContexts, kOfxImageEffectContextFilter))
        die("%s does not support the Filter context", id);
    pl.context = effect_new(kOfxTypeImageEffect);
    copy_props(pl.context->props, pl.descriptor->props);
    struct propset *in = props_new();
    set_str(in, kOfxImageEffectPropContext, kOfxImageEffectContextFilter);
    st = call(&pl, kOfxImageEffectActionDescribeInContext, pl.context, in, NULL);
    props_free(in);
    if (!status_ok(st)) die("DescribeInContext(Filter) failed with status %d", st);
    if (!clip_find(pl.context, kOfxImageEffectSimpleSourceClipName) ||
        !clip_find(pl.context, kOfxImageEffectOutputClipName))
        die("%s does not define the Source and Output clips", id);
    return pl;
}

/* Sets a parameter from text: by label or index for choices. */
static void param_set_text(struct param *p, const char *text) {
    if (!strcmp(p->type, kOfxParamTypeString)) {
        free(p->svalue);
        p->svalue = xstrdup(text);
    } else if (!strcmp(p->type, kOfxParamTypeDouble)) {
        p->dvalue = strtod(text, NULL);
    } else if (!strcmp(p->type, kOfxParamTypeChoice)) {
        int n = dimension(p->props, kOfxParamPropChoiceOption), found = -1;
        for (int k = 0; k < n; k++)
            if (!strcmp(get_str(p->props, kOfxParamPropChoiceOption, k), text)) found = k;
        if (found < 0) {
            char *end;
            long v = strtol(text, &end, 10);
            if (*end || v < 0 || v >= n) die("parameter %s has no option %s", p->name, text);
            found = (int)v;
        }
        p->ivalue = found;
    } else if (!strcmp(p->type, kOfxParamTypeBoolean)) {
        p->ivalue = !strcmp(text, "1") || !strcmp(text, "true") || !strcmp(text, "yes");
    } else if (!strcmp(p->type, kOfxParamTypeInteger)) {
        p->ivalue = (int)strtol(text, NULL, 10);
    } else {
        die("parameter %s of type %s cannot be set", p->name, p->type);
    }
}

static struct effect *create_instance(struct plugin *pl, struct format f, double w, double h, char **settings,
                                      int nsettings) {
    struct effect *e = effect_new(kOfxTypeImageEffectInstance);
    copy_props(e->props, pl->context->props);
    set_str(e->props, kOfxPropType, kOfxTypeImageEffectInstance);
    set_str(e->props, kOfxImageEffectPropContext, kOfxImageEffectContextFilter);
    set_int(e->props, kOfxPropIsInteractive, 0);
    e->format = f;
    e->canonical_w = w, e->canonical_h = h;
    for (int k = 0; k < pl->context->nclips; k++) {
        struct clip *d = pl->context->clips[k];
        struct clip *c = clip_add(e, d->name);
        copy_props(c->props, d->props);
        set_str(c->props, kOfxImageEffectPropPixelDepth, DEPTH_NAMES[f.depth]);
        set_str(c->props, kOfxImageEffectPropComponents,
                f.channels == 4 ? kOfxImageComponentRGBA : kOfxImageComponentRGB);
        set_str(c->props, kOfxImageEffectPropPreMultiplication, premultiplication(f));
        set_dbl(c->props, kOfxImagePropPixelAspectRatio, 1.0);
        set_int(c->props, kOfxImageClipPropConnected, 1);
    }
    for (int k = 0; k < pl->context->nparams; k++) {
        struct param *d = pl->context->params[k];
        struct param *p = param_add(e, d->type, d->name);
        copy_props(p->props, d->props);
        set_str(p->props, kOfxPropType, kOfxTypeParameterInstance);
        if (param_is_int(p)) prop_get_int((OfxPropertySetHandle)p->props, kOfxParamPropDefault, 0, &p->ivalue);
        if (!strcmp(p->type, kOfxParamTypeDouble))
            prop_get_double((OfxPropertySetHandle)p->props, kOfxParamPropDefault, 0, &p->dvalue);
        if (!strcmp(p->type, kOfxParamTypeString)) {
            const char *v = get_str(p->props, kOfxParamPropDefault, 0);
            free(p->svalue);
            p->svalue = xstrdup(v ? v : "");
        }
    }
    for (int k = 0; k < nsettings; k++) {
        char *eq = strchr(settings[k], '=');
        if (!eq) die("expected PARAM=VALUE, got %s", settings[k]);
        *eq = '\0';
        struct param *p = param_find(e, settings[k]);
        if (!p) die("the plug-in has no parameter %s", settings[k]);
        param_set_text(p, eq + 1);
        *eq = '=';
    }
    OfxStatus st = call(pl, kOfxActionCreateInstance, e, NULL, NULL);
    if (!status_ok(st)) die("CreateInstance failed with status %d", st);
    return e;
}

static void destroy_instance(struct plugin *pl, struct effect *e) {
    OfxStatus st = call(pl, kOfxActionDestroyInstance, e, NULL, NULL);
    if (!status_ok(st)) FAIL("DestroyInstance returned %d", st);
    effect_free(e);
}

/* Asks the source region of interest of `window` (pixels at `scale`), in pixels clipped to the frame. */
static OfxStatus region_of_interest(struct plugin *pl, struct effect *e, double time, double scale, OfxRectI window,
                                    OfxRectI frame, OfxRectI *roi) {
    struct propset *in = props_new(), *out = props_new();
    set_dbl(in, kOfxPropTime, time);
    double s[2] = {scale, scale};
    prop_set_double_n((OfxPropertySetHandle)in, kOfxImageEffectPropRenderScale, 2, s);
    double asked[4] = {window.x1 / scale, window.y1 / scale, window.x2 / scale, window.y2 / scale};
    prop_set_double_n((OfxPropertySetHandle)in, kOfxImageEffectPropRegionOfInterest, 4, asked);
    char name[128];
    snprintf(name, sizeof name, "%s%s", kOfxImageClipPropRoI_, kOfxImageEffectSimpleSourceClipName);
    prop_set_double_n((OfxPropertySetHandle)out, name, 4, asked); /* the default: the asked region */
    OfxStatus st = call(pl, kOfxImageEffectActionGetRegionsOfInterest, e, in, out);
    OfxRectD r;
    if (prop_get_double_n((OfxPropertySetHandle)out, name, 4, &r.x1) != kOfxStatOK) {
        FAIL("GetRegionsOfInterest removed %s", name);
        r = (OfxRectD){asked[0], asked[1], asked[2], asked[3]};
    }
    *roi = intersect(to_pixels(r, scale), frame);
    props_free(in);
    props_free(out);
    return st;
}

struct render_result {
    OfxStatus status;
    OfxRectI roi, served;
    int served_count;
};

/* Renders `window` at `scale`: RoI, a source served as asked (or the whole frame), a poisoned output. */
static struct render_result render_at(struct plugin *pl, struct effect *e, double time, double scale, OfxRectI window,
                                      int negative, int serve_whole, struct image **output) {
    struct render_result rr = {0};
    OfxRectI frame = to_pixels((OfxRectD){0, 0, e->canonical_w, e->canonical_h}, scale);
    OfxStatus st = region_of_interest(pl, e, time, scale, window, frame, &rr.roi);
    if (!status_ok(st)) FAIL("GetRegionsOfInterest returned %d", st);
    struct render_ctx ctx = {.effect = e, .scale = scale, .frame = frame, .negative = negative};
    ctx.serve = serve_whole ? frame : rr.roi;
    OfxRectI bounds = {window.x1 - 2, window.y1 - 2, window.x2 + 2, window.y2 + 2};
    ctx.output = *output = image_new(bounds, e->format, negative, scale, "output");
    struct propset *in = props_new();
    set_dbl(in, kOfxPropTime, time);
    set_str(in, kOfxImageEffectPropFieldToRender, kOfxImageFieldNone);
    int w[4] = {window.x1, window.y1, window.x2, window.y2};
    prop_set_int_n((OfxPropertySetHandle)in, kOfxImageEffectPropRenderWindow, 4, w);
    double s[2] = {scale, scale};
    prop_set_double_n((OfxPropertySetHandle)in, kOfxImageEffectPropRenderScale, 2, s);
    set_int(in, kOfxImageEffectPropSequentialRenderStatus, 0);
    set_int(in, kOfxImageEffectPropInteractiveRenderStatus, 0);
    current = &ctx;
    rr.status = call(pl, kOfxImageEffectActionRender, e, in, NULL);
    current = NULL;
    props_free(in);
    rr.served = ctx.served_bounds;
    rr.served_count = ctx.served;
    if (ctx.outstanding) FAIL("render returned holding %d images", ctx.outstanding);
    for (int k = 0; k < 8; k++) image_free(ctx.live[k]);
    return rr;
}

static struct render_result render(struct plugin *pl, struct effect *e, double scale, OfxRectI window, int negative,
                                   int serve_whole, struct image **output) {
    return render_at(pl, e, 0, scale, window, negative, serve_whole, output);
}

/* Copies a window of an output image into a float frame buffer (channels interleaved, y up). */
static void collect(struct image *im, OfxRectI window, OfxRectI frame, float *dst) {
    int fw = frame.x2 - frame.x1, ch = im->format.channels;
    for (int y = window.y1; y < window.y2; y++)
        for (int x = window.x1; x < window.x2; x++) {
            char *px = image_pixel(im, x, y);
            for (int c = 0; c < ch; c++)
                dst[((size_t)(y - frame.y1) * fw + (x - frame.x1)) * ch + c] =
                    (float)read_sample(px + (size_t)c * DEPTH_BYTES[im->format.depth], im->format.depth);
        }
}

static int count_nan(struct image *im, OfxRectI window) {
    int n = 0;
    for (int y = window.y1; y < window.y2; y++)
        for (int x = window.x1; x < window.x2; x++)
            for (int c = 0; c < im->format.channels; c++)
                if (isnan(read_sample(image_pixel(im, x, y) + (size_t)c * DEPTH_BYTES[im->format.depth],
                                      im->format.depth)))
                    n++;
    return n;
}

/* ==== Checks ==== */

struct options {
    double canonical_w, canonical_h;
    int tiles[8][2], ntiles;
    double scales[8];
    int nscales;
    int threads;
    double tolerance;
    int report_only, serve_whole, abort_after;
    struct format format;
};

static void check_describe(struct plugin *pl) {
    struct propset *d = pl->descriptor->props;
    const char *label = get_str(d, kOfxPropLabel, 0);
    printf("plug-in %s: \"%s\", version %s\n", pl->ofx->pluginIdentifier, label ? label : "?",
           get_str(d, kOfxPropVersionLabel, 0) ? get_str(d, kOfxPropVersionLabel, 0) : "?");
    printf("  contexts:");
    for (int k = 0; k < dimension(d, kOfxImageEffectPropSupportedContexts); k++)
        printf(" %s", get_str(d, kOfxImageEffectPropSupportedContexts, k));
    printf("\n  depths:");
    for (int k = 0; k < dimension(d, kOfxImageEffectPropSupportedPixelDepths); k++)
        printf(" %s", get_str(d, kOfxImageEffectPropSupportedPixelDepths, k));
    printf("\n  tiles %d, multi-resolution %d, thread safety %s, host frame threading %d\n",
           get_int(d, kOfxImageEffectPropSupportsTiles, 1), get_int(d, kOfxImageEffectPropSupportsMultiResolution, 1),
           get_str(d, kOfxImageEffectPluginRenderThreadSafety, 0)
               ? get_str(d, kOfxImageEffectPluginRenderThreadSafety, 0)
               : "(default)",
           get_int(d, kOfxImageEffectPluginPropHostFrameThreading, 1));
    for (int k = 0; k < pl->context->nclips; k++) {
        struct clip *c = pl->context->clips[k];
        printf("  clip %s:", c->name);
        for (int j = 0; j < dimension(c->props, kOfxImageEffectPropSupportedComponents); j++)
            printf(" %s", get_str(c->props, kOfxImageEffectPropSupportedComponents, j));
        printf("\n");
        if (!has_string(c->props, kOfxImageEffectPropSupportedComponents, kOfxImageComponentRGBA))
            FAIL("clip %s does not take RGBA", c->name);
    }
    for (int k = 0; k < pl->context->nparams; k++) {
        struct param *p = pl->context->params[k];
        const char *plabel = get_str(p->props, kOfxPropLabel, 0), *parent = get_str(p->props, kOfxParamPropParent, 0);
        char values[160] = "";
        if (!strcmp(p->type, kOfxParamTypeInteger) || !strcmp(p->type, kOfxParamTypeBoolean))
            snprintf(values, sizeof values, "default %d, %d..%d", get_int(p->props, kOfxParamPropDefault, 0),
                     get_int(p->props, kOfxParamPropMin, 0), get_int(p->props, kOfxParamPropMax, 1));
        else if (!strcmp(p->type, kOfxParamTypeDouble))
            snprintf(values, sizeof values, "default %g, %g..%g", get_dbl(p->props, kOfxParamPropDefault, 0),
                     get_dbl(p->props, kOfxParamPropMin, 0), get_dbl(p->props, kOfxParamPropMax, 0));
        else if (!strcmp(p->type, kOfxParamTypeChoice))
            snprintf(values, sizeof values, "default %s",
                     get_str(p->props, kOfxParamPropChoiceOption, get_int(p->props, kOfxParamPropDefault, 0)));
        else if (!strcmp(p->type, kOfxParamTypeString))
            snprintf(values, sizeof values, "default \"%s\"", get_str(p->props, kOfxParamPropDefault, 0));
        printf("  param %-16s %-11s %-26s %s%s%s\n", p->name, p->type + strlen("OfxParamType"), plabel ? plabel : "",
               values, parent ? " in " : "", parent ? parent : "");
        if (!get_str(p->props, kOfxParamPropHint, 0)) FAIL("parameter %s has no hint", p->name);
        if (parent && !param_find(pl->context, parent)) FAIL("parameter %s is in %s, which is not defined", p->name, parent);
    }
}

/* Applies each PARAM=VALUE to an instance as a user's edit (kOfxActionInstanceChanged after each; a push button
 * takes no value), then prints every value: what a host shows after the plug-in reacted. */
static void check_changes(struct plugin *pl, const struct options *o, char **changes, int nchanges) {
    struct effect *e = create_instance(pl, o->format, o->canonical_w, o->canonical_h, NULL, 0);
    for (int k = 0; k < nchanges; k++) {
        char *eq = strchr(changes[k], '=');
        if (eq) *eq = '\0';
        struct param *p = param_find(e, changes[k]);
        if (!p) die("the plug-in has no parameter %s", changes[k]);
        if (eq) param_set_text(p, eq + 1);
        struct propset *in = props_new();
        set_str(in, kOfxPropType, kOfxTypeParameter);
        set_str(in, kOfxPropName, p->name);
        set_str(in, kOfxPropChangeReason, kOfxChangeUserEdited);
        set_dbl(in, kOfxPropTime, 0);
        double scale[2] = {1, 1};
        prop_set_double_n((OfxPropertySetHandle)in, kOfxImageEffectPropRenderScale, 2, scale);
        OfxStatus st = call(pl, kOfxActionInstanceChanged, e, in, NULL);
        props_free(in);
        if (!status_ok(st)) FAIL("InstanceChanged(%s) returned %d", p->name, st);
        printf("changed %s%s%s\n", p->name, eq ? " to " : "", eq ? eq + 1 : "");
        if (eq) *eq = '=';
    }
    for (int k = 0; k < e->nparams; k++) {
        struct param *p = e->params[k];
        if (!strcmp(p->type, kOfxParamTypeString)) printf("  %s = %s\n", p->name, p->svalue);
        else if (!strcmp(p->type, kOfxParamTypeDouble)) printf("  %s = %g\n", p->name, p->dvalue);
        else if (param_is_int(p)) printf("  %s = %d\n", p->name, p->ivalue);
    }
    printf("  %d error messages\n", error_messages);
    destroy_instance(pl, e);
}

struct tile_job {
    struct plugin *pl;
    struct effect *e;
    double scale;
    OfxRectI frame, *windows;
    int nwindows, negative, serve_whole;
    atomic_int next;
    float *result;
    pthread_mutex_t lock;
    int nan_pixels, not_ok, roi_outside;
    double min_served_fraction, max_served_fraction;
};

static void *tile_worker(void *p) {
    struct tile_job *job = p;
    for (;;) {
        int k = atomic_fetch_add(&job->next, 1);
        if (k >= job->nwindows) return NULL;
        OfxRectI window = job->windows[k];
        struct image *out;
        int negative = job->negative == 2 ? k % 2 : job->negative;
        struct render_result rr = render(job->pl, job->e, job->scale, window, negative, job->serve_whole, &out);
        char what[96];
        snprintf(what, sizeof what, "tile (%d,%d)-(%d,%d)", window.x1, window.y1, window.x2, window.y2);
        image_check_outside(out, window, what);
        int nan = count_nan(out, window);
        pthread_mutex_lock(&job->lock);
        if (rr.status != kOfxStatOK) job->not_ok++;
        job->nan_pixels += nan;
        if (!contains(job->frame, rr.roi)) job->roi_outside++;
        int fa = (job->frame.x2 - job->frame.x1) * (job->frame.y2 - job->frame.y1);
        double fraction = (double)(rr.served.x2 - rr.served.x1) * (rr.served.y2 - rr.served.y1) / fa;
        if (fraction > job->max_served_fraction) job->max_served_fraction = fraction;
        if (fraction < job->min_served_fraction) job->min_served_fraction = fraction;
        collect(out, window, job->frame, job->result);
        pthread_mutex_unlock(&job->lock);
        image_free(out);
    }
}

/* Renders the frame in tiles of tw x th on `threads` threads into `result`; `negative` 2 alternates the sign of
 * rowBytes from tile to tile. */
static struct tile_job run_tiles(struct plugin *pl, struct effect *e, double scale, OfxRectI frame, int tw, int th,
                                 int negative, int serve_whole, int threads, float *result) {
    struct tile_job job = {.pl = pl, .e = e, .scale = scale, .frame = frame, .negative = negative,
                           .serve_whole = serve_whole, .result = result, .min_served_fraction = 1};
    pthread_mutex_init(&job.lock, NULL);
    int cols = (frame.x2 - frame.x1 + tw - 1) / tw, rows = (frame.y2 - frame.y1 + th - 1) / th;
    job.windows = xcalloc((size_t)cols * rows, sizeof *job.windows);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            job.windows[job.nwindows++] = intersect((OfxRectI){frame.x1 + c * tw, frame.y1 + r * th,
                                                               frame.x1 + (c + 1) * tw, frame.y1 + (r + 1) * th},
                                                    frame);
    pthread_t workers[16];
    if (threads < 1) threads = 1;
    if (threads > 16) threads = 16;
    for (int k = 0; k < threads; k++) pthread_create(&workers[k], NULL, tile_worker, &job);
    for (int k = 0; k < threads; k++) pthread_join(workers[k], NULL);
    free(job.windows);
    job.windows = NULL;
    pthread_mutex_destroy(&job.lock);
    return job;
}

static double max_difference(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t k = 0; k < n; k++) {
        double d = fabs((double)a[k] - (double)b[k]);
        if (isnan(d)) return INFINITY;
        if (d > m) m = d;
    }
    return m;
}

static void check_progress(struct effect *e, const char *what) {
    int starts = atomic_load(&e->progress_starts), ends = atomic_load(&e->progress_ends);
    if (starts != ends) FAIL("%s: %d progressStart but %d progressEnd", what, starts, ends);
    if (atomic_load(&e->progress_bad))
        FAIL("%s: %d progress values outside [0, 1]", what, atomic_load(&e->progress_bad));
}

static void check_tiles(struct plugin *pl, struct options *o, char **settings, int nsettings) {
    struct effect *full_instance = create_instance(pl, o->format, o->canonical_w, o->canonical_h, settings, nsettings);
    struct effect *tile_instance = create_instance(pl, o->format, o->canonical_w, o->canonical_h, settings, nsettings);
    double worst = 0;
    for (int si = 0; si < o->nscales; si++) {
        double scale = o->scales[si];
        OfxRectI frame = to_pixels((OfxRectD){0, 0, o->canonical_w, o->canonical_h}, scale);
        size_t n = (size_t)(frame.x2 - frame.x1) * (frame.y2 - frame.y1) * o->format.channels;
        float *full = xcalloc(n, sizeof *full), *tiled = xcalloc(n, sizeof *tiled);
        struct image *out;
        struct render_result rr = render(pl, full_instance, scale, frame, 0, o->serve_whole, &out);
        if (rr.status != kOfxStatOK) die("the full-frame render at scale %g failed with status %d", scale, rr.status);
        image_check_outside(out, frame, "full frame");
        if (count_nan(out, frame)) FAIL("the full-frame render at scale %g left NaN", scale);
        collect(out, frame, frame, full);
        image_free(out);
        for (int ti = 0; ti < o->ntiles; ti++) {
            for (size_t k = 0; k < n; k++) tiled[k] = NAN;
            int tw = (int)ceil(o->tiles[ti][0] * scale), th = (int)ceil(o->tiles[ti][1] * scale);
            struct tile_job job = run_tiles(pl, tile_instance, scale, frame, tw, th, 2, o->serve_whole,
                                            o->threads, tiled);
            double diff = max_difference(full, tiled, n);
            printf("scale %-4g frame %dx%d  %2d tiles of %dx%d, rowBytes alternating in sign, sources of %.0f-%.0f%% "
                   "of the frame:  max |tiled - full| = %.3g\n",
                   scale, frame.x2 - frame.x1, frame.y2 - frame.y1, job.nwindows, tw, th,
                   100 * job.min_served_fraction, 100 * job.max_served_fraction, diff);
            if (job.not_ok) FAIL("%d tile renders failed", job.not_ok);
            if (job.nan_pixels) FAIL("tiles left %d NaN samples", job.nan_pixels);
            if (job.roi_outside) FAIL("%d RoIs reach outside the frame", job.roi_outside);
            if (diff > worst) worst = diff;
            if (!o->report_only && !(diff <= o->tolerance))
                FAIL("tiled result differs from the full frame by %g > %g", diff, o->tolerance);
        }
        free(full);
        free(tiled);
    }
    check_progress(full_instance, "full frame");
    check_progress(tile_instance, "tiles");
    printf("worst max |tiled - full| = %.3g (tolerance %g%s)\n", worst, o->tolerance,
           o->report_only ? ", report only" : "");
    printf("progress: %d updates; model loads logged: %d\n",
           atomic_load(&full_instance->progress_updates) + atomic_load(&tile_instance->progress_updates),
           load_messages);
    if (load_messages > 1) FAIL("the plug-in logged %d model loads for one model and two instances", load_messages);
    destroy_instance(pl, full_instance);
    destroy_instance(pl, tile_instance);
}

/* The largest difference a pass-through may show at a depth (quantisation of the round trip). */
static double identity_tolerance(struct format f) {
    double t = f.depth == D_BYTE ? 1.0 / 255 : f.depth == D_SHORT ? 2.0 / 65535 : f.depth == D_HALF ? 2e-3 : 1e-4;
    return f.premultiplied ? 2 * t + 1e-6 : t + 1e-6;
}

static void check_identity(struct plugin *pl, struct options *o, char **settings, int nsettings) {
    for (int depth = D_BYTE; depth <= D_FLOAT; depth++)
        for (int channels = 4; channels >= 3; channels--)
            for (int premultiplied = 0; premultiplied <= (channels == 4); premultiplied++) {
                struct format f = {(enum depth)depth, channels, premultiplied};
                struct effect *e = create_instance(pl, f, o->canonical_w, o->canonical_h, settings, nsettings);
                for (int si = 0; si < o->nscales; si++) {
                    double scale = o->scales[si];
                    OfxRectI frame = to_pixels((OfxRectD){0, 0, o->canonical_w, o->canonical_h}, scale);
                    int fw = frame.x2 - frame.x1, fh = frame.y2 - frame.y1;
                    size_t n = (size_t)fw * fh * channels;
                    float *result = xcalloc(n, sizeof *result), *expected = xcalloc(n, sizeof *expected);
                    for (size_t k = 0; k < n; k++) result[k] = NAN;
                    struct image *src = image_new(frame, f, 0, scale, "expected");
                    image_fill_pattern(src, frame, scale);
                    collect(src, frame, frame, expected);
                    image_free(src);
                    /* 2 x 2 tiles that do not divide the frame, rowBytes alternating in sign from tile to tile */
                    struct tile_job job =
                        run_tiles(pl, e, scale, frame, fw / 2 + 1, fh / 2 + 3, 2, o->serve_whole, o->threads, result);
                    double diff = max_difference(result, expected, n), tol = identity_tolerance(f);
                    printf("%-5s %-4s %-14s scale %-4g %d tiles, sources of %3.0f-%3.0f%% of the frame:  "
                           "max |out - in| = %.3g (%.3g levels)\n",
                           DEPTH_SHORT_NAMES[depth], channels == 4 ? "RGBA" : "RGB",
                           channels == 3 ? "" : premultiplied ? "premultiplied" : "straight", scale, job.nwindows,
                           100 * job.min_served_fraction, 100 * job.max_served_fraction, diff,
                           depth == D_BYTE ? diff * 255 : depth == D_SHORT ? diff * 65535 : diff);
                    if (job.not_ok) FAIL("%d renders failed", job.not_ok);
                    if (job.nan_pixels) FAIL("renders left %d NaN samples", job.nan_pixels);
                    if (!(diff <= tol)) FAIL("output differs from the input by %g > %g", diff, tol);
                    free(result);
                    free(expected);
                }
                check_progress(e, "identity");
                destroy_instance(pl, e);
            }
}

/* A render that must not succeed: `aborting` selects the abort check (no error message) over the failure one. */
static void check_failure(struct plugin *pl, struct options *o, char **settings, int nsettings, int aborting) {
    struct effect *e = create_instance(pl, o->format, o->canonical_w, o->canonical_h, settings, nsettings);
    if (aborting) atomic_store(&e->abort_after, o->abort_after);
    OfxRectI frame = to_pixels((OfxRectD){0, 0, o->canonical_w, o->canonical_h}, 1.0);
    int errors_before = error_messages;
    struct image *out;
    struct render_result rr = render(pl, e, 1.0, frame, 1, o->serve_whole, &out);
    int errors = error_messages - errors_before;
    int nan = count_nan(out, frame);
    image_check_outside(out, frame, aborting ? "aborted render" : "failed render");
    printf("%s render: status %d, %d error messages, %d abort polls, %d NaN samples left\n",
           aborting ? "aborted" : "failing", rr.status, errors, atomic_load(&e->abort_polls), nan);
    if (rr.status == kOfxStatOK) FAIL("the render reported success");
    if (!aborting && rr.status != kOfxStatFailed) FAIL("the render returned %d, not kOfxStatFailed", rr.status);
    if (!aborting && errors < 1) FAIL("the failure was not reported through the message suite");
    if (aborting && errors) FAIL("an aborted render reported an error");
    if (aborting && atomic_load(&e->abort_polls) <= o->abort_after) FAIL("the plug-in did not poll abort");
    if (nan) FAIL("the render left %d poisoned samples in its window", nan);
    check_progress(e, aborting ? "aborted render" : "failed render");
    image_free(out);
    destroy_instance(pl, e);
}

/* Renders the same source at frames 0 and 1: `expect_same` says whether the results must be identical. */
static void check_frames(struct plugin *pl, struct options *o, char **settings, int nsettings, int expect_same) {
    struct effect *e = create_instance(pl, o->format, o->canonical_w, o->canonical_h, settings, nsettings);
    OfxRectI frame = to_pixels((OfxRectD){0, 0, o->canonical_w, o->canonical_h}, 1.0);
    size_t n = (size_t)(frame.x2 - frame.x1) * (frame.y2 - frame.y1) * o->format.channels;
    float *results[2];
    for (int t = 0; t < 2; t++) {
        struct image *out;
        results[t] = xcalloc(n, sizeof *results[t]);
        struct render_result rr = render_at(pl, e, t, 1.0, frame, 0, o->serve_whole, &out);
        if (rr.status != kOfxStatOK) FAIL("the render of frame %d failed with status %d", t, rr.status);
        collect(out, frame, frame, results[t]);
        image_free(out);
    }
    double diff = max_difference(results[0], results[1], n);
    printf("same source at frames 0 and 1: max difference %.3g (expected %s)\n", diff, expect_same ? "none" : "some");
    if (expect_same && diff != 0) FAIL("a still source flickers between frames");
    if (!expect_same && !(diff > 0)) FAIL("frames 0 and 1 are identical");
    free(results[0]);
    free(results[1]);
    destroy_instance(pl, e);
}

/* Renders frame 0 of `e` whole into a new buffer. */
static float *render_frame_zero(struct plugin *pl, struct options *o, struct effect *e, OfxRectI frame, size_t n) {
    struct image *out;
    float *result = xcalloc(n, sizeof *result);
    struct render_result rr = render_at(pl, e, 0, 1.0, frame, 0, o->serve_whole, &out);
    if (rr.status != kOfxStatOK) FAIL("the render of frame 0 failed with status %d", rr.status);
    collect(out, frame, frame, result);
    image_free(out);
    return result;
}

static void check_edited(struct plugin *pl, struct options *o, char **settings, int nsettings) {
    struct effect *e = create_instance(pl, o->format, o->canonical_w, o->canonical_h, settings, nsettings);
    OfxRectI frame = to_pixels((OfxRectD){0, 0, o->canonical_w, o->canonical_h}, 1.0);
    size_t n = (size_t)(frame.x2 - frame.x1) * (frame.y2 - frame.y1) * o->format.channels;
    float *before = render_frame_zero(pl, o, e, frame, n);
    source_shift = 0.1;
    float *after = render_frame_zero(pl, o, e, frame, n);
    struct effect *fresh = create_instance(pl, o->format, o->canonical_w, o->canonical_h, settings, nsettings);
    float *expected = render_frame_zero(pl, o, fresh, frame, n);
    double changed = max_difference(before, after, n), stale = max_difference(after, expected, n);
    printf("source edited between two renders of frame 0: the result moved by %.3g; against a fresh instance %.3g\n",
           changed, stale);
    if (!(changed > 0)) FAIL("the render did not follow the edited source");
    if (stale > o->tolerance) FAIL("the second render kept state of the unedited source");
    free(before);
    free(after);
    free(expected);
    destroy_instance(pl, fresh);
    destroy_instance(pl, e);
}

static int parse_list(const char *text, double *values, int max) {
    int n = 0;
    const char *p = text;
    while (*p && n < max) {
        char *end;
        values[n++] = strtod(p, &end);
        if (end == p) die("bad list %s", text);
        p = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv) {
    argv = utf8_args(&argc, argv);
    struct options o = {.canonical_w = 150, .canonical_h = 110, .ntiles = 2, .tiles = {{64, 48}, {37, 53}},
                        .scales = {1, 0.5}, .nscales = 2, .threads = 2, .tolerance = 1e-4,
                        .format = {D_FLOAT, 4, 0}};
    int k = 1;
    for (; k < argc && !strncmp(argv[k], "--", 2); k++) {
        const char *a = argv[k];
        const char *v = k + 1 < argc ? argv[k + 1] : "";
        if (!strcmp(a, "--frame") && sscanf(v, "%lfx%lf", &o.canonical_w, &o.canonical_h) == 2) k++;
        else if (!strcmp(a, "--tiles")) {
            o.ntiles = 0;
            for (const char *p = v; *p && o.ntiles < 8;) {
                int w, h, used;
                if (sscanf(p, "%dx%d%n", &w, &h, &used) != 2 || w < 1 || h < 1) die("bad --tiles %s", v);
                o.tiles[o.ntiles][0] = w, o.tiles[o.ntiles][1] = h, o.ntiles++;
                p += used;
                if (*p == ',') p++;
            }
            k++;
        } else if (!strcmp(a, "--scales")) o.nscales = parse_list(v, o.scales, 8), k++;
        else if (!strcmp(a, "--threads")) o.threads = atoi(v), k++;
        else if (!strcmp(a, "--tolerance")) o.tolerance = strtod(v, NULL), k++;
        else if (!strcmp(a, "--abort-after")) o.abort_after = atoi(v), k++;
        else if (!strcmp(a, "--report-only")) o.report_only = 1;
        else if (!strcmp(a, "--serve-whole")) o.serve_whole = 1;
        else if (!strcmp(a, "--verbose")) verbose = 1;
        else if (!strcmp(a, "--depth")) {
            int found = 0;
            for (int d = 0; d < 4; d++)
                if (!strcmp(v, DEPTH_SHORT_NAMES[d])) o.format.depth = (enum depth)d, found = 1;
            if (!found) die("bad --depth %s", v);
            k++;
        } else if (!strcmp(a, "--components")) {
            o.format.channels = !strcmp(v, "RGB") ? 3 : 4;
            k++;
        } else
            die("unknown option %s", a);
    }
    if (argc - k < 3) {
        fprintf(stderr, "usage: %s [OPTIONS] BUNDLE.ofx.bundle PLUGIN_ID describe|tiles|identity|fail|abort|"
                        "still|varying|edited [PARAM=VALUE ...]\n", argv[0]);
        return 2;
    }
    const char *bundle = argv[k], *id = argv[k + 1], *check = argv[k + 2];
    char **settings = argv + k + 3;
    int nsettings = argc - k - 3;
    if (o.canonical_w < 1 || o.canonical_h < 1) die("bad --frame");
    for (int s = 0; s < o.nscales; s++)
        if (!(o.scales[s] > 0 && o.scales[s] <= 1)) die("render scales must be in (0, 1]");

    struct propset *hp = host_props();
    OfxHost host = {(OfxPropertySetHandle)hp, fetch_suite};
    struct plugin pl = load_plugin(bundle, id, &host);
    if (!strcmp(check, "describe")) check_describe(&pl);
    else if (!strcmp(check, "tiles")) check_tiles(&pl, &o, settings, nsettings);
    else if (!strcmp(check, "identity")) check_identity(&pl, &o, settings, nsettings);
    else if (!strcmp(check, "fail")) check_failure(&pl, &o, settings, nsettings, 0);
    else if (!strcmp(check, "abort")) check_failure(&pl, &o, settings, nsettings, 1);
    else if (!strcmp(check, "still")) check_frames(&pl, &o, settings, nsettings, 1);
    else if (!strcmp(check, "varying")) check_frames(&pl, &o, settings, nsettings, 0);
    else if (!strcmp(check, "edited")) check_edited(&pl, &o, settings, nsettings);
    else if (!strcmp(check, "changed")) check_changes(&pl, &o, settings, nsettings);
    else die("unknown check %s", check);

    OfxStatus st = call(&pl, kOfxActionUnload, NULL, NULL, NULL);
    if (!status_ok(st)) FAIL("Unload returned %d", st);
    effect_free(pl.descriptor);
    effect_free(pl.context);
    props_free(hp);
    if (failures) {
        fprintf(stderr, "%s: %d failures\n", check, failures);
        return 1;
    }
    printf("%s: passed\n", check);
    return 0;
}
