/*
 * dpir_ofx.c: the "DPIR Restore" OpenFX image effect (identifier org.dpir.Restore), a thin layer over dpir.h.
 *
 * It moves regions and pixels between the host and the C ABI; every pixel conversion, tile and model decision
 * lives in libdpir (linked statically into dpir.ofx). In the host's usual order: identifiers and parameter names,
 * suites fetched on load, the model cache, one action dispatcher, describe, regions of interest, render.
 *
 * Coordinates: OpenFX images are addressed bottom-up (y up, data at the bottom-left pixel, rowBytes possibly
 * negative); dpir frames are top-down. A crop or window [x1, x2) x [y1, y2) of a frame whose pixel bounds are
 * (fx1, fy1, fx2, fy2) is the dpir rectangle (x1 - fx1, fy2 - y2, x2 - x1, y2 - y1), and its top row lies at
 * data + (y2 - 1 - bounds.y1) * rowBytes, so the dpir stride is -rowBytes whatever its sign.
 *
 * File-level state, all of it: the host and its suites (OpenFX hands the host to setHost and to nothing else, so
 * it must be kept; fetched once, then read-only) and the model cache (a mutex, documented below). Instances keep
 * their clip and parameter handles in their instance data.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, strdup */

#include <dpir.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "openfx.h"

#if DPIR_ABI_VERSION != 0
#error "dpir_ofx.c is written against dpir ABI version 0"
#endif

#ifdef _WIN32
#include <windows.h>
#define EXPORT __declspec(dllexport)
#define DEFAULT_PLACE "%LOCALAPPDATA%\\dpir\\model"
#else
#define EXPORT __attribute__((visibility("default")))
#define DEFAULT_PLACE "~/.local/share/dpir/model"
#endif

/* ---- Identifiers and parameter names ---- */

#define PLUGIN_ID "org.dpir.Restore"
#define PLUGIN_LABEL "DPIR Restore"
#define PLUGIN_GROUPING "dpir"
#define PLUGIN_DESCRIPTION                                                                                            \
    "Restores degraded frames with DPIR (Dual Prompting Image Restoration, a Stable Diffusion 3 transformer) on "   \
    "ONNX Runtime. The starting noise is locked to frame position and seed, so a still shot does not flicker."

/* Parameters, in the order the host shows them: the basic ones, then the Advanced group. The names are also MLT's
 * filter property names. */
enum param {
    PARAM_MODEL,          /* string, folder or its dpir.json: the model bundle; "default" or "" = dpir's default */
    PARAM_STEPS,          /* integer: denoising steps */
    PARAM_GUIDANCE,       /* double: guidance scale ("prompt strength") */
    PARAM_PROVIDER,       /* choice: where the model runs */
    PARAM_SEED,           /* integer: seed (Advanced, as all below) */
    PARAM_SEED_PER_FRAME, /* boolean: add the frame number to the seed */
    PARAM_TILE_MODE,      /* choice: independent or joint tiles */
    PARAM_TILE_SIZE,      /* integer: tile side in pixels */
    PARAM_TILE_OVERLAP,   /* integer: tile overlap in pixels */
    PARAM_GLOBAL_CONTEXT, /* choice: what each render reads for the global prompt */
    PARAM_CONTEXT_MARGIN, /* integer: pixels of surrounding frame read around a region */
    PARAM_ENCODING,       /* choice: how pixel values encode light */
    PARAM_MAX_MEMORY,     /* double: the memory budget in GiB, 0 = none */
    PARAM_DEVICE,         /* integer: CUDA device for CUDA and TensorRT */
    PARAM_COUNT
};

static const char *const PARAM_NAMES[PARAM_COUNT] = {
    "model", "steps", "guidance", "provider", "seed", "seed_per_frame", "tile_mode", "tile_size", "tile_overlap",
    "global_context", "context_margin", "encoding", "max_memory", "device",
};
#define FIRST_ADVANCED PARAM_SEED
#define ADVANCED_GROUP "advanced"
#define NEW_SEED "new_seed" /* push button, after the seed */
#define MAIN_PAGE "main"
/* The model parameter's value for dpir's default model. */
#define DEFAULT_MODEL "default"

/* Choice options; their order is the parameter's value (MLT sets choices by these labels). */
static const char *const PROVIDER_OPTIONS[] = {"Auto", "CPU", "CUDA", "TensorRT"};
static const uint32_t PROVIDER_VALUES[] = {DPIR_EXECUTION_PROVIDER_AUTO, DPIR_EXECUTION_PROVIDER_CPU,
                                           DPIR_EXECUTION_PROVIDER_CUDA, DPIR_EXECUTION_PROVIDER_TENSORRT};
enum global_context { GLOBAL_WHOLE_FRAME, GLOBAL_REGION };
static const char *const GLOBAL_CONTEXT_OPTIONS[] = {"Whole frame", "Region"};
static const char *const TILE_MODE_OPTIONS[] = {"Independent", "Joint"};
static const uint32_t TILE_MODE_VALUES[] = {DPIR_TILE_MODE_INDEPENDENT, DPIR_TILE_MODE_JOINT};
enum encoding { ENCODING_AUTO, ENCODING_SRGB, ENCODING_LINEAR };
static const char *const ENCODING_OPTIONS[] = {"Auto", "sRGB", "Linear"};

/* What the parameters start at when no model is found while the host asks for them: what dpir's converter writes
 * into a DPIR bundle. Otherwise they are the default model's own values. */
static const dpir_bundle_info FALLBACK_DEFAULTS = {
    .default_steps = 28, .default_guidance = 1.0f, .default_seed = 1234, .pixels_per_latent = 8,
    .default_tile_pixels = 1024, .default_overlap_pixels = 128, .tile_step_pixels = 16, .max_tile_pixels = 1024,
};

#define COUNT(array) ((int)(sizeof(array) / sizeof((array)[0])))
#define DEFAULT_CONTEXT_MARGIN 64
#define MAX_SEED 2147483647 /* an integer parameter's largest */
#define MESSAGE_SIZE 1024

/* ---- The model's values ---- */

/* Reads the values of the model bundle at `path` (NULL: dpir's default) into `values`, its numbers only (its
 * strings go with the bundle); returns 0, with dpir's message for the calling thread, when it cannot be read. */
static int read_model_values(const char *path, dpir_bundle_info *values) {
    dpir_bundle *bundle = NULL;
    int ok = dpir_bundle_open(path, &bundle) == DPIR_STATUS_OK &&
             dpir_bundle_get_info(bundle, values, sizeof *values) == DPIR_STATUS_OK;
    dpir_bundle_free(bundle);
    values->path = values->model_name = NULL;
    return ok;
}

/* A model's seed as the seed parameter holds it. */
static int seed_parameter(uint64_t seed) { return seed > MAX_SEED ? MAX_SEED : (int)seed; }

/* ---- Suites fetched on load ---- */

struct suites {
    const OfxPropertySuiteV1 *property;
    const OfxImageEffectSuiteV1 *effect;
    const OfxParameterSuiteV1 *parameter;
    const OfxMessageSuiteV1 *message;   /* optional */
    const OfxMessageSuiteV2 *message2;  /* optional: persistent messages */
    const OfxProgressSuiteV1 *progress; /* optional */
};

/* The host given to setHost. Hosts may call setHost and Load again (MLT does, per instance, from several
 * threads), so it is atomic and the suites are fetched once, then published read-only. */
static _Atomic(OfxHost *) host_given;
static pthread_mutex_t suites_lock = PTHREAD_MUTEX_INITIALIZER;
static struct suites suites_storage;
static _Atomic(const struct suites *) suites_ready;

static void set_host(OfxHost *host) { atomic_store(&host_given, host); }

/* The host's suites, or NULL before a successful Load. */
static const struct suites *suites(void) { return atomic_load_explicit(&suites_ready, memory_order_acquire); }

