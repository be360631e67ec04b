/* libFuzzer target over the file readers a caller's data reaches: the image decoders (PNG, JPEG, TIFF), the .npy
 * reader (through dpir_image_read) and the bundle manifest (through dpir_restorer_load).
 *
 * The first byte of an input chooses what the rest is written as: an image file of some extension, or the
 * dpir.json of a bundle whose graphs are the oracle's. Whatever the bytes, the call must return a status other
 * than DPIR_STATUS_INTERNAL (a caught panic), with a message on failure, and must not crash, leak or allocate
 * beyond the fuzzer's memory limit: the harness sets DPIR_IMAGE_LIMIT to 256 MiB, so an image header may claim
 * any size but the decoder may not take more.
 *
 *   bash fuzz/run.sh files 20    (builds an instrumented libdpir.a, runs on fuzz/corpus/files)
 */
#define _XOPEN_SOURCE 700 /* mkdtemp, realpath, symlink, setenv */
#include <dpir.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char scratch[256];  /* a private folder: the files, and bundle/ */
static char bundle[300];   /* scratch/bundle: dpir.json written per input, graphs linked to the oracle's */

static const char *const EXTENSIONS[] = {"png", "jpg", "tif", "npy"};

static void link_graph(const char *oracle, const char *name) {
    char from[4096], to[4096];
    snprintf(from, sizeof from, "%s/%s", oracle, name);
    snprintf(to, sizeof to, "%s/%s", bundle, name);
    if (symlink(from, to) != 0) {
        perror(to);
        abort();
    }
}

static const char *const GRAPHS[] = {"vae_encoder.onnx", "vae_decoder.onnx",  "clip_local.onnx",
                                     "clip_global.onnx", "transformer.onnx", "prompts/quality.npy"};

/* Removes the scratch folder when the fuzzer exits. */
static void clean_up(void) {
    char path[4096];
    for (size_t i = 0; i < sizeof EXTENSIONS / sizeof EXTENSIONS[0]; i++) {
        snprintf(path, sizeof path, "%s/input.%s", scratch, EXTENSIONS[i]);
        unlink(path);
    }
    for (size_t i = 0; i < sizeof GRAPHS / sizeof GRAPHS[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", bundle, GRAPHS[i]);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/dpir.json", bundle);
    unlink(path);
    snprintf(path, sizeof path, "%s/prompts", bundle);
    rmdir(path);
    rmdir(bundle);
    rmdir(scratch);
}

int LLVMFuzzerInitialize(int *argc, char **argv[]) {
    (void)argc;
    (void)argv;
    const char *oracle = getenv("DPIR_FUZZ_BUNDLE");
    char *real = oracle ? realpath(oracle, NULL) : NULL;
    snprintf(scratch, sizeof scratch, "/tmp/dpir-fuzz-files.XXXXXX");
    if (!real || !mkdtemp(scratch)) {
        fprintf(stderr, "set DPIR_FUZZ_BUNDLE to the oracle bundle\n");
        abort();
    }
    snprintf(bundle, sizeof bundle, "%s/bundle", scratch);
    char prompts[320];
    snprintf(prompts, sizeof prompts, "%s/prompts", bundle);
    if (mkdir(bundle, 0700) != 0 || mkdir(prompts, 0700) != 0) abort();
    for (size_t i = 0; i < sizeof GRAPHS / sizeof GRAPHS[0]; i++) link_graph(real, GRAPHS[i]);
    free(real);
    atexit(clean_up);
    setenv("DPIR_IMAGE_LIMIT", "256", 1);
    return 0;
}

static void write_file(const char *path, const uint8_t *data, size_t size) {
    FILE *file = fopen(path, "wb");
    if (!file || (size && fwrite(data, 1, size, file) != size) || fclose(file) != 0) abort();
}

/* A failed call leaves a message; no call may end in a caught panic. */
static void check(dpir_status status) {
    if (status == DPIR_STATUS_INTERNAL) {
        fprintf(stderr, "DPIR_STATUS_INTERNAL: %s\n", dpir_last_error_message());
        abort();
    }
    if (status != DPIR_STATUS_OK && dpir_last_error_message()[0] == '\0') abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    unsigned choice = data[0] % 5;
    data++, size--;
    char path[512];
    if (choice < 4) {
        snprintf(path, sizeof path, "%s/input.%s", scratch, EXTENSIONS[choice]);
        write_file(path, data, size);
        dpir_image *image = NULL;
        dpir_status status = dpir_image_read(path, &image);
        check(status);
        if (status == DPIR_STATUS_OK) {
            size_t span = 0;
            if (dpir_pixels_validate(dpir_image_pixels(image), &span) != DPIR_STATUS_OK || span == 0) abort();
        } else if (image != NULL) {
            abort(); /* a failed read hands out nothing */
        }
        dpir_image_free(image);
    } else {
        snprintf(path, sizeof path, "%s/dpir.json", bundle);
        write_file(path, data, size);
        dpir_load_options options;
        dpir_load_options_init(&options, sizeof options);
        options.threads = 1;
        dpir_restorer *restorer = NULL;
        check(dpir_restorer_load(bundle, &options, &restorer));
        dpir_restorer_free(restorer);
    }
    return 0;
}
