/* The C API test: every function, every status, every kind of bad descriptor, threads and cancellation.
 *
 *   test_capi BUNDLES_DIR SCRATCH_DIR
 *
 * BUNDLES_DIR holds the fixture bundles (oracle, tiny, broken_nan) and SCRATCH_DIR a writable folder with
 * `corrupt_graph`, a copy of the oracle bundle whose transformer.onnx is not a graph (tools/test.sh makes it).
 * Built against the installed header and library; also built with AddressSanitizer. Prints one line per group
 * and ends with "N passed, 0 failed". Also built for Windows (tests/windows): paths are UTF-8 there too, and the
 * per-user model folder hangs from %LOCALAPPDATA%.
 */
#define _POSIX_C_SOURCE 200809L /* setenv, mkdtemp */

#include <dpir.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../windows/utf8_args.h"

/* What differs between the systems: the environment, folders, and where dpir's per-user model folder is. */
#ifdef _WIN32
#include <direct.h>
#define DATA_HOME "LOCALAPPDATA"
#define NO_SUCH_DATA "C:\\no\\such\\data"
#define SEP "\\"
#define ONNXRUNTIME_FILE "onnxruntime.dll"
/* Through the Win32 environment, which dpir reads, not the C runtime's copy of it; the value is UTF-8 as every
 * path here is, so through the wide API. NULL removes the variable. */
static void set_env(const char *name, const char *value) {
    wchar_t wide_name[64], wide_value[1024];
    MultiByteToWideChar(CP_UTF8, 0, name, -1, wide_name, 64);
    if (value) MultiByteToWideChar(CP_UTF8, 0, value, -1, wide_value, 1024);
    SetEnvironmentVariableW(wide_name, value ? wide_value : NULL);
}
static int make_dir(const char *path) { return _mkdir(path); }
static void remove_dir(const char *path) { _rmdir(path); }
static char *make_temp_dir(char *path, size_t size) {
    char base[MAX_PATH];
    if (!GetTempPathA(sizeof base, base)) return NULL;
    snprintf(path, size, "%sdpir-capi-%lu", base, (unsigned long)GetCurrentProcessId());
    return _mkdir(path) == 0 ? path : NULL;
}
/* A UTF-8 path opened through the wide API, as dpir opens its own. */
static FILE *open_file(const char *path, const char *mode) {
    wchar_t wide_path[1024], wide_mode[8];
    if (!MultiByteToWideChar(CP_UTF8, 0, path, -1, wide_path, 1024) ||
        !MultiByteToWideChar(CP_UTF8, 0, mode, -1, wide_mode, 8))
        return NULL;
    return _wfopen(wide_path, wide_mode);
}
#else
#include <unistd.h>
#define DATA_HOME "XDG_DATA_HOME"
#define NO_SUCH_DATA "/no/such/data"
#define SEP "/"
#define ONNXRUNTIME_FILE "libonnxruntime.so"
static void set_env(const char *name, const char *value) { value ? setenv(name, value, 1) : unsetenv(name); }
static int make_dir(const char *path) { return mkdir(path, 0700); }
static void remove_dir(const char *path) { rmdir(path); }
static char *make_temp_dir(char *path, size_t size) {
    snprintf(path, size, "/tmp/dpir-capi-XXXXXX");
    return mkdtemp(path);
}
static FILE *open_file(const char *path, const char *mode) { return fopen(path, mode); }
#endif

static int passed, failed;
static int seen[DPIR_STATUS_OUT_OF_MEMORY + 1]; /* statuses observed, to prove each one is reachable */
static const char *bundles, *scratch;

static void check(int ok, const char *what, int line) {
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAILED line %d: %s\n", line, what);
    }
}
#define CHECK(cond) check((cond) != 0, #cond, __LINE__)

/* Checks a call's status, and that the thread's message is empty on success and set on failure. */
static void expect(dpir_status expected, dpir_status got, const char *call, int line) {
    const char *message = dpir_last_error_message();
    if (got >= 0 && got <= DPIR_STATUS_OUT_OF_MEMORY) seen[got]++;
    if (got != expected) {
        failed++;
        fprintf(stderr, "FAILED line %d: %s returned %d (%s: %s), expected %d\n", line, call, (int)got,
                dpir_status_string(got), message, (int)expected);
        return;
    }
    check(message != NULL && (expected == DPIR_STATUS_OK) == (message[0] == '\0'), "message matches the status", line);
}
#define EXPECT(status, call) expect((status), (call), #call, __LINE__)

static char *join(const char *dir, const char *name) {
    static char paths[8][512];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, sizeof paths[0], "%s/%s", dir, name);
    return path;
}

/* A packed descriptor over `data`. */
static dpir_pixels describe(void *data, uint32_t width, uint32_t height, uint32_t channels, dpir_sample_type sample) {
    static const size_t bytes[] = {1, 2, 2, 4};
    dpir_pixels pixels;
    dpir_pixels_init(&pixels, sizeof pixels);
    pixels.width = width;
    pixels.height = height;
    pixels.channels = channels;
    pixels.sample = sample;
    pixels.stride = (ptrdiff_t)(width * channels * bytes[sample]);
    pixels.data = data;
    return pixels;
}

/* A smooth test picture, different for each `seed`. */
static unsigned char *picture(uint32_t width, uint32_t height, uint32_t channels, int seed) {
    unsigned char *data = malloc((size_t)width * height * channels);
    for (uint32_t y = 0; y < height; y++)
        for (uint32_t x = 0; x < width; x++)
            for (uint32_t c = 0; c < channels; c++)
                data[((size_t)y * width + x) * channels + c] =
                    (unsigned char)(c == 3 ? 255 - (x + y) % 64 : (x * 3 + y * 5 + c * 40 + seed * 17) % 200 + 20);
    return data;
}

static int all_bytes(const unsigned char *data, size_t n, unsigned char value) {
    for (size_t i = 0; i < n; i++)
        if (data[i] != value) return 0;
    return 1;
}

static int max_difference(const unsigned char *a, const unsigned char *b, size_t n) {
    int worst = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d > worst) worst = d;
    }
    return worst;
}

static dpir_restorer *load(const char *name, uint32_t threads) {
    dpir_load_options options;
    dpir_restorer *restorer = NULL;
    dpir_load_options_init(&options, sizeof options);
    options.threads = threads;
    EXPECT(DPIR_STATUS_OK, dpir_restorer_load(join(bundles, name), &options, &restorer));
    CHECK(restorer != NULL);
    return restorer;
}

static void test_versions_and_statuses(void) {
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", DPIR_VERSION_MAJOR, DPIR_VERSION_MINOR, DPIR_VERSION_PATCH);
    CHECK(strcmp(dpir_version(), expected) == 0);
    CHECK(dpir_abi_version() == DPIR_ABI_VERSION);
    for (int a = DPIR_STATUS_OK; a <= DPIR_STATUS_OUT_OF_MEMORY; a++) {
        CHECK(dpir_status_string(a) != NULL && dpir_status_string(a)[0] != '\0');
        CHECK(strcmp(dpir_status_string(a), "unknown status") != 0);
        for (int b = 0; b < a; b++) CHECK(strcmp(dpir_status_string(a), dpir_status_string(b)) != 0);
    }
    CHECK(strcmp(dpir_status_string(DPIR_STATUS_OUT_OF_MEMORY + 1), "unknown status") == 0);
    CHECK(strcmp(dpir_status_string(-1), "unknown status") == 0);
    CHECK(dpir_last_error_message() != NULL);
    printf("versions and statuses: dpir %s, ABI %u\n", dpir_version(), dpir_abi_version());
}