static OfxStatus fetch_suites(void) {
    if (suites()) return kOfxStatOK;
    OfxHost *host = atomic_load(&host_given);
    if (!host || !host->fetchSuite) return kOfxStatErrMissingHostFeature;
    pthread_mutex_lock(&suites_lock);
    OfxStatus status = kOfxStatOK;
    if (!suites()) {
        struct suites *s = &suites_storage;
        s->property = host->fetchSuite(host->host, kOfxPropertySuite, 1);
        s->effect = host->fetchSuite(host->host, kOfxImageEffectSuite, 1);
        s->parameter = host->fetchSuite(host->host, kOfxParameterSuite, 1);
        s->message = host->fetchSuite(host->host, kOfxMessageSuite, 1);
        s->message2 = host->fetchSuite(host->host, kOfxMessageSuite, 2);
        s->progress = host->fetchSuite(host->host, kOfxProgressSuite, 1);
        if (s->property && s->effect && s->parameter)
            atomic_store_explicit(&suites_ready, s, memory_order_release);
        else
            status = kOfxStatErrMissingHostFeature;
    }
    pthread_mutex_unlock(&suites_lock);
    return status;
}

/* ---- Messages ---- */

/* Reports an error on an instance: a persistent message where the host has them, else a message. */
static void report_error(const struct suites *s, OfxImageEffectHandle effect, const char *text) {
    if (s->message2 && s->message2->setPersistentMessage)
        s->message2->setPersistentMessage(effect, kOfxMessageError, NULL, "%s", text);
    else if (s->message && s->message->message)
        s->message->message(effect, kOfxMessageError, NULL, "%s", text);
    else
        fprintf(stderr, "%s\n", text);
}

static void clear_error(const struct suites *s, OfxImageEffectHandle effect) {
    if (s->message2 && s->message2->clearPersistentMessage) s->message2->clearPersistentMessage(effect);
}

static void log_message(const struct suites *s, OfxImageEffectHandle effect, const char *text) {
    if (s->message && s->message->message) s->message->message(effect, kOfxMessageLog, NULL, "%s", text);
}

/* "DPIR Restore: what: details" from the calling thread's last dpir failure (whose message names its kind). */
static void describe_failure(char *text, size_t size, const char *what, dpir_status status) {
    const char *details = dpir_last_error_message();
    snprintf(text, size, PLUGIN_LABEL ": %s: %s", what, details[0] ? details : dpir_status_string(status));
}

/* ---- The model cache ----
 *
 * Restorers are expensive (seconds to minutes to load, gigabytes for the real model) and thread-safe, so one
 * restorer per (bundle, provider, device) serves every instance of the process: hosts create instances freely
 * (MLT makes one per frame when it renders frames in parallel). Entries are counted while a render uses them;
 * at most MODEL_CACHE_KEEP unused ones stay loaded (least recently used first out), and Unload and PurgeCaches
 * free every unused one. Loads happen under the lock: renders that need the same model wait for one load. */

#define MODEL_CACHE_SLOTS 8
#define MODEL_CACHE_KEEP 2

struct model {
    char *path;
    uint32_t provider;
    int32_t device;
    uint64_t memory_budget;
    dpir_restorer *restorer;
    uint32_t pixels_per_latent, tile_step; /* the bundle's: tile sizes in pixels become latent samples */
    unsigned users;
    uint64_t last_used;
};

static struct {
    pthread_mutex_t lock;
    struct model slots[MODEL_CACHE_SLOTS];
    uint64_t clock;
} models = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void model_free(struct model *m) {
    dpir_restorer_free(m->restorer);
    free(m->path);
    memset(m, 0, sizeof *m);
}

/* Frees unused models beyond the `keep` most recently used. Called with the lock held. */
static void models_trim(int keep) {
    for (;;) {
        int loaded_idle = 0;
        struct model *oldest = NULL;
        for (int i = 0; i < MODEL_CACHE_SLOTS; i++) {
            struct model *m = &models.slots[i];
            if (!m->restorer || m->users) continue;
            loaded_idle++;
            if (!oldest || m->last_used < oldest->last_used) oldest = m;
        }
        if (loaded_idle <= keep || !oldest) return;
        model_free(oldest);
    }
}

/* Finds or loads the model; on success the caller must model_release() it. On failure `error` says why. */
static struct model *model_acquire(const struct suites *s, OfxImageEffectHandle effect, const char *path,
                                   uint32_t provider, int32_t device, uint64_t memory_budget, char *error,
                                   size_t error_size) {
    pthread_mutex_lock(&models.lock);
    struct model *found = NULL, *free_slot = NULL;
    for (int i = 0; i < MODEL_CACHE_SLOTS && !found; i++) {
        struct model *m = &models.slots[i];
        if (!m->restorer) {
            if (!free_slot) free_slot = m;
        } else if (m->provider == provider && m->device == device && m->memory_budget == memory_budget &&
                   strcmp(m->path, path) == 0) {
            found = m;
        }
    }
    if (!found) {
        models_trim(MODEL_CACHE_KEEP - 1);
        for (int i = 0; i < MODEL_CACHE_SLOTS && !free_slot; i++)
            if (!models.slots[i].restorer) free_slot = &models.slots[i];
        if (!free_slot) {
            snprintf(error, error_size, PLUGIN_LABEL ": %d models are in use at once; render fewer at a time",
                     MODEL_CACHE_SLOTS);
            pthread_mutex_unlock(&models.lock);
            return NULL;
        }
        dpir_load_options options;
        dpir_load_options_init(&options, sizeof options);
        options.execution_provider = provider;
        options.device = device;
        options.memory_budget = memory_budget;
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        dpir_restorer *restorer = NULL;
        dpir_status status = dpir_restorer_load(path, &options, &restorer);
        if (status != DPIR_STATUS_OK) {
            char what[256];
            snprintf(what, sizeof what, "cannot load the model \"%.200s\"", path);
            describe_failure(error, error_size, what, status);
            pthread_mutex_unlock(&models.lock);
            return NULL;
        }
        char *copy = strdup(path);
        if (!copy) {
            dpir_restorer_free(restorer);
            snprintf(error, error_size, PLUGIN_LABEL ": out of memory");
            pthread_mutex_unlock(&models.lock);
            return NULL;
        }
        clock_gettime(CLOCK_MONOTONIC, &end);
        dpir_restorer_info info;
        dpir_bundle_info units;
        char text[MESSAGE_SIZE], defaults[256] = "";
        const char *ep = "?";
        if (!read_model_values(path, &units)) units = FALLBACK_DEFAULTS;
        if (dpir_restorer_get_info(restorer, &info, sizeof info) == DPIR_STATUS_OK) {
            ep = info.execution_provider_name;
            snprintf(defaults, sizeof defaults,
                     "; its own values: %u steps, guidance %g, seed %llu, tiles of %u pixels overlapping by %u",
                     info.default_steps, (double)info.default_guidance, (unsigned long long)info.default_seed,
                     units.default_tile_pixels, units.default_overlap_pixels);
        }
        snprintf(text, sizeof text, PLUGIN_LABEL ": loaded model %.400s on %s in %.2f s%s", path, ep,
                 (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) * 1e-9, defaults);
        log_message(s, effect, text);
        found = free_slot;
        *found = (struct model){.path = copy,
                                .provider = provider,
                                .device = device,
                                .memory_budget = memory_budget,
                                .restorer = restorer,
                                .pixels_per_latent = units.pixels_per_latent,
                                .tile_step = units.tile_step_pixels};
    }
    found->users++;
    found->last_used = ++models.clock;
    pthread_mutex_unlock(&models.lock);
    return found;
}

static void model_release(struct model *m) {
    if (!m) return;
    pthread_mutex_lock(&models.lock);
    m->users--;
    pthread_mutex_unlock(&models.lock);
}

static void models_free_unused(void) {
    pthread_mutex_lock(&models.lock);
    models_trim(0);
    pthread_mutex_unlock(&models.lock);
}

/* ---- Instances and parameters ---- */

/* Parameter values at one time. */
struct settings {
    char model[4096];
    uint32_t provider;
    int32_t device;
    int steps;
    int seed;
    int seed_per_frame;
    double guidance;
    int global_context;
    int context_margin;
    uint32_t tile_mode;
    int tile_size;
    int tile_overlap;
    int encoding;
    uint64_t memory_budget;
};

/* The dpir frame of one (time, render scale, parameters, frame, source pixels) in whole-frame mode: the host
 * renders a frame as many tiles, and they share its global prompt, computed once. Counted while renders use it. */
