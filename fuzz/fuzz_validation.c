/* libFuzzer target over the C API's validation of pixel descriptors, options and regions.
 *
 * Each input is read as a pixel descriptor (every field, including the size field and where `data` points), a
 * destination, restore options and a region. The harness decides independently whether the descriptor is valid
 * (its own arithmetic, written from the header's rules) and aborts when dpir_pixels_validate() disagrees, or
 * reports another span. Then it runs dpir_get_requirements(), dpir_region_of_interest(), dpir_restore() and
 * dpir_restore_region() with the oracle bundle: buffers are allocated to exactly the span a valid descriptor
 * claims, so AddressSanitizer catches any read or write outside it; invalid descriptors point at a tiny buffer or
 * at addresses that must never be touched. A progress callback cancels every restore at its first denoising step
 * (and at once for anything but small images), so the model runs little.
 *
 *   bash fuzz/run.sh validation 30    (builds an instrumented libdpir.a, runs on fuzz/corpus/validation)
 */
#include <dpir.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dpir_restorer *restorer;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *bundle = getenv("DPIR_FUZZ_BUNDLE");
    dpir_load_options options;
    dpir_load_options_init(&options, sizeof options);
    options.threads = 1;
    if (bundle == NULL || dpir_restorer_load(bundle, &options, &restorer) != DPIR_STATUS_OK) {
        fprintf(stderr, "set DPIR_FUZZ_BUNDLE to the oracle bundle: %s\n", dpir_last_error_message());
        abort();
    }
    return 0;
}

/* Reads the input front to back; zeros once it runs out. */
typedef struct {
    const uint8_t *data;
    size_t left;
} reader;

static uint64_t take(reader *r, int bytes) {
    uint64_t value = 0;
    for (int i = 0; i < bytes; i++) {
        uint8_t byte = 0;
        if (r->left > 0) {
            byte = *r->data++;
            r->left--;
        }
        value |= (uint64_t)byte << (8 * i);
    }
    return value;
}

/* A descriptor with its memory, and the harness's own verdict on it. */
typedef struct {
    dpir_pixels pixels;
    unsigned char *buffer; /* malloc'd: exactly `span` bytes, or a tiny decoy */
    int valid, owned, touchable;
    size_t span;
} described;

static const size_t sample_bytes[] = {1, 2, 2, 4};
enum { MAX_BUFFER = 1 << 20 };

/* The header's rules, computed independently of the library. */
static int judge(const dpir_pixels *p, size_t *span) {
    if (p->size != sizeof *p || p->data == NULL) return 0;
    if (p->width < 1 || p->width > 65536 || p->height < 1 || p->height > 65536) return 0;
    if (!(p->channels == 1 || p->channels == 3 || p->channels == 4)) return 0;
    if (p->sample > 3 || p->alpha > 1 || p->transfer > 1) return 0;
    if (p->alpha == DPIR_ALPHA_PREMULTIPLIED && p->channels != 4) return 0;
    uint64_t row = (uint64_t)p->width * p->channels * sample_bytes[p->sample];
    uint64_t stride = p->stride < 0 ? (uint64_t)0 - (uint64_t)p->stride : (uint64_t)p->stride;
    if (stride < row) return 0;
    unsigned __int128 total = (unsigned __int128)stride * (p->height - 1) + row;
    if (total > (unsigned __int128)PTRDIFF_MAX) return 0;
    uint64_t below = p->stride < 0 ? stride * (p->height - 1) : 0;
    uintptr_t address = (uintptr_t)p->data;
    if (address < below) return 0;
    if ((unsigned __int128)(address - below) + total > (unsigned __int128)UINTPTR_MAX) return 0;
    *span = (size_t)total;
    return 1;
}