static void test_default_model_dir(void) {
    /* $DPIR_MODEL is taken as it is, whether or not it exists; the path is written only when it fits. */
    char path[64];
    set_env("DPIR_MODEL", "/no/such/model");
    CHECK(dpir_default_model_dir(NULL, 0) == strlen("/no/such/model"));
    CHECK(dpir_default_model_dir(path, sizeof path) == strlen("/no/such/model"));
    CHECK(strcmp(path, "/no/such/model") == 0);
    memset(path, 'x', sizeof path);
    CHECK(dpir_default_model_dir(path, 5) == strlen("/no/such/model") && path[0] == '\0' && path[5] == 'x');
    /* Without it: $XDG_DATA_HOME/dpir/model (%LOCALAPPDATA%\dpir\model), only when that folder exists. */
    set_env("DPIR_MODEL", NULL);
    char data[96], expected[160];
    CHECK(make_temp_dir(data, sizeof data) != NULL);
    set_env(DATA_HOME, data);
    CHECK(dpir_default_model_dir(path, sizeof path) == 0 && path[0] == '\0');
    snprintf(expected, sizeof expected, "%s" SEP "dpir", data);
    CHECK(make_dir(expected) == 0);
    snprintf(expected, sizeof expected, "%s" SEP "dpir" SEP "model", data);
    CHECK(make_dir(expected) == 0);
    CHECK(dpir_default_model_dir(path, sizeof path) == strlen(expected) && strcmp(path, expected) == 0);
    remove_dir(expected);
    snprintf(expected, sizeof expected, "%s" SEP "dpir", data);
    remove_dir(expected);
    remove_dir(data);
    set_env(DATA_HOME, NULL);
    printf("default model folder: $DPIR_MODEL, else $" DATA_HOME SEP "dpir" SEP "model when it exists\n");
}

static void test_bundles(void) {
    /* A bundle's manifest read without ONNX Runtime: its folder (a dpir.json named in its place resolves to its
     * folder), its name, how it was found, and the defaults in pixels. */
    dpir_bundle *bundle = (dpir_bundle *)(void *)&passed;
    dpir_bundle_info info;
    char *tiny = join(bundles, "tiny"), *manifest = join(tiny, "dpir.json");
    EXPECT(DPIR_STATUS_OK, dpir_bundle_open(manifest, &bundle));
    EXPECT(DPIR_STATUS_OK, dpir_bundle_get_info(bundle, &info, sizeof info));
    CHECK(strcmp(info.path, tiny) == 0 && strcmp(info.model_name, "tiny") == 0);
    CHECK(info.source == DPIR_MODEL_SOURCE_NAMED && info.default_steps == 28 && info.default_guidance == 1.0f);
    CHECK(info.default_seed == 1234 && info.pixels_per_latent == 8 && info.tile_step_pixels == 16);
    CHECK(info.default_tile_pixels == 1024 && info.default_overlap_pixels == 128 && info.max_tile_pixels == 1024);
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_bundle_get_info(bundle, &info, sizeof info - 8));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_bundle_get_info(NULL, &info, sizeof info));
    dpir_bundle_free(bundle);
    /* NULL names dpir's default; without one the message says where to put a model. */
    set_env("DPIR_MODEL", tiny);
    EXPECT(DPIR_STATUS_OK, dpir_bundle_open(NULL, &bundle));
    EXPECT(DPIR_STATUS_OK, dpir_bundle_get_info(bundle, &info, sizeof info));
    CHECK(info.source == DPIR_MODEL_SOURCE_ENVIRONMENT && strcmp(info.path, tiny) == 0);
    dpir_bundle_free(bundle);
    set_env("DPIR_MODEL", NULL);
    set_env(DATA_HOME, NO_SUCH_DATA);
    EXPECT(DPIR_STATUS_BUNDLE, dpir_bundle_open("", &bundle));
    CHECK(bundle == NULL &&
          strstr(dpir_last_error_message(),
                 NO_SUCH_DATA SEP "dpir" SEP "model: no model here and DPIR_MODEL is not set") != NULL);
    set_env(DATA_HOME, NULL);
#ifdef _WIN32
    /* Paths are UTF-8 on Windows: a path in the ANSI code page (here "café" in Windows-1252) is refused, named. */
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_bundle_open("caf\xe9", &bundle));
    CHECK(bundle == NULL && strstr(dpir_last_error_message(), "path is not UTF-8 (invalid at byte 3)") != NULL);
#endif
    /* The folder above bundles: the message names them. */
    EXPECT(DPIR_STATUS_BUNDLE, dpir_bundle_open(bundles, &bundle));
    CHECK(strstr(dpir_last_error_message(),
                 "it has no dpir.json; did you mean one of its folders broken_black, broken_nan, oracle, tiny?") != NULL);
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_bundle_open(tiny, NULL));
    dpir_bundle_free(NULL);
    printf("bundles: read without ONNX Runtime, defaults in pixels, dpir.json resolves to its folder\n");
}

static void test_init_functions(void) {
    /* Each init refuses NULL and unknown sizes, writes exactly `size` bytes, and sets the defaults. */
    unsigned char guard[512];
    memset(guard, 0xAB, sizeof guard);
    dpir_restore_options *in_guard = (dpir_restore_options *)(void *)guard;
    EXPECT(DPIR_STATUS_OK, dpir_restore_options_init(in_guard, sizeof(dpir_restore_options)));
    CHECK(all_bytes(guard + sizeof(dpir_restore_options), sizeof guard - sizeof(dpir_restore_options), 0xAB));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore_options_init(NULL, sizeof(dpir_restore_options)));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_load_options_init(NULL, sizeof(dpir_load_options)));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_pixels_init(NULL, sizeof(dpir_pixels)));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_region_init(NULL, sizeof(dpir_region)));
    const size_t wrong[] = {0, 7, 8, sizeof(dpir_restore_options) - 1, sizeof(dpir_restore_options) + 8};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        memset(guard, 0xAB, sizeof guard);
        EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore_options_init(in_guard, wrong[i]));
        CHECK(all_bytes(guard, sizeof guard, 0xAB));
        EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_load_options_init((dpir_load_options *)(void *)guard, wrong[i] / 2));
        EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_pixels_init((dpir_pixels *)(void *)guard, wrong[i] / 3));
        EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_region_init((dpir_region *)(void *)guard, wrong[i] / 4));
    }
    dpir_restore_options restore;
    EXPECT(DPIR_STATUS_OK, dpir_restore_options_init(&restore, sizeof restore));
    CHECK(restore.size == sizeof restore && restore.scale == 1.0f && restore.steps == 0);
    CHECK(restore.seed == DPIR_SEED_DEFAULT && restore.guidance == 0.0f && restore.prompt == NULL);
    CHECK(restore.prompt_text == NULL);
    CHECK(restore.clip_input == DPIR_CLIP_INPUT_DEFAULT && restore.color_fix == DPIR_COLOR_FIX_DEFAULT);
    CHECK(restore.progress == NULL && restore.progress_user_data == NULL && restore.cancel == NULL);
    CHECK(restore.tile_mode == DPIR_TILE_MODE_DEFAULT && restore.tile_size == 0 && restore.tile_overlap == -1);
    CHECK(restore.tile_batch == 0 && restore.context_margin == -1 && restore.sample_posterior == 0);
    dpir_load_options load;
    EXPECT(DPIR_STATUS_OK, dpir_load_options_init(&load, sizeof load));
    CHECK(load.size == sizeof load && load.onnxruntime_library == NULL && load.threads == 0);
    CHECK(load.execution_provider == DPIR_EXECUTION_PROVIDER_CPU && load.device == 0 && load.tensorrt_fp16 == 1);
    CHECK(load.tensorrt_engine_cache == NULL && load.memory_budget == 0);
    dpir_pixels pixels;
    EXPECT(DPIR_STATUS_OK, dpir_pixels_init(&pixels, sizeof pixels));
    CHECK(pixels.size == sizeof pixels && pixels.width == 0 && pixels.data == NULL && pixels.stride == 0);
    CHECK(pixels.sample == DPIR_SAMPLE_TYPE_U8 && pixels.alpha == DPIR_ALPHA_STRAIGHT);
    CHECK(pixels.transfer == DPIR_TRANSFER_SRGB);
    dpir_region region;
    EXPECT(DPIR_STATUS_OK, dpir_region_init(&region, sizeof region));
    CHECK(region.size == sizeof region && region.source == NULL && region.context == NULL && region.rect.width == 0);
    printf("init functions\n");
}