struct shared_frame {
    dpir_frame *frame;
    unsigned users; /* renders using it, plus one while it is the instance's current frame */
    struct frame_key {
        char settings[sizeof(struct settings)];
        double time, scale[2];
        OfxRectI frame;
        const dpir_restorer *restorer;
        uint64_t source; /* pixels_digest() of the source frame */
    } key;
};

struct instance {
    OfxImageClipHandle source, output;
    OfxParamHandle params[PARAM_COUNT];
    pthread_mutex_t lock; /* guards `frame` */
    struct shared_frame *frame; /* the latest frame rendered, kept for its other tiles */
};


static struct instance *instance_of(const struct suites *s, OfxImageEffectHandle effect) {
    OfxPropertySetHandle props;
    void *data = NULL;
    if (s->effect->getPropertySet(effect, &props) != kOfxStatOK) return NULL;
    if (s->property->propGetPointer(props, kOfxPropInstanceData, 0, &data) != kOfxStatOK) return NULL;
    return data;
}

static int get_int(const struct suites *s, OfxParamHandle p, OfxTime t, int fallback) {
    int v = fallback;
    if (!p || s->parameter->paramGetValueAtTime(p, t, &v) != kOfxStatOK) return fallback;
    return v;
}

static double get_double(const struct suites *s, OfxParamHandle p, OfxTime t, double fallback) {
    double v = fallback;
    if (!p || s->parameter->paramGetValueAtTime(p, t, &v) != kOfxStatOK) return fallback;
    return v;
}

static int get_choice(const struct suites *s, OfxParamHandle p, OfxTime t, int options) {
    int v = get_int(s, p, t, 0);
    return v >= 0 && v < options ? v : 0;
}

/* The model folder the parameter names (the folder or its dpir.json; "default" or nothing: dpir's default,
 * $DPIR_MODEL, else DEFAULT_PLACE), its manifest read to be sure, and its values into `values` when
 * not NULL (numbers only). Returns 0 with an error text that says what is wrong (a folder above bundles: which
 * ones it holds). */
static int find_model(const char *parameter, char *path, size_t size, dpir_bundle_info *values, char *error,
                      size_t error_size) {
    const char *named = parameter && parameter[0] && strcmp(parameter, DEFAULT_MODEL) != 0 ? parameter : NULL;
    dpir_bundle *bundle = NULL;
    dpir_bundle_info info;
    if (dpir_bundle_open(named, &bundle) != DPIR_STATUS_OK) {
        snprintf(error, error_size, PLUGIN_LABEL ": %s: %s", named ? "this model cannot be used" : "no model found",
                 dpir_last_error_message());
        return 0;
    }
    dpir_bundle_get_info(bundle, &info, sizeof info);
    int fits = strlen(info.path) < size;
    if (fits)
        memcpy(path, info.path, strlen(info.path) + 1);
    else
        snprintf(error, error_size, PLUGIN_LABEL ": the model path is too long");
    if (values) {
        *values = info;
        values->path = values->model_name = NULL;
    }
    dpir_bundle_free(bundle);
    return fits;
}

/* Reads every parameter at `time`; returns 0 and an error text when no model is found. */
static int read_settings(const struct suites *s, const struct instance *in, OfxTime t, struct settings *out,
                         char *error, size_t error_size) {
    memset(out, 0, sizeof *out);
    char *model = NULL;
    if (in->params[PARAM_MODEL]) s->parameter->paramGetValueAtTime(in->params[PARAM_MODEL], t, &model);
    if (!find_model(model, out->model, sizeof out->model, NULL, error, error_size)) return 0;
    out->provider = PROVIDER_VALUES[get_choice(s, in->params[PARAM_PROVIDER], t, COUNT(PROVIDER_OPTIONS))];
    out->device = get_int(s, in->params[PARAM_DEVICE], t, 0);
    out->steps = get_int(s, in->params[PARAM_STEPS], t, 0);
    out->seed = get_int(s, in->params[PARAM_SEED], t, -1);
    out->seed_per_frame = get_int(s, in->params[PARAM_SEED_PER_FRAME], t, 0);
    out->guidance = get_double(s, in->params[PARAM_GUIDANCE], t, 0.0);
    out->global_context = get_choice(s, in->params[PARAM_GLOBAL_CONTEXT], t, COUNT(GLOBAL_CONTEXT_OPTIONS));
    out->context_margin = get_int(s, in->params[PARAM_CONTEXT_MARGIN], t, DEFAULT_CONTEXT_MARGIN);
    out->tile_mode = TILE_MODE_VALUES[get_choice(s, in->params[PARAM_TILE_MODE], t, COUNT(TILE_MODE_OPTIONS))];
    out->tile_size = get_int(s, in->params[PARAM_TILE_SIZE], t, 0);
    out->tile_overlap = get_int(s, in->params[PARAM_TILE_OVERLAP], t, -1);
    out->encoding = get_choice(s, in->params[PARAM_ENCODING], t, COUNT(ENCODING_OPTIONS));
    out->memory_budget = (uint64_t)(get_double(s, in->params[PARAM_MAX_MEMORY], t, 0.0) * 1073741824.0);
    return 1;
}

/* The context margin in pixels at this render scale. */
static int margin_pixels(const struct settings *st, const double scale[2]) {
    double m = ceil((st->context_margin > 0 ? st->context_margin : 0) * fmax(scale[0], scale[1]) - 1e-9);
    return m > 1e6 ? 1000000 : (int)m;
}

/* A tile side in pixels as latent samples of the model: down to its step, at least one step; 0 (from older
 * projects) takes the model's own. */
static uint32_t tile_latents(int pixels, const struct model *m) {
    if (pixels <= 0) return 0;
    uint32_t snapped = (uint32_t)pixels / m->tile_step * m->tile_step;
    return (snapped ? snapped : m->tile_step) / m->pixels_per_latent;
}

/* The restore options of these settings at `time` and render scale (no callbacks). */
static void restore_options(const struct settings *st, const struct model *m, OfxTime t, const double scale[2],
                            dpir_restore_options *o) {
    dpir_restore_options_init(o, sizeof *o);
    o->steps = st->steps > 0 ? (uint32_t)st->steps : 0;
    o->guidance = st->guidance > 0 ? (float)st->guidance : 0.0f;
    o->tile_mode = st->tile_mode;
    o->tile_size = tile_latents(st->tile_size, m);
    o->tile_overlap = st->tile_overlap >= 0 ? st->tile_overlap / (int)m->pixels_per_latent : -1;
    o->context_margin = margin_pixels(st, scale);
    if (st->seed >= 0 || st->seed_per_frame) {
        uint64_t seed = (uint64_t)st->seed;
        if (st->seed < 0) {
            dpir_restorer_info info;
            seed = dpir_restorer_get_info(m->restorer, &info, sizeof info) == DPIR_STATUS_OK ? info.default_seed : 0;
        }
        if (st->seed_per_frame) seed += (uint64_t)(int64_t)floor(t + 0.5);
        o->seed = seed == DPIR_SEED_DEFAULT ? 0 : seed;
    }
}

/* ---- Geometry ---- */

struct scale {
    double x, y, par; /* render scale and pixel aspect ratio */
};

/* A pixel coordinate, clamped far inside int: "infinite" regions of definition (kOfxFlagInfiniteMax) stay defined
 * and end up as a frame dpir refuses as too large, with a message. */
static int to_coordinate(double v) {
    const double limit = 1 << 29;
    return v != v ? 0 : v < -limit ? -(int)limit : v > limit ? (int)limit : (int)v;
}

/* Canonical to pixel coordinates, enclosing. */
static OfxRectI to_pixels(OfxRectD r, struct scale sc) {
    double fx = sc.x / sc.par, fy = sc.y;
    return (OfxRectI){to_coordinate(floor(r.x1 * fx + 1e-6)), to_coordinate(floor(r.y1 * fy + 1e-6)),
                      to_coordinate(ceil(r.x2 * fx - 1e-6)), to_coordinate(ceil(r.y2 * fy - 1e-6))};
}

static OfxRectD to_canonical(OfxRectI r, struct scale sc) {
    double fx = sc.par / sc.x, fy = 1.0 / sc.y;
    return (OfxRectD){r.x1 * fx, r.y1 * fy, r.x2 * fx, r.y2 * fy};
}

