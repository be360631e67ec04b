/* Restores an image file with a model bundle through dpir's C API.
 *
 *   restore BUNDLE IN OUT [SCALE]        e.g. restore tests/fixtures/bundles/oracle in.png out.png 2
 *
 * Build against an installed dpir (tools/install.sh): cc restore.c $(pkg-config --cflags --libs dpir)
 */
#include <dpir.h>

#include <stdio.h>
#include <stdlib.h>

/* Prints the stage and step; returning 0 lets the restore go on. */
static int show_progress(const dpir_progress *progress, void *user_data) {
    static const char *const stages[] = {"encode", "prompt", "sample", "decode"};
    (void)user_data;
    fprintf(stderr, "\r%-6s tile %u/%u step %u/%u ", progress->stage < 4 ? stages[progress->stage] : "?",
            progress->tile, progress->tiles, progress->step, progress->steps);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s BUNDLE IN OUT [SCALE]\n", argv[0]);
        return 2;
    }
    if (dpir_abi_version() != DPIR_ABI_VERSION) {
        fprintf(stderr, "libdpir %s does not match this program's dpir.h\n", dpir_version());
        return 1;
    }
    dpir_restorer *restorer = NULL;
    dpir_image *input = NULL, *output = NULL;
    dpir_restore_options options;
    dpir_requirements needs;
    dpir_restore_options_init(&options, sizeof options);
    options.scale = argc == 5 ? strtof(argv[4], NULL) : 1.0f;
    options.progress = show_progress;

    dpir_status status = dpir_restorer_load(argv[1], NULL, &restorer);
    if (status == DPIR_STATUS_OK) status = dpir_image_read(argv[2], &input);
    const dpir_pixels *source = dpir_image_pixels(input);
    if (status == DPIR_STATUS_OK)
        status = dpir_get_requirements(restorer, source->width, source->height, &options, &needs, sizeof needs);
    if (status == DPIR_STATUS_OK)
        status = dpir_image_create(needs.output_width, needs.output_height, source->channels, source->sample, &output);
    if (status == DPIR_STATUS_OK) status = dpir_restore(restorer, source, dpir_image_pixels(output), &options);
    if (status == DPIR_STATUS_OK) status = dpir_image_write(dpir_image_pixels(output), argv[3]);
    fprintf(stderr, "\n");

    if (status == DPIR_STATUS_OK)
        printf("restored %ux%u into %s (%ux%u)\n", source->width, source->height, argv[3], needs.output_width,
               needs.output_height);
    else
        fprintf(stderr, "error: %s: %s\n", dpir_status_string(status), dpir_last_error_message());
    dpir_image_free(output);
    dpir_image_free(input);
    dpir_restorer_free(restorer);
    return status == DPIR_STATUS_OK ? 0 : 1;
}