/* One bad descriptor: how to break a good one, and the status it must get. */
typedef struct {
    const char *name;
    dpir_status status;
    void (*spoil)(dpir_pixels *);
} bad_descriptor;

static void no_data(dpir_pixels *p) { p->data = NULL; }
static void zero_width(dpir_pixels *p) { p->width = 0; }
static void zero_height(dpir_pixels *p) { p->height = 0; }
static void too_wide(dpir_pixels *p) { p->width = 65537; }
static void too_tall(dpir_pixels *p) { p->height = 65537; }
static void no_channels(dpir_pixels *p) { p->channels = 0; }
static void two_channels(dpir_pixels *p) { p->channels = 2; }
static void five_channels(dpir_pixels *p) { p->channels = 5; }
static void bad_sample(dpir_pixels *p) { p->sample = 4; }
static void bad_alpha(dpir_pixels *p) { p->alpha = 2; }
static void bad_transfer(dpir_pixels *p) { p->transfer = 0x80000000u; }
static void premultiplied_rgb(dpir_pixels *p) {
    p->channels = 3;
    p->stride = p->width * 3;
    p->alpha = DPIR_ALPHA_PREMULTIPLIED;
}
static void premultiplied_gray(dpir_pixels *p) {
    p->channels = 1;
    p->alpha = DPIR_ALPHA_PREMULTIPLIED;
}
static void zero_stride(dpir_pixels *p) { p->stride = 0; }
static void short_stride(dpir_pixels *p) { p->stride = p->width * p->channels - 1; }
static void short_negative_stride(dpir_pixels *p) { p->stride = -(ptrdiff_t)(p->width * p->channels - 1); }
static void overflowing_stride(dpir_pixels *p) { p->stride = PTRDIFF_MAX / 2; }
static void most_negative_stride(dpir_pixels *p) { p->stride = PTRDIFF_MIN; }
static void rows_below_zero(dpir_pixels *p) {
    p->data = (void *)(uintptr_t)64;
    p->stride = -(ptrdiff_t)(p->width * p->channels);
}
static void rows_past_the_end(dpir_pixels *p) { p->data = (void *)(UINTPTR_MAX - 16); }
static void size_zero(dpir_pixels *p) { p->size = 0; }
static void size_larger(dpir_pixels *p) { p->size = sizeof *p + 8; }
static void size_smaller(dpir_pixels *p) { p->size = sizeof *p - 8; }

static const bad_descriptor bad_descriptors[] = {
    {"NULL data", DPIR_STATUS_INVALID_IMAGE, no_data},
    {"zero width", DPIR_STATUS_INVALID_IMAGE, zero_width},
    {"zero height", DPIR_STATUS_INVALID_IMAGE, zero_height},
    {"width over 65536", DPIR_STATUS_INVALID_IMAGE, too_wide},
    {"height over 65536", DPIR_STATUS_INVALID_IMAGE, too_tall},
    {"0 channels", DPIR_STATUS_INVALID_IMAGE, no_channels},
    {"2 channels", DPIR_STATUS_INVALID_IMAGE, two_channels},
    {"5 channels", DPIR_STATUS_INVALID_IMAGE, five_channels},
    {"unknown sample type", DPIR_STATUS_INVALID_IMAGE, bad_sample},
    {"unknown alpha mode", DPIR_STATUS_INVALID_IMAGE, bad_alpha},
    {"unknown transfer", DPIR_STATUS_INVALID_IMAGE, bad_transfer},
    {"premultiplied RGB", DPIR_STATUS_INVALID_IMAGE, premultiplied_rgb},
    {"premultiplied gray", DPIR_STATUS_INVALID_IMAGE, premultiplied_gray},
    {"zero stride", DPIR_STATUS_INVALID_IMAGE, zero_stride},
    {"stride smaller than a row", DPIR_STATUS_INVALID_IMAGE, short_stride},
    {"negative stride smaller than a row", DPIR_STATUS_INVALID_IMAGE, short_negative_stride},
    {"size overflows", DPIR_STATUS_INVALID_IMAGE, overflowing_stride},
    {"most negative stride", DPIR_STATUS_INVALID_IMAGE, most_negative_stride},
    {"bottom-up rows below address 0", DPIR_STATUS_INVALID_IMAGE, rows_below_zero},
    {"rows past the end of the address space", DPIR_STATUS_INVALID_IMAGE, rows_past_the_end},
    {"size field 0", DPIR_STATUS_INVALID_ARGUMENT, size_zero},
    {"size field larger than known", DPIR_STATUS_INVALID_ARGUMENT, size_larger},
    {"size field smaller than known", DPIR_STATUS_INVALID_ARGUMENT, size_smaller},
};
#define BAD_DESCRIPTORS (sizeof bad_descriptors / sizeof bad_descriptors[0])