static OfxRectI intersect(OfxRectI a, OfxRectI b) {
    OfxRectI r = {a.x1 > b.x1 ? a.x1 : b.x1, a.y1 > b.y1 ? a.y1 : b.y1, a.x2 < b.x2 ? a.x2 : b.x2,
                  a.y2 < b.y2 ? a.y2 : b.y2};
    if (r.x2 < r.x1) r.x2 = r.x1;
    if (r.y2 < r.y1) r.y2 = r.y1;
    return r;
}

static int is_empty(OfxRectI r) { return r.x2 <= r.x1 || r.y2 <= r.y1; }

static int same_rect(OfxRectI a, OfxRectI b) { return a.x1 == b.x1 && a.y1 == b.y1 && a.x2 == b.x2 && a.y2 == b.y2; }

/* A rectangle of the frame `f` (pixel coordinates, y up) as a dpir rectangle (y down from the frame's top). */
static dpir_rect to_dpir(OfxRectI r, OfxRectI f) {
    return (dpir_rect){(uint32_t)(r.x1 - f.x1), (uint32_t)(f.y2 - r.y2), (uint32_t)(r.x2 - r.x1),
                       (uint32_t)(r.y2 - r.y1)};
}

static OfxRectI from_dpir(dpir_rect r, OfxRectI f) {
    int x1 = f.x1 + (int)r.x, y2 = f.y2 - (int)r.y;
    return (OfxRectI){x1, y2 - (int)r.height, x1 + (int)r.width, y2};
}

static void render_scale(const struct suites *s, OfxPropertySetHandle args, double scale[2]) {
    scale[0] = scale[1] = 1.0;
    s->property->propGetDoubleN(args, kOfxImageEffectPropRenderScale, 2, scale);
    for (int i = 0; i < 2; i++)
        if (!(scale[i] > 0 && scale[i] <= 1e3)) scale[i] = 1.0;
}

static double pixel_aspect_ratio(const struct suites *s, OfxImageClipHandle clip) {
    OfxPropertySetHandle props;
    double par = 1.0;
    if (s->effect->clipGetPropertySet(clip, &props) == kOfxStatOK)
        s->property->propGetDouble(props, kOfxImagePropPixelAspectRatio, 0, &par);
    return par > 0 && par < 1e3 ? par : 1.0;
}

/* The source frame at this time and scale, in pixel coordinates. */
static int source_frame(const struct suites *s, const struct instance *in, OfxTime t, struct scale sc,
                        OfxRectD *canonical, OfxRectI *pixels) {
    if (s->effect->clipGetRegionOfDefinition(in->source, t, canonical) != kOfxStatOK) return 0;
    *pixels = to_pixels(*canonical, sc);
    return !is_empty(*pixels);
}

/* ---- Images ---- */

/* An image the host handed over, described for dpir. */
struct image {
    OfxPropertySetHandle handle;
    char *data; /* bottom-left pixel of bounds */
    OfxRectI bounds;
    int row_bytes;
    uint32_t channels, sample, alpha, transfer;
    size_t pixel_bytes;
};

/* Reads an image's properties; returns 0 with a reason for what dpir cannot take. */
static int describe_image(const struct suites *s, OfxPropertySetHandle h, int encoding, struct image *im,
                          char *error, size_t error_size) {
    const OfxPropertySuiteV1 *p = s->property;
    memset(im, 0, sizeof *im);
    im->handle = h;
    void *data = NULL;
    char *depth = NULL, *components = NULL, *premultiplication = NULL;
    int bounds[4] = {0, 0, 0, 0};
    if (p->propGetPointer(h, kOfxImagePropData, 0, &data) != kOfxStatOK || !data ||
        p->propGetIntN(h, kOfxImagePropBounds, 4, bounds) != kOfxStatOK ||
        p->propGetInt(h, kOfxImagePropRowBytes, 0, &im->row_bytes) != kOfxStatOK ||
        p->propGetString(h, kOfxImageEffectPropPixelDepth, 0, &depth) != kOfxStatOK || !depth ||
        p->propGetString(h, kOfxImageEffectPropComponents, 0, &components) != kOfxStatOK || !components) {
        snprintf(error, error_size, PLUGIN_LABEL ": the host gave an image without data, bounds, row bytes, depth "
                                    "or components");
        return 0;
    }
    im->data = data;
    im->bounds = (OfxRectI){bounds[0], bounds[1], bounds[2], bounds[3]};
    size_t sample_bytes;
    if (strcmp(depth, kOfxBitDepthByte) == 0)
        im->sample = DPIR_SAMPLE_TYPE_U8, sample_bytes = 1;
    else if (strcmp(depth, kOfxBitDepthShort) == 0)
        im->sample = DPIR_SAMPLE_TYPE_U16, sample_bytes = 2;
    else if (strcmp(depth, kOfxBitDepthHalf) == 0)
        im->sample = DPIR_SAMPLE_TYPE_F16, sample_bytes = 2;
    else if (strcmp(depth, kOfxBitDepthFloat) == 0)
        im->sample = DPIR_SAMPLE_TYPE_F32, sample_bytes = 4;
    else {
        snprintf(error, error_size, PLUGIN_LABEL ": unsupported pixel depth %.64s", depth);
        return 0;
    }
    if (strcmp(components, kOfxImageComponentRGBA) == 0)
        im->channels = 4;
    else if (strcmp(components, kOfxImageComponentRGB) == 0)
        im->channels = 3;
    else {
        snprintf(error, error_size, PLUGIN_LABEL ": unsupported components %.64s (RGBA or RGB only)", components);
        return 0;
    }
    im->pixel_bytes = im->channels * sample_bytes;
    im->alpha = DPIR_ALPHA_STRAIGHT;
    if (im->channels == 4 && p->propGetString(h, kOfxImageEffectPropPreMultiplication, 0, &premultiplication) ==
                                 kOfxStatOK &&
        premultiplication && strcmp(premultiplication, kOfxImagePreMultiplied) == 0)
        im->alpha = DPIR_ALPHA_PREMULTIPLIED;
    int floating = im->sample == DPIR_SAMPLE_TYPE_F16 || im->sample == DPIR_SAMPLE_TYPE_F32;
    int linear = encoding == ENCODING_LINEAR || (encoding == ENCODING_AUTO && floating);
    im->transfer = linear ? DPIR_TRANSFER_LINEAR : DPIR_TRANSFER_SRGB;
    return 1;
}

/* Address of pixel (x, y) of an image (pixel coordinates, y up). */
static char *pixel_at(const struct image *im, int x, int y) {
    return im->data + (ptrdiff_t)(y - im->bounds.y1) * im->row_bytes +
           (ptrdiff_t)(x - im->bounds.x1) * (ptrdiff_t)im->pixel_bytes;
}

/* A dpir descriptor of the rectangle `r` (inside the image's bounds). */
static void describe_pixels(const struct image *im, OfxRectI r, dpir_pixels *px) {
    dpir_pixels_init(px, sizeof *px);
    px->width = (uint32_t)(r.x2 - r.x1);
    px->height = (uint32_t)(r.y2 - r.y1);
    px->channels = im->channels;
    px->sample = im->sample;
    px->alpha = im->alpha;
    px->transfer = im->transfer;
    px->stride = -(ptrdiff_t)im->row_bytes;
    px->data = pixel_at(im, r.x1, r.y2 - 1);
}

/* A 64-bit digest of a rectangle's pixels (FNV-1a over 8-byte words, the row's tail bytewise): a frame's tiles
 * share its global prompt only while the source they see is the same, so an upstream change at the same time
 * makes a new frame. Reading the frame once per tile costs little beside the model. */
static uint64_t pixels_digest(const struct image *im, OfxRectI r) {
    const uint64_t prime = 0x100000001b3ull;
    uint64_t h = 0xcbf29ce484222325ull;
    size_t bytes = (size_t)(r.x2 - r.x1) * im->pixel_bytes;
    for (int y = r.y1; y < r.y2; y++) {
        const unsigned char *row = (const unsigned char *)pixel_at(im, r.x1, y);
        size_t i = 0;
        for (; i + 8 <= bytes; i += 8) {
            uint64_t word;
            memcpy(&word, row + i, sizeof word);
            h = (h ^ word) * prime;
        }
        for (; i < bytes; i++) h = (h ^ row[i]) * prime;
    }
    return h;
}