static void describe(reader *r, described *d) {
    memset(d, 0, sizeof *d);
    dpir_pixels *p = &d->pixels;
    dpir_pixels_init(p, sizeof *p);
    uint8_t shape = (uint8_t)take(r, 1);
    p->width = shape & 0x80 ? (uint32_t)take(r, 4) : (uint32_t)take(r, 1);
    p->height = shape & 0x40 ? (uint32_t)take(r, 4) : (uint32_t)take(r, 1);
    p->channels = (uint32_t)take(r, 1) % 6;
    p->sample = shape & 0x20 ? (uint32_t)take(r, 4) : (uint32_t)take(r, 1) % 5;
    p->alpha = (uint32_t)take(r, 1) % 3;
    p->transfer = (uint32_t)take(r, 1) % 3;
    if (shape & 0x10) p->size = (size_t)take(r, 1);
    uint64_t row = (uint64_t)p->width * (p->channels ? p->channels : 1) * sample_bytes[p->sample < 4 ? p->sample : 0];
    switch (shape & 0x3) {
    case 0: p->stride = (ptrdiff_t)row; break;
    case 1: p->stride = (ptrdiff_t)(row + take(r, 1)); break;
    case 2: p->stride = -(ptrdiff_t)(row + take(r, 1) % 4); break;
    default: p->stride = (ptrdiff_t)take(r, 8); break;
    }
    uint8_t where = (uint8_t)take(r, 1) % 8;
    static unsigned char decoy[16];
    if (where == 1) p->data = NULL;
    else if (where == 2) p->data = (void *)(uintptr_t)64;
    else if (where == 3) p->data = (void *)(UINTPTR_MAX - 64);
    else p->data = decoy; /* replaced by an exact buffer below when the descriptor is valid and small */
    d->valid = judge(p, &d->span);
    if (d->valid && p->data == decoy) {
        if (d->span > MAX_BUFFER) return; /* valid but too large to allocate here: validate only */
        d->buffer = malloc(d->span);
        for (size_t i = 0; i < d->span; i++) d->buffer[i] = (unsigned char)(i * 31 + 7);
        size_t below = p->stride < 0 ? (size_t)(-p->stride) * (p->height - 1) : 0;
        p->data = d->buffer + below;
        d->owned = d->touchable = 1;
    } else if (!d->valid) {
        d->touchable = 1; /* dpir must refuse it without touching anything */
    }
}

static void release(described *d) {
    if (d->owned) free(d->buffer);
}

/* How far a restore may run: small one-step restores finish (so results are written back), others stop. */
typedef struct {
    size_t pixels;
    uint32_t steps;
} budget;

static int stop_early(const dpir_progress *progress, void *user_data) {
    const budget *allowed = user_data;
    if (allowed->pixels > 4096) return 1;
    return progress->stage == DPIR_STAGE_SAMPLE && allowed->steps != 1;
}