static void test_descriptors(dpir_restorer *oracle) {
    enum { W = 16, H = 12 };
    unsigned char *source_data = picture(W, H, 4, 1);
    unsigned char destination_data[W * H * 4];
    dpir_pixels good = describe(source_data, W, H, 4, DPIR_SAMPLE_TYPE_U8);
    size_t span = 0;
    EXPECT(DPIR_STATUS_OK, dpir_pixels_validate(&good, &span));
    CHECK(span == W * H * 4);
    EXPECT(DPIR_STATUS_OK, dpir_pixels_validate(&good, NULL));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_pixels_validate(NULL, &span));

    /* Padded and bottom-up layouts span what they say. */
    dpir_pixels padded = good;
    padded.stride = W * 4 + 12;
    EXPECT(DPIR_STATUS_OK, dpir_pixels_validate(&padded, &span));
    CHECK(span == (size_t)(W * 4 + 12) * (H - 1) + W * 4);
    dpir_pixels bottom_up = good;
    bottom_up.stride = -(W * 4);
    bottom_up.data = source_data + (H - 1) * W * 4;
    EXPECT(DPIR_STATUS_OK, dpir_pixels_validate(&bottom_up, &span));
    CHECK(span == W * H * 4);
    dpir_pixels huge = good;
    huge.width = huge.height = 65536;
    huge.sample = DPIR_SAMPLE_TYPE_F32;
    huge.stride = 65536 * 16;
    EXPECT(DPIR_STATUS_OK, dpir_pixels_validate(&huge, &span)); /* validated, never touched */
    CHECK(span == (size_t)65536 * 65536 * 16);

    for (size_t i = 0; i < BAD_DESCRIPTORS; i++) {
        const bad_descriptor *bad = &bad_descriptors[i];
        dpir_pixels spoiled = good;
        bad->spoil(&spoiled);
        int before = failed;
        EXPECT(bad->status, dpir_pixels_validate(&spoiled, &span));
        /* As a source, a destination and a region's crop or context, with nothing written anywhere. */
        dpir_pixels destination = describe(destination_data, W, H, 4, DPIR_SAMPLE_TYPE_U8);
        memset(destination_data, 0xCD, sizeof destination_data);
        EXPECT(bad->status, dpir_restore(oracle, &spoiled, &destination, NULL));
        EXPECT(bad->status, dpir_restore(oracle, &good, &spoiled, NULL));
        dpir_region region;
        dpir_region_init(&region, sizeof region);
        region.source = &spoiled;
        region.frame_width = W;
        region.frame_height = H;
        region.rect.width = W;
        region.rect.height = H;
        EXPECT(bad->status, dpir_restore_region(oracle, &region, &destination, NULL));
        region.source = &good;
        region.context = &spoiled;
        EXPECT(bad->status, dpir_restore_region(oracle, &region, &destination, NULL));
        EXPECT(bad->status, dpir_image_write(&spoiled, join(scratch, "never.png")));
        CHECK(all_bytes(destination_data, sizeof destination_data, 0xCD));
        if (failed != before) fprintf(stderr, "  (bad descriptor: %s)\n", bad->name);
    }
    free(source_data);
    printf("descriptors: %u bad kinds refused before any pixel is touched\n", (unsigned)BAD_DESCRIPTORS);
}

static void test_loading(void) {
    dpir_restorer *restorer = (dpir_restorer *)(uintptr_t)1;
    dpir_load_options options;
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restorer_load(NULL, NULL, &restorer));
    CHECK(restorer == NULL);
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restorer_load(join(bundles, "oracle"), NULL, NULL));
    EXPECT(DPIR_STATUS_BUNDLE, dpir_restorer_load(join(scratch, "no such bundle"), NULL, &restorer));
    CHECK(restorer == NULL);
    EXPECT(DPIR_STATUS_INFERENCE, dpir_restorer_load(join(scratch, "corrupt_graph"), NULL, &restorer));
    CHECK(restorer == NULL);

    dpir_load_options_init(&options, sizeof options);
    options.execution_provider = 4;
    EXPECT(DPIR_STATUS_INVALID_OPTIONS, dpir_restorer_load(join(bundles, "oracle"), &options, &restorer));
    dpir_load_options_init(&options, sizeof options);
    options.device = -1;
    options.execution_provider = DPIR_EXECUTION_PROVIDER_CUDA;
    EXPECT(DPIR_STATUS_INVALID_OPTIONS, dpir_restorer_load(join(bundles, "oracle"), &options, &restorer));
    options.size = 3;
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restorer_load(join(bundles, "oracle"), &options, &restorer));
    /* A library that does not exist (or, once one is loaded, any other library) is refused. */
    dpir_load_options_init(&options, sizeof options);
    options.onnxruntime_library = "/nonexistent/libonnxruntime.so";
    EXPECT(DPIR_STATUS_ONNX_RUNTIME, dpir_restorer_load(join(bundles, "oracle"), &options, &restorer));
    CHECK(strstr(dpir_last_error_message(), "/nonexistent/libonnxruntime.so") != NULL);
    /* The CPU-only ONNX Runtime has no CUDA provider: an explicit request is an error, never a CPU fallback. */
    dpir_load_options_init(&options, sizeof options);
    options.execution_provider = DPIR_EXECUTION_PROVIDER_CUDA;
    EXPECT(DPIR_STATUS_EXECUTION_PROVIDER, dpir_restorer_load(join(bundles, "oracle"), &options, &restorer));
    CHECK(restorer == NULL);
    dpir_restorer_free(NULL);
    printf("loading: every failure has its status\n");
}