/* Sets a rectangle of an image to zero (transparent black). */
static void clear_rect(const struct image *im, OfxRectI r) {
    r = intersect(r, im->bounds);
    for (int y = r.y1; y < r.y2; y++) memset(pixel_at(im, r.x1, y), 0, (size_t)(r.x2 - r.x1) * im->pixel_bytes);
}

/* ---- Actions ---- */

static OfxStatus describe(const struct suites *s, OfxImageEffectHandle effect) {
    const OfxPropertySuiteV1 *p = s->property;
    OfxPropertySetHandle props;
    if (s->effect->getPropertySet(effect, &props) != kOfxStatOK) return kOfxStatErrBadHandle;
    p->propSetString(props, kOfxPropLabel, 0, PLUGIN_LABEL);
    p->propSetString(props, kOfxPropShortLabel, 0, PLUGIN_LABEL);
    p->propSetString(props, kOfxPropLongLabel, 0, PLUGIN_LABEL);
    p->propSetString(props, kOfxPropPluginDescription, 0, PLUGIN_DESCRIPTION);
    p->propSetString(props, kOfxImageEffectPluginPropGrouping, 0, PLUGIN_GROUPING);
    const int version[3] = {DPIR_VERSION_MAJOR, DPIR_VERSION_MINOR, DPIR_VERSION_PATCH};
    p->propSetIntN(props, kOfxPropVersion, 3, version);
    p->propSetString(props, kOfxPropVersionLabel, 0, dpir_version());
    const char *const contexts[] = {kOfxImageEffectContextFilter, kOfxImageEffectContextGeneral};
    p->propSetStringN(props, kOfxImageEffectPropSupportedContexts, COUNT(contexts), contexts);
    const char *const depths[] = {kOfxBitDepthByte, kOfxBitDepthShort, kOfxBitDepthHalf, kOfxBitDepthFloat};
    p->propSetStringN(props, kOfxImageEffectPropSupportedPixelDepths, COUNT(depths), depths);
    p->propSetInt(props, kOfxImageEffectPropSupportsTiles, 0, 1);
    p->propSetInt(props, kOfxImageEffectPropSupportsMultiResolution, 0, 1);
    p->propSetInt(props, kOfxImageEffectPropTemporalClipAccess, 0, 0);
    p->propSetInt(props, kOfxImageEffectPropSupportsMultipleClipDepths, 0, 0);
    p->propSetInt(props, kOfxImageEffectPropSupportsMultipleClipPARs, 0, 0);
    p->propSetInt(props, kOfxImageEffectPluginPropSingleInstance, 0, 0);
    /* The shared restorer is thread-safe and instances keep nothing mutable. Slicing a frame into strips would
     * only repeat work (every strip samples the tiles it touches), so the host does not slice for us. */
    p->propSetString(props, kOfxImageEffectPluginRenderThreadSafety, 0, kOfxImageEffectRenderFullySafe);
    p->propSetInt(props, kOfxImageEffectPluginPropHostFrameThreading, 0, 0);
    return kOfxStatOK;
}

/* Defines a parameter with its label and hint; the advanced ones go into the Advanced group. */
static OfxPropertySetHandle define_named(const struct suites *s, OfxParamSetHandle params, const char *type,
                                         const char *name, int advanced, const char *label, const char *hint) {
    OfxPropertySetHandle props = NULL;
    if (s->parameter->paramDefine(params, type, name, &props) != kOfxStatOK || !props) return NULL;
    s->property->propSetString(props, kOfxPropLabel, 0, label);
    s->property->propSetString(props, kOfxParamPropScriptName, 0, name);
    s->property->propSetString(props, kOfxParamPropHint, 0, hint);
    if (advanced) s->property->propSetString(props, kOfxParamPropParent, 0, ADVANCED_GROUP);
    return props;
}

static OfxPropertySetHandle define_param(const struct suites *s, OfxParamSetHandle params, const char *type,
                                         enum param which, const char *label, const char *hint) {
    return define_named(s, params, type, PARAM_NAMES[which], which >= FIRST_ADVANCED, label, hint);
}

static void define_int(const struct suites *s, OfxParamSetHandle params, enum param which, const char *label,
                       const char *hint, int def, int min, int max, int display_max) {
    OfxPropertySetHandle props = define_param(s, params, kOfxParamTypeInteger, which, label, hint);
    if (!props) return;
    const OfxPropertySuiteV1 *p = s->property;
    p->propSetInt(props, kOfxParamPropDefault, 0, def);
    p->propSetInt(props, kOfxParamPropMin, 0, min);
    p->propSetInt(props, kOfxParamPropMax, 0, max);
    p->propSetInt(props, kOfxParamPropDisplayMin, 0, min);
    p->propSetInt(props, kOfxParamPropDisplayMax, 0, display_max);
    p->propSetInt(props, kOfxParamPropAnimates, 0, 0);
}

static void define_double(const struct suites *s, OfxParamSetHandle params, enum param which, const char *label,
                          const char *hint, double def, double min, double max, double display_max, int digits) {
    OfxPropertySetHandle props = define_param(s, params, kOfxParamTypeDouble, which, label, hint);
    if (!props) return;
    const OfxPropertySuiteV1 *p = s->property;
    p->propSetString(props, kOfxParamPropDoubleType, 0, kOfxParamDoubleTypePlain);
    p->propSetDouble(props, kOfxParamPropDefault, 0, def);
    p->propSetDouble(props, kOfxParamPropMin, 0, min);
    p->propSetDouble(props, kOfxParamPropMax, 0, max);
    p->propSetDouble(props, kOfxParamPropDisplayMin, 0, min);
    p->propSetDouble(props, kOfxParamPropDisplayMax, 0, display_max);
    p->propSetDouble(props, kOfxParamPropIncrement, 0, 0.5);
    p->propSetInt(props, kOfxParamPropDigits, 0, digits);
    p->propSetInt(props, kOfxParamPropAnimates, 0, 0);
}

static void define_choice(const struct suites *s, OfxParamSetHandle params, enum param which, const char *label,
                          const char *hint, const char *const *options, int count) {
    OfxPropertySetHandle props = define_param(s, params, kOfxParamTypeChoice, which, label, hint);
    if (!props) return;
    s->property->propSetStringN(props, kOfxParamPropChoiceOption, count, options);
    s->property->propSetInt(props, kOfxParamPropDefault, 0, 0);
    s->property->propSetInt(props, kOfxParamPropAnimates, 0, 0);
}

/* The values the parameters start at: the default model's own ($DPIR_MODEL, else DEFAULT_PLACE),
 * read from its dpir.json, else what dpir's converter writes for DPIR. */
static dpir_bundle_info default_model_values(void) {
    dpir_bundle_info info;
    return read_model_values(NULL, &info) ? info : FALLBACK_DEFAULTS;
}

