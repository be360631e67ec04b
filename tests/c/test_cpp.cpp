// The C++ wrapper test: errors become dpir::Error with the status and message, a progress callable can cancel
// or throw (its exception comes out of the restore), handles are freed by RAII, moved handles stay valid.
//
//   test_cpp BUNDLES_DIR SCRATCH_DIR
#include <dpir.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

static int passed, failed;

static void check(bool ok, const char *what, int line) {
    if (ok) {
        passed++;
    } else {
        failed++;
        std::fprintf(stderr, "FAILED line %d: %s\n", line, what);
    }
}
#define CHECK(cond) check((cond), #cond, __LINE__)

// Runs `body`, expecting a dpir::Error with `status` and a message.
template <typename Body>
static void expect_error(dpir_status status, Body body, int line) {
    try {
        body();
        check(false, "no exception", line);
    } catch (const dpir::Error &error) {
        check(error.status() == status && std::string(error.what()).size() > 0, error.what(), line);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s BUNDLES_DIR SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    const std::string bundles = argv[1], scratch = argv[2];
    CHECK(dpir::version() == dpir_version());
    setenv("DPIR_MODEL", "/some/model", 1);
    CHECK(dpir::default_model_dir() == "/some/model");
    unsetenv("DPIR_MODEL");
    expect_error(DPIR_STATUS_BUNDLE, [&] { dpir::Restorer missing(scratch + "/no such bundle"); }, __LINE__);
    expect_error(DPIR_STATUS_BUNDLE, [&] { dpir::Bundle missing(scratch + "/no such bundle"); }, __LINE__);
    const dpir::Bundle tiny(bundles + "/tiny/dpir.json");
    CHECK(std::string(tiny.info().path) == bundles + "/tiny" && tiny.info().default_tile_pixels == 1024);
    expect_error(DPIR_STATUS_IO, [&] { dpir::Image::read(scratch + "/missing.png"); }, __LINE__);
    expect_error(DPIR_STATUS_INVALID_IMAGE, [] { dpir::Image blank(4, 4, 2, DPIR_SAMPLE_TYPE_U8); }, __LINE__);
    // Absurd sizes are refused before any arithmetic on them (UBSan watches this test for overflow).
    unsigned char byte = 0;
    expect_error(DPIR_STATUS_INVALID_IMAGE,
                 [&] { dpir::pixels(&byte, 0xFFFFFFFFu, 1, 0xFFFFFFFFu, DPIR_SAMPLE_TYPE_F32); }, __LINE__);
    expect_error(DPIR_STATUS_INVALID_IMAGE, [&] { dpir::pixels(&byte, 70000, 70000, 4, DPIR_SAMPLE_TYPE_F32); },
                 __LINE__);
    expect_error(DPIR_STATUS_INVALID_IMAGE, [&] { dpir::pixels(&byte, 8, 8, 3, dpir_sample_type(7)); }, __LINE__);
    expect_error(DPIR_STATUS_INVALID_IMAGE, [&] { dpir::pixels(&byte, 8, 8, 3, DPIR_SAMPLE_TYPE_U8, 5); }, __LINE__);

    dpir::LoadOptions load;
    load.threads = 1;
    dpir::Restorer loaded(bundles + "/oracle", load);
    dpir::Restorer restorer = std::move(loaded);  // a moved handle keeps working
    CHECK(std::string(restorer.info().execution_provider_name) == "cpu");

    const uint32_t width = 24, height = 20;
    std::vector<unsigned char> input(width * height * 3), output(width * height * 3, 0xCD);
    for (size_t i = 0; i < input.size(); i++) input[i] = static_cast<unsigned char>(40 + i * 7 % 150);
    dpir_pixels source = dpir::pixels(input.data(), width, height, 3, DPIR_SAMPLE_TYPE_U8);
    dpir_pixels destination = dpir::pixels(output.data(), width, height, 3, DPIR_SAMPLE_TYPE_U8);
    auto untouched = [&] {
        return std::all_of(output.begin(), output.end(), [](unsigned char v) { return v == 0xCD; });
    };

    // A callable that says stop cancels; one that throws cancels and its exception comes out; nothing is written.
    dpir::RestoreOptions options;
    options.steps = 2;
    options.on_progress = [](const dpir_progress &progress) { return progress.stage != DPIR_STAGE_SAMPLE; };
    expect_error(DPIR_STATUS_CANCELLED, [&] { restorer.restore(source, destination, options); }, __LINE__);
    options.on_progress = [](const dpir_progress &) -> bool { throw std::runtime_error("host says stop"); };
    try {
        restorer.restore(source, destination, options);
        CHECK(false);
    } catch (const std::runtime_error &error) {
        CHECK(std::string(error.what()) == "host says stop");
    }
    CHECK(untouched());
    dpir::Cancel cancel;
    cancel.request();
    CHECK(cancel.requested());
    options.on_progress = nullptr;
    options.cancel = cancel.get();
    expect_error(DPIR_STATUS_CANCELLED, [&] { restorer.restore(source, destination, options); }, __LINE__);
    CHECK(untouched());
    options.cancel = nullptr;

    // A restore that works: the oracle returns its input.
    int reports = 0;
    options.on_progress = [&](const dpir_progress &) { return ++reports > 0; };
    restorer.restore(source, destination, options);
    CHECK(reports > 0);
    int worst = 0;
    for (size_t i = 0; i < input.size(); i++) worst = std::max(worst, std::abs(int(input[i]) - int(output[i])));
    CHECK(worst <= 1);
    dpir::Requirements needs = restorer.requirements(width, height, options);
    CHECK(needs.output_width == width && needs.output_height == height);
    dpir_rect rect{4, 4, 8, 8};
    dpir_rect roi = restorer.region_of_interest(width, height, rect, options);
    CHECK(roi.width >= rect.width && roi.height >= rect.height);
    dpir::Region region;
    region.source = &source;
    region.frame_width = width;
    region.frame_height = height;
    region.rect = rect;
    std::vector<unsigned char> part(8 * 8 * 3);
    dpir_pixels part_pixels = dpir::pixels(part.data(), 8, 8, 3, DPIR_SAMPLE_TYPE_U8);
    restorer.restore_region(region, part_pixels, options);
    expect_error(DPIR_STATUS_INVALID_IMAGE, [&] { restorer.restore_region(region, destination, options); }, __LINE__);

    // A frame restores the same region identically; a progress callable that throws cancels, and rethrows.
    dpir::Frame frame(restorer, width, height, source, options);
    CHECK(frame.region_of_interest(rect).width == roi.width);
    std::vector<unsigned char> framed(part.size(), 0xCD);
    dpir_pixels framed_pixels = dpir::pixels(framed.data(), 8, 8, 3, DPIR_SAMPLE_TYPE_U8);
    frame.restore_region(region, framed_pixels);
    CHECK(framed == part);
    try {
        frame.restore_region(region, framed_pixels, [](const dpir_progress &) -> bool { throw std::runtime_error("no"); });
        CHECK(false);
    } catch (const std::runtime_error &error) {
        CHECK(std::string(error.what()) == "no");
    }
    CHECK(framed == part);

    // Image files through the wrapper.
    dpir::write_image(destination, scratch + "/cpp.png");
    dpir::Image back = dpir::Image::read(scratch + "/cpp.png");
    CHECK(back.pixels().width == width && back.pixels().channels == 3);
    dpir::Image blank(3, 2, 4, DPIR_SAMPLE_TYPE_F32);
    CHECK(blank.pixels().stride == 3 * 4 * 4);
    blank.write(scratch + "/blank.tif");
    expect_error(DPIR_STATUS_IO, [&] { blank.write(scratch + "/blank.unknown"); }, __LINE__);

    std::printf("C++ wrapper: errors, progress, cancel, RAII, frames\n%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