static void test_info_and_requirements(dpir_restorer *oracle) {
    dpir_restorer_info info;
    memset(&info, 0, sizeof info);
    EXPECT(DPIR_STATUS_OK, dpir_restorer_get_info(oracle, &info, sizeof info));
    CHECK(info.size == sizeof info && info.model_name && strlen(info.model_name) > 0);
    CHECK(strcmp(info.execution_provider_name, "cpu") == 0 && info.execution_provider == DPIR_EXECUTION_PROVIDER_CPU);
    CHECK(strstr(info.onnxruntime_library, ONNXRUNTIME_FILE) != NULL);
    CHECK(info.default_steps >= 1 && info.default_guidance >= 1.0f && info.has_text_encoder == 0);
    CHECK(info.default_tile_size >= 1 && info.default_tile_overlap < info.default_tile_size);
    CHECK(info.pixels_per_latent >= 1 && info.default_scale == 1.0f);
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restorer_get_info(NULL, &info, sizeof info));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restorer_get_info(oracle, NULL, sizeof info));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restorer_get_info(oracle, &info, sizeof info + 1));

    dpir_requirements needs;
    dpir_restore_options options;
    dpir_restore_options_init(&options, sizeof options);
    options.scale = 2.0f;
    EXPECT(DPIR_STATUS_OK, dpir_get_requirements(oracle, 64, 48, &options, &needs, sizeof needs));
    CHECK(needs.size == sizeof needs && needs.output_width == 128 && needs.output_height == 96);
    CHECK(needs.pixel_multiple >= 1 && needs.max_pass_size >= needs.pixel_multiple && needs.tiles >= 1);
    CHECK(needs.estimated_bytes > 0);
    options.paper_size = 1; /* the paper's setting: long side 1024, multiples of 8, whatever the scale */
    EXPECT(DPIR_STATUS_OK, dpir_get_requirements(oracle, 1000, 750, &options, &needs, sizeof needs));
    CHECK(needs.output_width == 1024 && needs.output_height == 768);
    options.paper_size = 0;
    EXPECT(DPIR_STATUS_OK, dpir_get_requirements(oracle, 64, 48, NULL, &needs, sizeof needs));
    CHECK(needs.output_width == 64 && needs.output_height == 48);
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_get_requirements(NULL, 64, 48, NULL, &needs, sizeof needs));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_get_requirements(oracle, 64, 48, NULL, NULL, sizeof needs));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_get_requirements(oracle, 64, 48, NULL, &needs, 4));
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_get_requirements(oracle, 0, 48, NULL, &needs, sizeof needs));
    options.scale = 5000.0f;
    EXPECT(DPIR_STATUS_TOO_LARGE, dpir_get_requirements(oracle, 64, 48, &options, &needs, sizeof needs));
    options.scale = 1.0f;
    EXPECT(DPIR_STATUS_OK, dpir_get_requirements(oracle, 64, 48, &options, &needs, sizeof needs));
    CHECK(needs.estimated_bytes > needs.weights_bytes && needs.weights_bytes > 0 && needs.releases_graphs == 0);
    CHECK(needs.tile_size == info.default_tile_size * info.pixels_per_latent);
    /* The struct of an older caller (before the memory fields) is filled as far as it reaches. */
    dpir_requirements old;
    memset(&old, 0xAB, sizeof old);
    EXPECT(DPIR_STATUS_OK, dpir_get_requirements(oracle, 64, 48, &options, &old, 40));
    CHECK(old.size == 40 && old.estimated_bytes == needs.estimated_bytes);
    CHECK(all_bytes((const unsigned char *)&old.weights_bytes, 16, 0xAB));

    /* A memory budget no tile fits: refused before any work, naming the memory it needs. */
    dpir_restorer *limited = NULL;
    dpir_load_options load;
    dpir_load_options_init(&load, sizeof load);
    load.memory_budget = 16u << 20;
    EXPECT(DPIR_STATUS_OK, dpir_restorer_load(join(bundles, "oracle"), &load, &limited));
    EXPECT(DPIR_STATUS_OUT_OF_MEMORY, dpir_get_requirements(limited, 64, 48, &options, &needs, sizeof needs));
    CHECK(strstr(dpir_last_error_message(), "needs about") != NULL);
    dpir_restorer_free(limited);

    /* Every bad option, through dpir_requirements (which resolves them all). */
    struct {
        const char *name;
        dpir_status status;
    } cases[] = {
        {"scale 0", DPIR_STATUS_INVALID_OPTIONS},       {"scale NaN", DPIR_STATUS_INVALID_OPTIONS},
        {"scale -1", DPIR_STATUS_INVALID_OPTIONS},      {"steps 1001", DPIR_STATUS_INVALID_OPTIONS},
        {"guidance 0.5", DPIR_STATUS_INVALID_OPTIONS},  {"guidance 101", DPIR_STATUS_INVALID_OPTIONS},
        {"caption not UTF-8", DPIR_STATUS_INVALID_OPTIONS}, {"prompt not UTF-8", DPIR_STATUS_INVALID_OPTIONS},
        {"clip_input 3", DPIR_STATUS_INVALID_OPTIONS},  {"color_fix 3", DPIR_STATUS_INVALID_OPTIONS},
        {"tile_mode 3", DPIR_STATUS_INVALID_OPTIONS},   {"tile_size 1", DPIR_STATUS_INVALID_OPTIONS},
        {"tile_overlap -2", DPIR_STATUS_INVALID_OPTIONS}, {"tile_overlap = tile", DPIR_STATUS_INVALID_OPTIONS},
        {"tile_batch 65", DPIR_STATUS_INVALID_OPTIONS}, {"context_margin -5", DPIR_STATUS_INVALID_OPTIONS},
        {"size 0", DPIR_STATUS_INVALID_ARGUMENT},       {"size + 8", DPIR_STATUS_INVALID_ARGUMENT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dpir_restore_options_init(&options, sizeof options);
        switch (i) {
        case 0: options.scale = 0.0f; break;
        case 1: options.scale = (float)NAN; break;
        case 2: options.scale = -1.0f; break;
        case 3: options.steps = 1001; break;
        case 4: options.guidance = 0.5f; break;
        case 5: options.guidance = 101.0f; break;
        case 6: options.prompt_text = "\xc3\x28"; break;
        case 7: options.prompt = "\xff\xfe"; break;
        case 8: options.clip_input = 3; break;
        case 9: options.color_fix = 3; break;
        case 10: options.tile_mode = 3; break;
        case 11: options.tile_size = 1; break;
        case 12: options.tile_overlap = -2; break;
        case 13: options.tile_size = 8; options.tile_overlap = 8; break;
        case 14: options.tile_batch = 65; break;
        case 15: options.context_margin = -5; break;
        case 16: options.size = 0; break;
        default: options.size += 8; break;
        }
        int before = failed;
        EXPECT(cases[i].status, dpir_get_requirements(oracle, 64, 48, &options, &needs, sizeof needs));
        if (failed != before) fprintf(stderr, "  (option case: %s)\n", cases[i].name);
    }

    /* Valid choices of every enum are accepted. */
    dpir_restore_options_init(&options, sizeof options);
    options.clip_input = DPIR_CLIP_INPUT_INITIAL_RESTORATION;
    options.color_fix = DPIR_COLOR_FIX_NONE;
    options.tile_mode = DPIR_TILE_MODE_JOINT;
    options.prompt = "zeros";
    options.guidance = 1.5f;
    options.seed = 7;
    options.steps = 3;
    EXPECT(DPIR_STATUS_OK, dpir_get_requirements(oracle, 64, 48, &options, &needs, sizeof needs));

    dpir_rect rect = {16, 8, 32, 24}, roi;
    EXPECT(DPIR_STATUS_OK, dpir_region_of_interest(oracle, 64, 48, &rect, NULL, &roi));
    CHECK(roi.x <= rect.x && roi.y <= rect.y && roi.x + roi.width >= rect.x + rect.width);
    CHECK(roi.x + roi.width <= 64 && roi.y + roi.height <= 48);
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_region_of_interest(NULL, 64, 48, &rect, NULL, &roi));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_region_of_interest(oracle, 64, 48, NULL, NULL, &roi));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_region_of_interest(oracle, 64, 48, &rect, NULL, NULL));
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_region_of_interest(oracle, 0, 48, &rect, NULL, &roi));
    rect.x = 60;
    EXPECT(DPIR_STATUS_INVALID_OPTIONS, dpir_region_of_interest(oracle, 64, 48, &rect, NULL, &roi));
    printf("info, requirements, options and regions of interest\n");
}

typedef struct {
    int reports, consistent, last_stage, samples, steps, cancel_at_sample;
    float fraction; /* the last report's: never decreasing, within [0, 1] */
} progress_log;

static int log_progress(const dpir_progress *progress, void *user_data) {
    progress_log *log = user_data;
    log->reports++;
    log->last_stage = (int)progress->stage;
    if (progress->size != sizeof *progress || progress->stage > DPIR_STAGE_DECODE) log->consistent = 0;
    if (progress->tile < 1 || progress->tile > progress->tiles || progress->step > progress->steps) log->consistent = 0;
    if (progress->fraction < log->fraction || progress->fraction > 1.0f) log->consistent = 0;
    log->fraction = progress->fraction;
    if (progress->stage == DPIR_STAGE_SAMPLE) {
        if ((int)progress->step != log->samples) log->consistent = 0; /* steps done so far: 0, 1, 2, ... */
        log->samples++;
        log->steps = (int)progress->steps;
        if (log->cancel_at_sample) return 1;
    }
    return 0;
}