static OfxStatus describe_in_context(const struct suites *s, OfxImageEffectHandle effect) {
    const OfxPropertySuiteV1 *p = s->property;
    const char *const components[] = {kOfxImageComponentRGBA, kOfxImageComponentRGB};
    const char *const clips[] = {kOfxImageEffectSimpleSourceClipName, kOfxImageEffectOutputClipName};
    for (int i = 0; i < 2; i++) {
        OfxPropertySetHandle props = NULL;
        if (s->effect->clipDefine(effect, clips[i], &props) != kOfxStatOK || !props) return kOfxStatErrFatal;
        p->propSetStringN(props, kOfxImageEffectPropSupportedComponents, COUNT(components), components);
        p->propSetInt(props, kOfxImageEffectPropSupportsTiles, 0, 1);
        p->propSetInt(props, kOfxImageClipPropOptional, 0, 0);
    }
    OfxParamSetHandle params;
    if (s->effect->getParamSet(effect, &params) != kOfxStatOK) return kOfxStatErrFatal;
    dpir_bundle_info model = default_model_values();

    /* Basic. */
    OfxPropertySetHandle props = define_param(
        s, params, kOfxParamTypeString, PARAM_MODEL, "Model",
        "The DPIR model: its folder, or the dpir.json in it. \"" DEFAULT_MODEL "\" takes the DPIR_MODEL environment "
        "variable, else " DEFAULT_PLACE ". A new model brings its own quality, strength, seed and tiles.");
    if (props) {
        p->propSetString(props, kOfxParamPropStringMode, 0, kOfxParamStringIsDirectoryPath);
        p->propSetString(props, kOfxParamPropDefault, 0, DEFAULT_MODEL);
        p->propSetInt(props, kOfxParamPropAnimates, 0, 0);
    }
    define_int(s, params, PARAM_STEPS, "Quality (steps)",
               "How many times the model refines each frame. More steps give finer, more faithful detail and take "
               "proportionally longer; 4 to 10 steps make a quick draft.",
               (int)model.default_steps, 1, 1000, 50);
    define_double(s, params, PARAM_GUIDANCE, "Prompt strength",
                  "How strongly frames are pushed towards a clean, sharp picture. 1 is the model's natural result; "
                  "higher values bring crisper texture, can look over-processed, and take twice as long.",
                  model.default_guidance, 1.0, 100.0, 10.0, 1);
    define_choice(s, params, PARAM_PROVIDER, "Run on",
                  "Where the model runs. Auto takes the NVIDIA card (TensorRT, else CUDA) when its libraries load, "
                  "else the CPU, and the load message says which. CUDA or TensorRT asked for by name fail clearly "
                  "when they cannot be used.",
                  PROVIDER_OPTIONS, COUNT(PROVIDER_OPTIONS));

    /* Advanced, folded. */
    props = define_named(s, params, kOfxParamTypeGroup, ADVANCED_GROUP, 0, "Advanced",
                         "Tiles, seed, what each render reads, memory and GPU.");
    if (props) p->propSetInt(props, kOfxParamPropGroupOpen, 0, 0);
    define_int(s, params, PARAM_SEED, "Seed",
               "The starting grain. It is locked to the frame position, so a still shot keeps the same grain on "
               "every frame (no flicker); another seed gives another take on the fine detail.",
               seed_parameter(model.default_seed), 0, MAX_SEED, 100000);
    define_named(s, params, kOfxParamTypePushButton, NEW_SEED, 1, "New seed", "Picks a new random seed.");
    props = define_param(s, params, kOfxParamTypeBoolean, PARAM_SEED_PER_FRAME, "Seed per frame",
                         "Adds the frame number to the seed, so every frame gets fresh grain.");
    if (props) {
        p->propSetInt(props, kOfxParamPropDefault, 0, 0);
        p->propSetInt(props, kOfxParamPropAnimates, 0, 0);
    }
    define_choice(s, params, PARAM_TILE_MODE, "Tile mode",
                  "Frames larger than a tile are restored in tiles. Independent: each tile on its own, blended with "
                  "its neighbours (the host's own tiles equal the full frame; memory per tile). Joint: tiles agree "
                  "at every step, for the most even texture (the whole frame in memory).",
                  TILE_MODE_OPTIONS, COUNT(TILE_MODE_OPTIONS));
    define_int(s, params, PARAM_TILE_SIZE, "Tile size (pixels)",
               "The side of one tile, a multiple of the model's step (16 pixels for DPIR). Smaller tiles need less "
               "memory but see less of the picture at once.",
               (int)model.default_tile_pixels, (int)model.tile_step_pixels, (int)model.max_tile_pixels,
               (int)model.max_tile_pixels);
    define_int(s, params, PARAM_TILE_OVERLAP, "Tile overlap (pixels)",
               "How far neighbouring tiles overlap, less than a tile. Wider overlaps hide seams and add a little "
               "work.",
               (int)model.default_overlap_pixels, 0, (int)model.max_tile_pixels, 256);
    define_choice(s, params, PARAM_GLOBAL_CONTEXT, "Global context",
                  "What a render reads to understand the whole picture. Whole frame: every tile sees the whole "
                  "frame and equals the full-frame render. Region: a tile reads only what it needs plus the context "
                  "margin (less upstream work; results depend slightly on the host's tiling).",
                  GLOBAL_CONTEXT_OPTIONS, COUNT(GLOBAL_CONTEXT_OPTIONS));
    define_int(s, params, PARAM_CONTEXT_MARGIN, "Context margin (pixels)",
               "Surrounding frame (at full resolution) a region reads beyond what its tiles need: what stands for "
               "the whole picture in Region mode, and the neighbourhood restored with the region in Joint mode.",
               DEFAULT_CONTEXT_MARGIN, 0, 65536, 512);
    define_choice(s, params, PARAM_ENCODING, "Pixel encoding",
                  "How the host's pixel values encode light. Auto: 8- and 16-bit pixels are sRGB-encoded, half and "
                  "float pixels linear. Choose sRGB for hosts whose float pixels are gamma-encoded.",
                  ENCODING_OPTIONS, COUNT(ENCODING_OPTIONS));
    define_double(s, params, PARAM_MAX_MEMORY, "Memory limit (GiB)",
                  "The most memory a render may take (the graphics card's on a GPU): the model's parts take turns "
                  "in memory and tiles get smaller to fit, or the render says how much it needs. 0: no limit.",
                  0.0, 0.0, 4096.0, 80.0, 1);
    define_int(s, params, PARAM_DEVICE, "GPU", "Which NVIDIA card runs the model (0 is the first).", 0, 0, 255, 8);

    /* One page holding everything, for hosts that lay parameters out in pages. */
    props = define_named(s, params, kOfxParamTypePage, MAIN_PAGE, 0, "DPIR Restore", "DPIR Restore's settings.");
    if (props) {
        int n = 0;
        for (int i = 0; i < FIRST_ADVANCED; i++) p->propSetString(props, kOfxParamPropPageChild, n++, PARAM_NAMES[i]);
        p->propSetString(props, kOfxParamPropPageChild, n++, ADVANCED_GROUP);
    }
    return kOfxStatOK;
}

/* A parameter the user changed: a new model brings its own values (or a message saying why it cannot be used);
 * New seed draws one. Values other changes set (project loading, the plug-in itself) are left alone. */
static OfxStatus instance_changed(const struct suites *s, OfxImageEffectHandle effect, OfxPropertySetHandle in_args) {
    struct instance *in = instance_of(s, effect);
    char *name = NULL, *reason = NULL;
    if (!in || s->property->propGetString(in_args, kOfxPropName, 0, &name) != kOfxStatOK ||
        s->property->propGetString(in_args, kOfxPropChangeReason, 0, &reason) != kOfxStatOK)
        return kOfxStatReplyDefault;
    if (strcmp(reason, kOfxChangeUserEdited) != 0) return kOfxStatReplyDefault;
    OfxParamSetHandle params;
    if (s->effect->getParamSet(effect, &params) != kOfxStatOK) return kOfxStatErrBadHandle;
    const OfxParameterSuiteV1 *ps = s->parameter;

    if (strcmp(name, NEW_SEED) == 0 && in->params[PARAM_SEED]) {
        static _Atomic uint64_t draws;
        uint64_t mixed = ((uint64_t)time(NULL) << 20) ^ (uint64_t)clock() ^ (++draws * 0x9E3779B97F4A7C15u);
        mixed ^= mixed >> 31;
        ps->paramSetValue(in->params[PARAM_SEED], (int)(mixed % MAX_SEED));
        return kOfxStatOK;
    }
    if (strcmp(name, PARAM_NAMES[PARAM_MODEL]) != 0 || !in->params[PARAM_MODEL]) return kOfxStatReplyDefault;

    char *chosen = NULL, path[4096], error[MESSAGE_SIZE];
    dpir_bundle_info model;
    ps->paramGetValue(in->params[PARAM_MODEL], &chosen);
    if (!find_model(chosen, path, sizeof path, &model, error, sizeof error)) {
        report_error(s, effect, error);
        return kOfxStatOK;
    }
    clear_error(s, effect);
    ps->paramEditBegin(params, "DPIR Restore: the model's values");
    if (in->params[PARAM_STEPS]) ps->paramSetValue(in->params[PARAM_STEPS], (int)model.default_steps);
    if (in->params[PARAM_GUIDANCE]) ps->paramSetValue(in->params[PARAM_GUIDANCE], (double)model.default_guidance);
    if (in->params[PARAM_SEED]) ps->paramSetValue(in->params[PARAM_SEED], seed_parameter(model.default_seed));
    if (in->params[PARAM_TILE_SIZE]) ps->paramSetValue(in->params[PARAM_TILE_SIZE], (int)model.default_tile_pixels);
    if (in->params[PARAM_TILE_OVERLAP])
        ps->paramSetValue(in->params[PARAM_TILE_OVERLAP], (int)model.default_overlap_pixels);
    ps->paramEditEnd(params);
    return kOfxStatOK;
}