static void options_from(reader *r, dpir_restore_options *o) {
    static const char *const prompts[] = {NULL, "zeros", "quality", "missing", "\xc3\x28"};
    dpir_restore_options_init(o, sizeof *o);
    uint8_t which = (uint8_t)take(r, 1);
    if (which & 0x01) o->size = (size_t)take(r, 1);
    if (which & 0x02) {
        uint32_t bits = (uint32_t)take(r, 4);
        memcpy(&o->scale, &bits, sizeof bits);
    } else {
        o->scale = 0.25f * (float)(take(r, 1) % 12);
    }
    o->steps = which & 0x04 ? (uint32_t)take(r, 4) : (uint32_t)take(r, 1) % 4;
    if (which & 0x08) o->seed = take(r, 8);
    if (which & 0x10) {
        uint32_t bits = (uint32_t)take(r, 4);
        memcpy(&o->guidance, &bits, sizeof bits);
    }
    o->clip_input = (uint32_t)take(r, 1) % 4;
    o->color_fix = (uint32_t)take(r, 1) % 4;
    o->sample_posterior = (uint32_t)take(r, 1) & 1;
    o->prompt = prompts[take(r, 1) % 5];
    if (which & 0x40) o->prompt_text = prompts[take(r, 1) % 5];
    if (which & 0x20) {
        o->tile_mode = (uint32_t)take(r, 1) % 4;
        o->tile_size = (uint32_t)take(r, 2);
        o->tile_overlap = (int32_t)(int8_t)take(r, 1);
        o->tile_batch = (uint32_t)take(r, 1);
        o->context_margin = (int32_t)(int16_t)take(r, 2);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size};
    described source, destination, context;
    describe(&r, &source);

    /* The library's verdict on a descriptor equals the harness's, and so does the span. */
    size_t span = 0;
    dpir_status status = dpir_pixels_validate(&source.pixels, &span);
    if ((status == DPIR_STATUS_OK) != source.valid || (source.valid && span != source.span)) {
        fprintf(stderr, "validate disagrees: status %d (%s), harness %d, span %zu vs %zu\n", (int)status,
                dpir_last_error_message(), source.valid, span, source.span);
        abort();
    }
    if (source.valid && dpir_last_error_message()[0] != '\0') abort();
    if (!source.valid && dpir_last_error_message()[0] == '\0') abort();

    dpir_restore_options options;
    options_from(&r, &options);
    budget allowed = {(size_t)source.pixels.width * source.pixels.height, options.steps};
    options.progress = stop_early;
    options.progress_user_data = &allowed;
    dpir_requirements needs;
    status = dpir_get_requirements(restorer, source.pixels.width, source.pixels.height, &options, &needs, sizeof needs);
    if (status > DPIR_STATUS_OUT_OF_MEMORY || status < 0 || status == DPIR_STATUS_INTERNAL) abort();

    describe(&r, &destination);
    if (take(&r, 1) & 1 && status == DPIR_STATUS_OK && destination.pixels.data != NULL) {
        destination.pixels.width = needs.output_width; /* aim for a destination of the right size */
        destination.pixels.height = needs.output_height;
        release(&destination);
        destination.owned = 0;
        destination.valid = judge(&destination.pixels, &destination.span);
        destination.touchable = 0;
        if (destination.valid && destination.span <= MAX_BUFFER) {
            size_t below = destination.pixels.stride < 0
                               ? (size_t)(-destination.pixels.stride) * (destination.pixels.height - 1)
                               : 0;
            destination.buffer = malloc(destination.span);
            destination.pixels.data = destination.buffer + below;
            destination.owned = destination.touchable = 1;
        } else if (!destination.valid) {
            destination.touchable = 1;
        }
    }
    if (source.touchable && destination.touchable) {
        status = dpir_restore(restorer, &source.pixels, &destination.pixels, &options);
        if (status == DPIR_STATUS_INTERNAL) abort();
        if ((!source.valid || !destination.valid) && status == DPIR_STATUS_OK) abort();
    }

    dpir_rect rect = {(uint32_t)take(&r, 1), (uint32_t)take(&r, 1), (uint32_t)take(&r, 1), (uint32_t)take(&r, 1)};
    uint32_t frame_width = (uint32_t)take(&r, 1) + source.pixels.width % 256;
    uint32_t frame_height = (uint32_t)take(&r, 1) + source.pixels.height % 256;
    dpir_rect roi;
    status = dpir_region_of_interest(restorer, frame_width, frame_height, &rect, &options, &roi);
    if (status == DPIR_STATUS_INTERNAL) abort();
    int outside = roi.x + (uint64_t)roi.width > frame_width || roi.y + (uint64_t)roi.height > frame_height;
    if (status == DPIR_STATUS_OK && outside) abort();

    describe(&r, &context);
    dpir_region region;
    dpir_region_init(&region, sizeof region);
    region.source = &source.pixels;
    region.context = take(&r, 1) & 1 ? &context.pixels : NULL;
    region.origin_x = (uint32_t)take(&r, 1);
    region.origin_y = (uint32_t)take(&r, 1);
    region.frame_width = frame_width;
    region.frame_height = frame_height;
    region.rect = rect;
    if (take(&r, 1) & 1) region.size = (size_t)take(&r, 1);
    /* Into an exact buffer of the rectangle's size when asked, else into the destination above. */
    described part = destination;
    part.owned = 0;
    if (take(&r, 1) & 1 && rect.width > 0 && rect.height > 0 && rect.width * rect.height <= 4096) {
        dpir_pixels_init(&part.pixels, sizeof part.pixels);
        part.pixels.width = rect.width;
        part.pixels.height = rect.height;
        part.pixels.channels = 4;
        part.pixels.sample = DPIR_SAMPLE_TYPE_F16;
        part.pixels.alpha = DPIR_ALPHA_PREMULTIPLIED;
        part.pixels.stride = -(ptrdiff_t)(rect.width * 8);
        part.span = (size_t)rect.width * rect.height * 8;
        part.buffer = malloc(part.span);
        part.pixels.data = part.buffer + part.span - rect.width * 8;
        part.owned = part.touchable = part.valid = 1;
    }
    if (source.touchable && part.touchable && (region.context == NULL || context.touchable)) {
        status = dpir_restore_region(restorer, &region, &part.pixels, &options);
        if (status == DPIR_STATUS_INTERNAL) abort();
    }
    release(&part);
    release(&source);
    release(&destination);
    release(&context);
    return 0;
}