static void test_restores(dpir_restorer *oracle, dpir_restorer *broken) {
    enum { W = 40, H = 28 };
    unsigned char *input = picture(W, H, 4, 2);
    unsigned char *output = malloc(W * H * 4 * 4);
    dpir_pixels source = describe(input, W, H, 4, DPIR_SAMPLE_TYPE_U8);
    dpir_pixels destination = describe(output, W, H, 4, DPIR_SAMPLE_TYPE_U8);
    dpir_restore_options options;
    dpir_restore_options_init(&options, sizeof options);
    options.steps = 2;

    /* The oracle returns its input: any layout mistake shows. */
    EXPECT(DPIR_STATUS_OK, dpir_restore(oracle, &source, &destination, &options));
    CHECK(max_difference(input, output, W * H * 4) <= 1);
    EXPECT(DPIR_STATUS_OK, dpir_restore(oracle, &source, &destination, NULL));
    CHECK(max_difference(input, output, W * H * 4) <= 1);

    /* Bottom-up source and destination with padded rows, into 16-bit, float, linear and premultiplied buffers. */
    unsigned char *flipped = calloc((W * 4 + 8) * H, 1);
    for (int y = 0; y < H; y++) memcpy(flipped + (size_t)(H - 1 - y) * (W * 4 + 8), input + (size_t)y * W * 4, W * 4);
    dpir_pixels bottom_up = source;
    bottom_up.stride = -(W * 4 + 8);
    bottom_up.data = flipped + (size_t)(H - 1) * (W * 4 + 8);
    memset(output, 0, W * H * 4);
    dpir_pixels flipped_destination = destination;
    flipped_destination.stride = -(W * 4);
    flipped_destination.data = output + (H - 1) * W * 4;
    EXPECT(DPIR_STATUS_OK, dpir_restore(oracle, &bottom_up, &flipped_destination, &options));
    int worst = 0;
    for (int y = 0; y < H; y++) {
        int d = max_difference(input + (size_t)y * W * 4, output + (size_t)(H - 1 - y) * W * 4, W * 4);
        if (d > worst) worst = d;
    }
    CHECK(worst <= 1);
    float *linear = malloc(sizeof(float) * W * H * 4);
    dpir_pixels premultiplied = describe(linear, W, H, 4, DPIR_SAMPLE_TYPE_F32);
    premultiplied.transfer = DPIR_TRANSFER_LINEAR;
    premultiplied.alpha = DPIR_ALPHA_PREMULTIPLIED;
    EXPECT(DPIR_STATUS_OK, dpir_restore(oracle, &source, &premultiplied, &options));
    EXPECT(DPIR_STATUS_OK, dpir_restore(oracle, &premultiplied, &destination, &options));
    CHECK(max_difference(input, output, W * H * 4) <= 1);
    uint16_t *gray = malloc(sizeof(uint16_t) * W * H);
    dpir_pixels gray16 = describe(gray, W, H, 1, DPIR_SAMPLE_TYPE_U16);
    EXPECT(DPIR_STATUS_OK, dpir_restore(oracle, &source, &gray16, &options));
    uint16_t *half = malloc(sizeof(uint16_t) * W * H * 3);
    dpir_pixels f16 = describe(half, W, H, 3, DPIR_SAMPLE_TYPE_F16);
    EXPECT(DPIR_STATUS_OK, dpir_restore(oracle, &gray16, &f16, &options));

    /* Scaling: the destination measures what dpir_requirements says, and nothing else is accepted. */
    dpir_requirements needs;
    options.scale = 2.0f;
    EXPECT(DPIR_STATUS_OK, dpir_get_requirements(oracle, W, H, &options, &needs, sizeof needs));
    dpir_pixels large = describe(output, needs.output_width, needs.output_height, 4, DPIR_SAMPLE_TYPE_U8);
    EXPECT(DPIR_STATUS_OK, dpir_restore(oracle, &source, &large, &options));
    memset(output, 0xCD, W * H * 4);
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_restore(oracle, &source, &destination, &options));
    CHECK(strstr(dpir_last_error_message(), "destination") != NULL);
    CHECK(all_bytes(output, W * H * 4, 0xCD));
    options.scale = 1.0f;

    /* Buffers that overlap are refused: Rust may not read and write one memory. */
    memcpy(output, input, W * H * 4);
    dpir_pixels same = describe(output, W, H, 4, DPIR_SAMPLE_TYPE_U8);
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_restore(oracle, &same, &destination, &options));
    dpir_pixels shifted = same;
    shifted.data = output + W * 4;
    shifted.height = H - 1;
    dpir_pixels top = same;
    top.height = H - 1;
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_restore(oracle, &top, &shifted, &options));
    CHECK(memcmp(output, input, W * H * 4) == 0);

    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore(NULL, &source, &destination, &options));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore(oracle, NULL, &destination, &options));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore(oracle, &source, NULL, &options));
    options.steps = 5000;
    EXPECT(DPIR_STATUS_INVALID_OPTIONS, dpir_restore(oracle, &source, &destination, &options));
    options.steps = 2;
    options.prompt = "no such prompt";
    EXPECT(DPIR_STATUS_INVALID_OPTIONS, dpir_restore(oracle, &source, &destination, &options));
    options.prompt = NULL;
    options.prompt_text = "a sharp photo"; /* the oracle has no text encoder */
    EXPECT(DPIR_STATUS_INVALID_OPTIONS, dpir_restore(oracle, &source, &destination, &options));
    options.prompt_text = NULL;
    CHECK(memcmp(output, input, W * H * 4) == 0);

    /* Progress: every step reported, in order; a nonzero return cancels and nothing is written. */
    progress_log log = {0, 1, 0, 0, 0, 0, 0.0f};
    options.progress = log_progress;
    options.progress_user_data = &log;
    options.steps = 3;
    EXPECT(DPIR_STATUS_OK, dpir_restore(oracle, &source, &destination, &options));
    CHECK(log.consistent && log.samples == 3 && log.steps == 3 && log.last_stage == DPIR_STAGE_DECODE);
    log.cancel_at_sample = 1;
    memset(output, 0xCD, W * H * 4);
    EXPECT(DPIR_STATUS_CANCELLED, dpir_restore(oracle, &source, &destination, &options));
    CHECK(all_bytes(output, W * H * 4, 0xCD));
    options.progress = NULL;

    /* A cancel handle triggered before the restore. */
    dpir_cancel *cancel = NULL;
    EXPECT(DPIR_STATUS_OK, dpir_cancel_new(&cancel));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_cancel_new(NULL));
    CHECK(dpir_cancel_is_requested(cancel) == 0);
    dpir_cancel_request(cancel);
    dpir_cancel_request(cancel);
    CHECK(dpir_cancel_is_requested(cancel) == 1);
    dpir_cancel_request(NULL);
    CHECK(dpir_cancel_is_requested(NULL) == 0);
    options.cancel = cancel;
    EXPECT(DPIR_STATUS_CANCELLED, dpir_restore(oracle, &source, &destination, &options));
    CHECK(all_bytes(output, W * H * 4, 0xCD));
    dpir_cancel_free(cancel);
    dpir_cancel_free(NULL);
    options.cancel = NULL;

    /* A model that produces NaN is an error, and nothing is written. */
    EXPECT(DPIR_STATUS_BAD_OUTPUT, dpir_restore(broken, &source, &destination, &options));
    CHECK(all_bytes(output, W * H * 4, 0xCD));

    free(input);
    free(output);
    free(flipped);
    free(linear);
    free(gray);
    free(half);
    printf("whole-image restores: layouts, scaling, overlap, progress, cancel, bad output\n");
}