/* Drops one use of a shared frame; the last frees it. Called with the instance's lock held. */
static void shared_frame_release_locked(struct shared_frame *f) {
    if (f && --f->users == 0) {
        dpir_frame_free(f->frame);
        free(f);
    }
}

static void shared_frame_release(struct instance *in, struct shared_frame *f) {
    if (!f) return;
    pthread_mutex_lock(&in->lock);
    shared_frame_release_locked(f);
    pthread_mutex_unlock(&in->lock);
}

/* Forgets the instance's current frame (freed once no render uses it). */
static void shared_frame_forget(struct instance *in) {
    pthread_mutex_lock(&in->lock);
    shared_frame_release_locked(in->frame);
    in->frame = NULL;
    pthread_mutex_unlock(&in->lock);
}

/* The instance's frame for `key`, made from `context` (the whole source frame) when the key is new; the caller
 * releases it. Tiles of a frame that is being made wait for it rather than making their own. NULL on failure,
 * with the status in `*status`. */
static struct shared_frame *shared_frame_acquire(struct instance *in, const struct frame_key *key,
                                                 const dpir_pixels *context, const dpir_restore_options *options,
                                                 dpir_status *status) {
    pthread_mutex_lock(&in->lock);
    struct shared_frame *f = in->frame;
    if (f && memcmp(&f->key, key, sizeof *key) == 0) {
        f->users++;
        pthread_mutex_unlock(&in->lock);
        *status = DPIR_STATUS_OK;
        return f;
    }
    f = calloc(1, sizeof *f);
    *status = f ? dpir_frame_new(key->restorer, (uint32_t)(key->frame.x2 - key->frame.x1),
                                 (uint32_t)(key->frame.y2 - key->frame.y1), context, options, &f->frame)
                : DPIR_STATUS_INTERNAL;
    if (*status != DPIR_STATUS_OK) {
        free(f);
        pthread_mutex_unlock(&in->lock);
        return NULL;
    }
    f->key = *key;
    f->users = 2; /* this render, and the instance while it is current */
    shared_frame_release_locked(in->frame);
    in->frame = f;
    pthread_mutex_unlock(&in->lock);
    return f;
}

static OfxStatus create_instance(const struct suites *s, OfxImageEffectHandle effect) {
    struct instance *in = calloc(1, sizeof *in);
    if (!in) return kOfxStatErrMemory;
    OfxPropertySetHandle props;
    OfxParamSetHandle params;
    if (s->effect->getPropertySet(effect, &props) != kOfxStatOK ||
        s->effect->getParamSet(effect, &params) != kOfxStatOK ||
        s->effect->clipGetHandle(effect, kOfxImageEffectSimpleSourceClipName, &in->source, NULL) != kOfxStatOK ||
        s->effect->clipGetHandle(effect, kOfxImageEffectOutputClipName, &in->output, NULL) != kOfxStatOK) {
        free(in);
        return kOfxStatErrBadHandle;
    }
    /* A parameter a host does not keep is read as its default. */
    for (int i = 0; i < PARAM_COUNT; i++)
        if (s->parameter->paramGetHandle(params, PARAM_NAMES[i], &in->params[i], NULL) != kOfxStatOK)
            in->params[i] = NULL;
    pthread_mutex_init(&in->lock, NULL);
    s->property->propSetPointer(props, kOfxPropInstanceData, 0, in);
    return kOfxStatOK;
}

static OfxStatus destroy_instance(const struct suites *s, OfxImageEffectHandle effect) {
    OfxPropertySetHandle props;
    struct instance *in = instance_of(s, effect);
    if (in && s->effect->getPropertySet(effect, &props) == kOfxStatOK)
        s->property->propSetPointer(props, kOfxPropInstanceData, 0, NULL);
    if (in) {
        shared_frame_forget(in);
        pthread_mutex_destroy(&in->lock);
    }
    free(in);
    return kOfxStatOK;
}

/* Sets the source RoI: the whole frame, or what dpir reads for the asked region plus the context margin. */
static OfxStatus regions_of_interest(const struct suites *s, OfxImageEffectHandle effect, OfxPropertySetHandle in_args,
                                     OfxPropertySetHandle out_args) {
    struct instance *in = instance_of(s, effect);
    if (!in) return kOfxStatErrBadHandle;
    OfxTime t = 0;
    double scale[2];
    OfxRectD asked;
    s->property->propGetDouble(in_args, kOfxPropTime, 0, &t);
    render_scale(s, in_args, scale);
    if (s->property->propGetDoubleN(in_args, kOfxImageEffectPropRegionOfInterest, 4, &asked.x1) != kOfxStatOK)
        return kOfxStatReplyDefault;
    struct scale sc = {scale[0], scale[1], pixel_aspect_ratio(s, in->source)};
    OfxRectD frame_canonical = {0, 0, 0, 0};
    OfxRectI frame = {0, 0, 0, 0};
    if (!source_frame(s, in, t, sc, &frame_canonical, &frame)) return kOfxStatReplyDefault;

    OfxRectD roi = frame_canonical;
    struct settings st;
    char error[MESSAGE_SIZE];
    OfxRectI wanted = intersect(to_pixels(asked, sc), frame);
    if (!is_empty(wanted) && read_settings(s, in, t, &st, error, sizeof error) &&
        st.global_context == GLOBAL_REGION) {
        /* Needs the model's tile geometry. A model that does not load leaves the whole frame: render reports. */
        struct model *m = model_acquire(s, effect, st.model, st.provider, st.device, st.memory_budget, error, sizeof error);
        if (m) {
            dpir_restore_options options;
            restore_options(&st, m, t, scale, &options);
            dpir_rect rect = to_dpir(wanted, frame), needed;
            if (dpir_region_of_interest(m->restorer, (uint32_t)(frame.x2 - frame.x1), (uint32_t)(frame.y2 - frame.y1),
                                        &rect, &options, &needed) == DPIR_STATUS_OK) {
                OfxRectI r = from_dpir(needed, frame);
                int margin = margin_pixels(&st, scale);
                r = intersect((OfxRectI){r.x1 - margin, r.y1 - margin, r.x2 + margin, r.y2 + margin}, frame);
                roi = to_canonical(r, sc);
            }
            model_release(m);
        }
    }
    s->property->propSetDoubleN(out_args, kOfxImageClipPropRoI_ kOfxImageEffectSimpleSourceClipName, 4, &roi.x1);
    return kOfxStatOK;
}

/* What a render's progress callback needs. */
struct render_call {
    const struct suites *s;
    OfxImageEffectHandle effect;
    dpir_cancel *cancel;
    int progress_started;
};

/* Before each model call: the host's abort cancels the render; progress goes to the host's progress suite. */
static int on_progress(const dpir_progress *progress, void *user_data) {
    struct render_call *call = user_data;
    if (call->s->effect->abort(call->effect)) {
        dpir_cancel_request(call->cancel);
        return 1;
    }
    if (call->progress_started) {
        if (call->s->progress->progressUpdate(call->effect, progress->fraction) == kOfxStatReplyNo) {
            dpir_cancel_request(call->cancel);
            return 1;
        }
    }
    return 0;
}