static void test_regions(dpir_restorer *tiny) {
    enum { W = 96, H = 80 };
    unsigned char *input = picture(W, H, 3, 3);
    unsigned char *full = malloc(W * H * 3);
    dpir_pixels frame = describe(input, W, H, 3, DPIR_SAMPLE_TYPE_U8);
    dpir_restore_options options;
    dpir_restore_options_init(&options, sizeof options);
    options.steps = 2;
    options.tile_size = 6; /* latent samples: several tiles */
    options.tile_overlap = 2;
    dpir_requirements needs;
    EXPECT(DPIR_STATUS_OK, dpir_get_requirements(tiny, W, H, &options, &needs, sizeof needs));
    CHECK(needs.tiles > 1);
    dpir_pixels whole = describe(full, W, H, 3, DPIR_SAMPLE_TYPE_U8);
    dpir_restorer_info info;
    EXPECT(DPIR_STATUS_OK, dpir_restorer_get_info(tiny, &info, sizeof info));
    CHECK(info.has_text_encoder == 1);
    options.prompt_text = "a sharp photo of a landscape";
    EXPECT(DPIR_STATUS_OK, dpir_restore(tiny, &frame, &whole, &options));
    options.prompt_text = NULL;
    EXPECT(DPIR_STATUS_OK, dpir_restore(tiny, &frame, &whole, &options));

    /* A region from exactly the crop dpir asks for, with the whole frame as context, equals that part of the
     * whole-frame restore. */
    dpir_rect rect = {37, 21, 30, 25}, roi;
    EXPECT(DPIR_STATUS_OK, dpir_region_of_interest(tiny, W, H, &rect, &options, &roi));
    unsigned char *crop = malloc((size_t)roi.width * roi.height * 3);
    for (uint32_t y = 0; y < roi.height; y++)
        memcpy(crop + (size_t)y * roi.width * 3, input + ((size_t)(roi.y + y) * W + roi.x) * 3, roi.width * 3);
    unsigned char *part = malloc((size_t)rect.width * rect.height * 3);
    dpir_pixels crop_pixels = describe(crop, roi.width, roi.height, 3, DPIR_SAMPLE_TYPE_U8);
    dpir_pixels part_pixels = describe(part, rect.width, rect.height, 3, DPIR_SAMPLE_TYPE_U8);
    dpir_region region;
    EXPECT(DPIR_STATUS_OK, dpir_region_init(&region, sizeof region));
    region.source = &crop_pixels;
    region.context = &frame;
    region.origin_x = roi.x;
    region.origin_y = roi.y;
    region.frame_width = W;
    region.frame_height = H;
    region.rect = rect;
    EXPECT(DPIR_STATUS_OK, dpir_restore_region(tiny, &region, &part_pixels, &options));
    int same = 1;
    for (uint32_t y = 0; y < rect.height; y++)
        same &= memcmp(part + (size_t)y * rect.width * 3, full + ((size_t)(rect.y + y) * W + rect.x) * 3,
                       rect.width * 3) == 0;
    CHECK(same);

    /* Region errors leave the destination as it was. */
    memset(part, 0xCD, (size_t)rect.width * rect.height * 3);
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore_region(NULL, &region, &part_pixels, &options));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore_region(tiny, NULL, &part_pixels, &options));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore_region(tiny, &region, NULL, &options));
    dpir_region broken = region;
    broken.size = 1;
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore_region(tiny, &broken, &part_pixels, &options));
    broken = region;
    broken.source = NULL;
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_restore_region(tiny, &broken, &part_pixels, &options));
    broken = region;
    broken.origin_x = W - 1; /* the crop runs past the frame */
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_restore_region(tiny, &broken, &part_pixels, &options));
    broken = region;
    broken.rect.x = W; /* outside the output frame */
    EXPECT(DPIR_STATUS_INVALID_OPTIONS, dpir_restore_region(tiny, &broken, &part_pixels, &options));
    dpir_pixels wrong_size = part_pixels;
    wrong_size.width -= 1;
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_restore_region(tiny, &region, &wrong_size, &options));
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_restore_region(tiny, &region, &crop_pixels, &options)); /* overlaps */
    CHECK(all_bytes(part, (size_t)rect.width * rect.height * 3, 0xCD));

    /* A frame made once (global prompt from the whole frame) restores the same region, identically. */
    dpir_frame *made = (dpir_frame *)(uintptr_t)1;
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_frame_new(NULL, W, H, &frame, &options, &made));
    CHECK(made == NULL);
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_frame_new(tiny, 0, H, &frame, &options, &made));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_frame_new(tiny, W, H, NULL, &options, &made));
    EXPECT(DPIR_STATUS_OK, dpir_frame_new(tiny, W, H, &frame, &options, &made));
    dpir_rect frame_roi;
    EXPECT(DPIR_STATUS_OK, dpir_frame_region_of_interest(made, &rect, &frame_roi));
    CHECK(memcmp(&frame_roi, &roi, sizeof roi) == 0);
    dpir_region in_frame = region;
    in_frame.context = NULL;
    EXPECT(DPIR_STATUS_OK, dpir_frame_restore_region(made, &in_frame, &part_pixels, NULL, NULL, NULL));
    same = 1;
    for (uint32_t y = 0; y < rect.height; y++)
        same &= memcmp(part + (size_t)y * rect.width * 3, full + ((size_t)(rect.y + y) * W + rect.x) * 3,
                       rect.width * 3) == 0;
    CHECK(same);
    memset(part, 0xCD, (size_t)rect.width * rect.height * 3);
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_frame_restore_region(made, &region, &part_pixels, NULL, NULL, NULL));
    broken = in_frame;
    broken.frame_width = W + 1; /* not the frame's size */
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_frame_restore_region(made, &broken, &part_pixels, NULL, NULL, NULL));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_frame_restore_region(NULL, &in_frame, &part_pixels, NULL, NULL, NULL));
    dpir_cancel *cancel = NULL;
    EXPECT(DPIR_STATUS_OK, dpir_cancel_new(&cancel));
    dpir_cancel_request(cancel);
    EXPECT(DPIR_STATUS_CANCELLED, dpir_frame_restore_region(made, &in_frame, &part_pixels, NULL, NULL, cancel));
    dpir_cancel_free(cancel);
    CHECK(all_bytes(part, (size_t)rect.width * rect.height * 3, 0xCD));
    dpir_frame_free(made);
    dpir_frame_free(NULL);

    free(input);
    free(full);
    free(crop);
    free(part);
    printf("regions: a region equals that part of the whole-frame restore (%llu tiles), through a frame too\n",
           (unsigned long long)needs.tiles);
}

static void test_images(void) {
    dpir_image *image = (dpir_image *)(uintptr_t)1, *back = NULL;
    EXPECT(DPIR_STATUS_OK, dpir_image_create(5, 3, 4, DPIR_SAMPLE_TYPE_U16, &image));
    const dpir_pixels *pixels = dpir_image_pixels(image);
    CHECK(pixels && pixels->width == 5 && pixels->height == 3 && pixels->channels == 4 && pixels->stride == 40);
    CHECK(pixels->sample == DPIR_SAMPLE_TYPE_U16 && ((uintptr_t)pixels->data % 16) == 0);
    CHECK(all_bytes(pixels->data, 120, 0));
    for (int i = 0; i < 60; i++) ((uint16_t *)pixels->data)[i] = (uint16_t)(i * 1000);
    EXPECT(DPIR_STATUS_OK, dpir_image_write(pixels, join(scratch, "roundtrip.png")));
    EXPECT(DPIR_STATUS_OK, dpir_image_read(join(scratch, "roundtrip.png"), &back));
    const dpir_pixels *read = dpir_image_pixels(back);
    CHECK(read->width == 5 && read->height == 3 && read->channels == 4 && read->sample == DPIR_SAMPLE_TYPE_U16);
    CHECK(memcmp(read->data, pixels->data, 120) == 0);
    dpir_image_free(back);
    dpir_image_free(image);
    dpir_image_free(NULL);
    CHECK(dpir_image_pixels(NULL) == NULL);

    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_image_create(5, 3, 4, DPIR_SAMPLE_TYPE_U8, NULL));
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_image_create(5, 3, 2, DPIR_SAMPLE_TYPE_U8, &image));
    CHECK(image == NULL);
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_image_create(0, 3, 4, DPIR_SAMPLE_TYPE_U8, &image));
    EXPECT(DPIR_STATUS_INVALID_IMAGE, dpir_image_create(5, 3, 4, 9, &image));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_image_read(NULL, &image));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_image_read(join(scratch, "roundtrip.png"), NULL));
    EXPECT(DPIR_STATUS_IO, dpir_image_read(join(scratch, "missing.png"), &image));
    CHECK(image == NULL);
    FILE *garbage = open_file(join(scratch, "garbage.png"), "wb");
    if (garbage) {
        fputs("\x89PNG\r\n\x1a\n but not really", garbage);
        fclose(garbage);
    }
    EXPECT(DPIR_STATUS_IO, dpir_image_read(join(scratch, "garbage.png"), &image));
    unsigned char rgb[12] = {0};
    dpir_pixels small = describe(rgb, 2, 2, 3, DPIR_SAMPLE_TYPE_U8);
    EXPECT(DPIR_STATUS_IO, dpir_image_write(&small, join(scratch, "no/such/folder/out.png")));
    EXPECT(DPIR_STATUS_IO, dpir_image_write(&small, join(scratch, "out.unknown")));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_image_write(&small, NULL));
    EXPECT(DPIR_STATUS_INVALID_ARGUMENT, dpir_image_write(NULL, join(scratch, "out.png")));
    printf("image files and buffers\n");
}

/* Four threads restore at once with one restorer; each result must equal the same restore done alone. */
typedef struct {
    dpir_restorer *restorer;
    unsigned char *input, *output;
    uint64_t seed;
    dpir_status status;
} job;

enum { JOB_W = 48, JOB_H = 40, JOBS = 4 };

static void *run_job(void *argument) {
    job *j = argument;
    dpir_pixels source = describe(j->input, JOB_W, JOB_H, 3, DPIR_SAMPLE_TYPE_U8);
    dpir_pixels destination = describe(j->output, JOB_W, JOB_H, 3, DPIR_SAMPLE_TYPE_U8);
    dpir_restore_options options;
    dpir_restore_options_init(&options, sizeof options);
    options.steps = 3;
    options.seed = j->seed;
    j->status = dpir_restore(j->restorer, &source, &destination, &options);
    if (j->status != DPIR_STATUS_OK) fprintf(stderr, "thread job: %s\n", dpir_last_error_message());
    return NULL;
}

static void test_threads(dpir_restorer *tiny) {
    job jobs[JOBS];
    unsigned char *alone[JOBS];
    for (int i = 0; i < JOBS; i++) {
        jobs[i].restorer = tiny;
        jobs[i].input = picture(JOB_W, JOB_H, 3, 10 + i);
        jobs[i].output = malloc(JOB_W * JOB_H * 3);
        jobs[i].seed = 100 + (uint64_t)i;
        run_job(&jobs[i]);
        EXPECT(DPIR_STATUS_OK, jobs[i].status);
        alone[i] = jobs[i].output;
        jobs[i].output = malloc(JOB_W * JOB_H * 3);
    }
    CHECK(memcmp(alone[0], alone[1], JOB_W * JOB_H * 3) != 0); /* the jobs differ */
    pthread_t threads[JOBS];
    for (int i = 0; i < JOBS; i++) CHECK(pthread_create(&threads[i], NULL, run_job, &jobs[i]) == 0);
    for (int i = 0; i < JOBS; i++) {
        pthread_join(threads[i], NULL);
        EXPECT(DPIR_STATUS_OK, jobs[i].status);
        CHECK(memcmp(alone[i], jobs[i].output, JOB_W * JOB_H * 3) == 0);
        free(jobs[i].input);
        free(jobs[i].output);
        free(alone[i]);
    }
    printf("threads: %d concurrent restores with one restorer equal the sequential ones\n", JOBS);
}

/* A restore cancelled from another thread while it samples. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t sampling;
    int started;
} cancel_signal;

static int signal_sampling(const dpir_progress *progress, void *user_data) {
    cancel_signal *signal = user_data;
    if (progress->stage == DPIR_STAGE_SAMPLE) {
        pthread_mutex_lock(&signal->lock);
        signal->started++;
        pthread_cond_signal(&signal->sampling);
        pthread_mutex_unlock(&signal->lock);
    }
    return 0;
}

typedef struct {
    dpir_restorer *restorer;
    dpir_cancel *cancel;
    cancel_signal *signal;
    unsigned char *input, *output;
    dpir_status status;
    int steps_seen;
} cancel_job;

static void *run_cancelled(void *argument) {
    cancel_job *j = argument;
    dpir_pixels source = describe(j->input, JOB_W, JOB_H, 3, DPIR_SAMPLE_TYPE_U8);
    dpir_pixels destination = describe(j->output, JOB_W, JOB_H, 3, DPIR_SAMPLE_TYPE_U8);
    dpir_restore_options options;
    dpir_restore_options_init(&options, sizeof options);
    options.steps = 1000; /* far longer than the test waits */
    options.cancel = j->cancel;
    options.progress = signal_sampling;
    options.progress_user_data = j->signal;
    j->status = dpir_restore(j->restorer, &source, &destination, &options);
    return NULL;
}

static void test_cancel_from_another_thread(dpir_restorer *tiny) {
    cancel_signal signal = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    cancel_job j = {tiny, NULL, &signal, picture(JOB_W, JOB_H, 3, 5), malloc(JOB_W * JOB_H * 3), DPIR_STATUS_OK, 0};
    memset(j.output, 0xCD, JOB_W * JOB_H * 3);
    EXPECT(DPIR_STATUS_OK, dpir_cancel_new(&j.cancel));
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, run_cancelled, &j) == 0);
    pthread_mutex_lock(&signal.lock);
    while (signal.started < 2) pthread_cond_wait(&signal.sampling, &signal.lock);
    pthread_mutex_unlock(&signal.lock);
    dpir_cancel_request(j.cancel);
    dpir_cancel_free(j.cancel); /* the restore holds its own reference */
    pthread_join(thread, NULL);
    CHECK(j.status == DPIR_STATUS_CANCELLED);
    if (j.status >= 0 && j.status <= DPIR_STATUS_OUT_OF_MEMORY) seen[j.status]++;
    CHECK(signal.started < 1000);
    CHECK(all_bytes(j.output, JOB_W * JOB_H * 3, 0xCD));
    printf("cancel from another thread after %d sampling steps: cancelled, destination untouched\n",
           signal.started);
    free(j.input);
    free(j.output);
}

int main(int argc, char **argv) {
    argv = utf8_args(&argc, argv);
    if (argc != 3) {
        fprintf(stderr, "usage: %s BUNDLES_DIR SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    bundles = argv[1];
    scratch = argv[2];
    test_versions_and_statuses();
    test_default_model_dir();
    test_bundles();
    test_init_functions();
    test_loading();
    dpir_restorer *oracle = load("oracle", 1);
    dpir_restorer *tiny = load("tiny", 1);
    dpir_restorer *broken = load("broken_nan", 1);
    if (oracle && tiny && broken) {
        test_descriptors(oracle);
        test_info_and_requirements(oracle);
        test_restores(oracle, broken);
        test_regions(tiny);
        test_threads(tiny);
        test_cancel_from_another_thread(tiny);
    }
    test_images();
    dpir_restorer_free(broken);
    dpir_restorer_free(tiny);
    dpir_restorer_free(oracle);

    /* Every status is reachable from C, except INTERNAL (a caught Rust panic: a bug, tested in Rust). */
    for (int status = DPIR_STATUS_OK; status <= DPIR_STATUS_OUT_OF_MEMORY; status++) {
        if (status != DPIR_STATUS_INTERNAL && !seen[status]) {
            failed++;
            fprintf(stderr, "FAILED: status %d (%s) was never returned\n", status, dpir_status_string(status));
        }
    }
    printf("statuses returned: every one but DPIR_STATUS_INTERNAL\n");
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