/* Restores the render window from the source crop the host gave, through the region API. */
static OfxStatus render(const struct suites *s, OfxImageEffectHandle effect, OfxPropertySetHandle in_args) {
    struct instance *in = instance_of(s, effect);
    if (!in) return kOfxStatErrBadHandle;
    OfxTime t = 0;
    double scale[2];
    OfxRectI window;
    s->property->propGetDouble(in_args, kOfxPropTime, 0, &t);
    render_scale(s, in_args, scale);
    if (s->property->propGetIntN(in_args, kOfxImageEffectPropRenderWindow, 4, &window.x1) != kOfxStatOK)
        return kOfxStatErrValue;
    if (is_empty(window)) return kOfxStatOK;

    char error[MESSAGE_SIZE] = "";
    OfxStatus status = kOfxStatFailed;
    struct settings st;
    struct image dst = {0}, src = {0};
    struct model *m = NULL;
    dpir_cancel *cancel = NULL;
    struct render_call call = {s, effect, NULL, 0};
    struct shared_frame *shared = NULL;
    int have_dst = 0;

    OfxPropertySetHandle handle = NULL;
    if (s->effect->clipGetImage(in->output, t, NULL, &handle) != kOfxStatOK || !handle) {
        snprintf(error, sizeof error, PLUGIN_LABEL ": the host gave no output image");
        goto done;
    }
    dst.handle = handle;
    int encoding = get_choice(s, in->params[PARAM_ENCODING], t, COUNT(ENCODING_OPTIONS));
    if (!describe_image(s, handle, encoding, &dst, error, sizeof error)) goto done;
    if (!same_rect(intersect(window, dst.bounds), window)) {
        snprintf(error, sizeof error, PLUGIN_LABEL ": render window (%d,%d)-(%d,%d) is outside the output image",
                 window.x1, window.y1, window.x2, window.y2);
        goto done;
    }
    have_dst = 1;
    if (!read_settings(s, in, t, &st, error, sizeof error)) goto done;

    struct scale sc = {scale[0], scale[1], pixel_aspect_ratio(s, in->source)};
    OfxRectD frame_canonical = {0, 0, 0, 0};
    OfxRectI frame = {0, 0, 0, 0};
    OfxRectI inner = {0, 0, 0, 0};
    if (source_frame(s, in, t, sc, &frame_canonical, &frame)) inner = intersect(window, frame);
    if (!same_rect(inner, window)) clear_rect(&dst, window); /* pixels outside the source frame: transparent */
    if (is_empty(inner)) {
        status = kOfxStatOK;
        goto done;
    }
    handle = NULL;
    if (s->effect->clipGetImage(in->source, t, NULL, &handle) != kOfxStatOK || !handle) {
        /* The standard: no source image means transparent black. */
        clear_rect(&dst, window);
        status = kOfxStatOK;
        goto done;
    }
    src.handle = handle;
    if (!describe_image(s, handle, st.encoding, &src, error, sizeof error)) goto done;
    OfxRectI crop = intersect(src.bounds, frame);
    if (is_empty(crop)) {
        snprintf(error, sizeof error, PLUGIN_LABEL ": the source image does not overlap the frame");
        goto done;
    }
    if (s->effect->abort(effect)) goto done;

    m = model_acquire(s, effect, st.model, st.provider, st.device, st.memory_budget, error, sizeof error);
    if (!m) goto done;
    dpir_status result = dpir_cancel_new(&cancel);
    if (result != DPIR_STATUS_OK) {
        describe_failure(error, sizeof error, "cannot create a cancel handle", result);
        goto done;
    }
    call.cancel = cancel;

    dpir_restore_options options;
    restore_options(&st, m, t, scale, &options);
    options.progress = on_progress;
    options.progress_user_data = &call;
    options.cancel = cancel;

    dpir_pixels source, destination;
    describe_pixels(&src, crop, &source);
    describe_pixels(&dst, inner, &destination);
    dpir_region region;
    dpir_region_init(&region, sizeof region);
    region.source = &source;
    region.context = NULL; /* a crop that is the whole frame is its own context; a smaller one stands in */
    dpir_rect crop_rect = to_dpir(crop, frame);
    region.origin_x = crop_rect.x;
    region.origin_y = crop_rect.y;
    region.frame_width = (uint32_t)(frame.x2 - frame.x1);
    region.frame_height = (uint32_t)(frame.y2 - frame.y1);
    region.rect = to_dpir(inner, frame);

    if (s->progress && s->progress->progressStart(effect, PLUGIN_LABEL) == kOfxStatOK) call.progress_started = 1;
    if (st.global_context == GLOBAL_WHOLE_FRAME && same_rect(crop, frame)) {
        /* The whole source frame is the context: its tiles share one dpir frame and its global prompt. */
        struct frame_key key;
        memset(&key, 0, sizeof key);
        memcpy(key.settings, &st, sizeof st);
        key.time = t;
        key.scale[0] = scale[0];
        key.scale[1] = scale[1];
        key.frame = frame;
        key.restorer = m->restorer;
        key.source = pixels_digest(&src, crop);
        shared = shared_frame_acquire(in, &key, &source, &options, &result);
        if (shared)
            result = dpir_frame_restore_region(shared->frame, &region, &destination, on_progress, &call, cancel);
    } else {
        result = dpir_restore_region(m->restorer, &region, &destination, &options);
    }
    if (call.progress_started) s->progress->progressEnd(effect);
    if (result == DPIR_STATUS_OK) {
        status = kOfxStatOK;
    } else if (result == DPIR_STATUS_CANCELLED) {
        error[0] = '\0'; /* the host asked for it: nothing to report */
    } else {
        describe_failure(error, sizeof error, "restore failed", result);
    }

done:
    if (status != kOfxStatOK) {
        /* Never leave stale or uninitialised pixels behind a failed render. */
        if (have_dst) clear_rect(&dst, window);
        if (error[0]) report_error(s, effect, error);
    } else {
        clear_error(s, effect);
    }
    shared_frame_release(in, shared);
    dpir_cancel_free(cancel);
    model_release(m);
    if (src.handle) s->effect->clipReleaseImage(src.handle);
    if (dst.handle) s->effect->clipReleaseImage(dst.handle);
    return status;
}

/* ---- The action dispatcher ---- */

/* ONNX Runtime's threads and libdpir's thread-locals can outlive a host's unloading of the plug-in: it stays mapped
 * until the host exits (on Linux, the -z nodelete of plugins/ofx/build.sh does this). The module is found by an
 * address inside it, any of its statics. */
static void stay_loaded(void) {
#ifdef _WIN32
    HMODULE self;
    GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_PIN,
                       (LPCWSTR)(const void *)&suites_storage, &self);
#endif
}

static OfxStatus main_entry(const char *action, const void *handle, OfxPropertySetHandle in_args,
                            OfxPropertySetHandle out_args) {
    if (!action) return kOfxStatErrValue;
    if (strcmp(action, kOfxActionLoad) == 0) {
        stay_loaded();
        return fetch_suites();
    }
    const struct suites *s = suites();
    if (!s) return kOfxStatErrMissingHostFeature; /* no action before a successful Load */
    OfxImageEffectHandle effect = (OfxImageEffectHandle)handle;
    if (strcmp(action, kOfxActionUnload) == 0 || strcmp(action, kOfxActionPurgeCaches) == 0) {
        struct instance *in = effect ? instance_of(s, effect) : NULL;
        if (in) shared_frame_forget(in);
        models_free_unused();
        return kOfxStatOK;
    }
    if (!effect) return kOfxStatReplyDefault;
    if (strcmp(action, kOfxImageEffectActionEndSequenceRender) == 0) {
        /* The host has rendered what it wanted: the last frame's tiles are done. */
        struct instance *in = instance_of(s, effect);
        if (in) shared_frame_forget(in);
        return kOfxStatOK;
    }
    if (strcmp(action, kOfxActionDescribe) == 0) return describe(s, effect);
    if (strcmp(action, kOfxImageEffectActionDescribeInContext) == 0) return describe_in_context(s, effect);
    if (strcmp(action, kOfxActionCreateInstance) == 0) return create_instance(s, effect);
    if (strcmp(action, kOfxActionDestroyInstance) == 0) return destroy_instance(s, effect);
    if (strcmp(action, kOfxActionInstanceChanged) == 0)
        return in_args ? instance_changed(s, effect, in_args) : kOfxStatErrValue;
    if (strcmp(action, kOfxImageEffectActionGetRegionsOfInterest) == 0)
        return in_args && out_args ? regions_of_interest(s, effect, in_args, out_args) : kOfxStatErrValue;
    if (strcmp(action, kOfxImageEffectActionRender) == 0)
        return in_args ? render(s, effect, in_args) : kOfxStatErrValue;
    return kOfxStatReplyDefault;
}

static OfxPlugin plugin = {
    kOfxImageEffectPluginApi, kOfxImageEffectPluginApiVersion, PLUGIN_ID, DPIR_VERSION_MAJOR, DPIR_VERSION_MINOR,
    set_host, main_entry,
};

EXPORT int OfxGetNumberOfPlugins(void) { return 1; }

EXPORT OfxPlugin *OfxGetPlugin(int nth) { return nth == 0 ? &plugin : NULL; }
