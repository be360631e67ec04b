/**
 * @file dpir.hpp
 * @brief Header-only C++17 wrapper over dpir.h: RAII handles, errors as exceptions carrying the status and the
 * library's message, progress as any callable.
 *
 * @code
 * #include <dpir.hpp>
 *
 * dpir::Restorer restorer("path/to/bundle");               // throws dpir::Error
 * dpir::Image input = dpir::Image::read("in.png");
 * dpir::RestoreOptions options;
 * options.scale = 2.0f;
 * options.on_progress = [](const dpir_progress &p) { return p.step < 1000; };  // false cancels
 * dpir::Requirements needs = restorer.requirements(input.pixels().width, input.pixels().height, options);
 * dpir::Image output(needs.output_width, needs.output_height, input.pixels().channels, DPIR_SAMPLE_TYPE_U8);
 * restorer.restore(input.pixels(), output.pixels(), options);
 * output.write("out.png");
 * @endcode
 *
 * Every object owns its C handle and frees it exactly once, also when an exception unwinds. A Restorer may be
 * used by several threads at once; the other classes belong to one thread at a time.
 */
#ifndef DPIR_HPP
#define DPIR_HPP

#include <dpir.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

static_assert(DPIR_ABI_VERSION == 0, "dpir.hpp is written for ABI version 0 of dpir.h");

namespace dpir {

/** A failed dpir call: its status and the library's detailed message (what()). */
class Error : public std::runtime_error {
public:
    Error(dpir_status status, const std::string &message) : std::runtime_error(message), status_(status) {}

    /** The status the C call returned. */
    dpir_status status() const noexcept { return status_; }

private:
    dpir_status status_;
};

/** Throws dpir::Error with the calling thread's message unless `status` is DPIR_STATUS_OK. */
inline void check(dpir_status status) {
    if (status == DPIR_STATUS_OK) return;
    const char *detail = dpir_last_error_message();
    throw Error(status, detail != nullptr && detail[0] != '\0' ? detail : dpir_status_string(status));
}

/** The library's version, "MAJOR.MINOR.PATCH". */
inline std::string version() { return dpir_version(); }

/** The bundle folder to use when none is named ($DPIR_MODEL, else ~/.local/share/dpir/model when it exists); empty
 *  when there is none. */
inline std::string default_model_dir() {
    std::string path;
    for (size_t length = dpir_default_model_dir(nullptr, 0); length > 0;) {
        path.assign(length, '\0');
        size_t now = dpir_default_model_dir(path.data(), length + 1);  // writes the NUL at path[length]
        if (now == length) return path;
        length = now;  // the environment changed in between
    }
    return {};
}

namespace detail {
struct Free {
    void operator()(dpir_restorer *p) const noexcept { dpir_restorer_free(p); }
    void operator()(dpir_image *p) const noexcept { dpir_image_free(p); }
    void operator()(dpir_cancel *p) const noexcept { dpir_cancel_free(p); }
    void operator()(dpir_frame *p) const noexcept { dpir_frame_free(p); }
    void operator()(dpir_bundle *p) const noexcept { dpir_bundle_free(p); }
};
}  // namespace detail

/**
 * A descriptor of a caller-owned interleaved buffer; `stride` 0 means tightly packed rows. Checked as a restore
 * would check it (dpir::Error with DPIR_STATUS_INVALID_IMAGE otherwise), so an absurd size never reaches
 * arithmetic that could overflow.
 */
inline dpir_pixels pixels(void *data, uint32_t width, uint32_t height, uint32_t channels, dpir_sample_type sample,
                          std::ptrdiff_t stride = 0) {
    dpir_pixels p;
    check(dpir_pixels_init(&p, sizeof p));
    p.width = width;
    p.height = height;
    p.channels = channels;
    p.sample = sample;
    p.data = data;
    // A tight row, for the library to check first: widths and channels beyond its bounds are refused there, and
    // within them a row is at most 65536 * 4 * 4 bytes.
    const bool known = sample <= DPIR_SAMPLE_TYPE_F32 && channels <= 4 && width <= 65536;
    static const std::ptrdiff_t sample_bytes[] = {1, 2, 2, 4};
    p.stride = known ? static_cast<std::ptrdiff_t>(width) * channels * sample_bytes[sample] : 1;
    check(dpir_pixels_validate(&p, nullptr));
    if (stride != 0) {
        p.stride = stride;
        check(dpir_pixels_validate(&p, nullptr));
    }
    return p;
}

/** How a bundle is loaded: dpir_load_options with its defaults. */
struct LoadOptions : dpir_load_options {
    LoadOptions() { check(dpir_load_options_init(this, sizeof(dpir_load_options))); }
};

/** A region to restore: dpir_region with its defaults. */
struct Region : dpir_region {
    Region() { check(dpir_region_init(this, sizeof(dpir_region))); }
};

/** What a restore needs: dpir_requirements. */
using Requirements = dpir_requirements;

/** A cancel handle: request() from any thread stops the restores given it. */
class Cancel {
public:
    Cancel() {
        dpir_cancel *handle = nullptr;
        check(dpir_cancel_new(&handle));
        handle_.reset(handle);
    }
    /** Requests cancellation; safe from any thread. */
    void request() const noexcept { dpir_cancel_request(handle_.get()); }
    /** Whether request() was called. */
    bool requested() const noexcept { return dpir_cancel_is_requested(handle_.get()) != 0; }
    /** The C handle, for dpir_restore_options::cancel. */
    const dpir_cancel *get() const noexcept { return handle_.get(); }

private:
    std::unique_ptr<dpir_cancel, detail::Free> handle_;
};

/**
 * How a restore runs: dpir_restore_options with its defaults, plus `on_progress`, any callable that returns
 * false to cancel. An exception thrown by `on_progress` cancels the restore and is rethrown by the restore call.
 * When `on_progress` is set it replaces the C `progress` field.
 */
struct RestoreOptions : dpir_restore_options {
    RestoreOptions() { check(dpir_restore_options_init(this, sizeof(dpir_restore_options))); }

    /** Called with each progress report; return false to cancel. */
    std::function<bool(const dpir_progress &)> on_progress;
};

namespace detail {
/** One call's progress bridge: the callable, and an exception it threw. */
struct Progress {
    const std::function<bool(const dpir_progress &)> *function;
    std::exception_ptr error;

    static int report(const dpir_progress *progress, void *user_data) noexcept {
        Progress *self = static_cast<Progress *>(user_data);
        try {
            return (*self->function)(*progress) ? 0 : 1;
        } catch (...) {
            self->error = std::current_exception();
            return 1;
        }
    }
};

/** Runs a C call with `options`, bridging `on_progress`; rethrows its exception, else checks the status. */
template <typename Call>
void with_options(const RestoreOptions &options, Call call) {
    dpir_restore_options raw = options;
    Progress progress{&options.on_progress, nullptr};
    if (options.on_progress) {
        raw.progress = &Progress::report;
        raw.progress_user_data = &progress;
    }
    dpir_status status = call(&raw);
    if (progress.error) std::rethrow_exception(progress.error);
    check(status);
}
}  // namespace detail

/** An image buffer owned by dpir: read from a file, or blank. */
class Image {
public:
    /** A blank (zero) packed image. */
    Image(uint32_t width, uint32_t height, uint32_t channels, dpir_sample_type sample) {
        dpir_image *handle = nullptr;
        check(dpir_image_create(width, height, channels, sample, &handle));
        handle_.reset(handle);
    }
    /** Reads a PNG, JPEG, TIFF or .npy file. */
    static Image read(const std::string &path) {
        dpir_image *handle = nullptr;
        check(dpir_image_read(path.c_str(), &handle));
        return Image(handle);
    }
    /** The image's pixels (readable and writable through data). */
    const dpir_pixels &pixels() const noexcept { return *dpir_image_pixels(handle_.get()); }
    /** Writes the image to a file in the format of the extension. */
    void write(const std::string &path) const { check(dpir_image_write(&pixels(), path.c_str())); }

private:
    explicit Image(dpir_image *handle) : handle_(handle) {}
    std::unique_ptr<dpir_image, detail::Free> handle_;
};

/** Writes any pixels to a file in the format of the extension. */
inline void write_image(const dpir_pixels &pixels, const std::string &path) {
    check(dpir_image_write(&pixels, path.c_str()));
}

/** A loaded model bundle. Thread-safe: several threads may restore with one Restorer at once. */
/** A model bundle's manifest, read without loading it: which model a path (or, when empty, dpir's default) names,
 *  and the values it restores with, tile sizes in pixels. Cheap: for dialogs and parameter pages. */
class Bundle {
public:
    explicit Bundle(const std::string &path = std::string()) {
        dpir_bundle *handle = nullptr;
        check(dpir_bundle_open(path.empty() ? nullptr : path.c_str(), &handle));
        handle_.reset(handle);
    }

    /** What the bundle is (strings live as long as the Bundle). */
    dpir_bundle_info info() const {
        dpir_bundle_info info;
        check(dpir_bundle_get_info(handle_.get(), &info, sizeof info));
        return info;
    }

private:
    std::unique_ptr<dpir_bundle, detail::Free> handle_;
};

class Restorer {
public:
    explicit Restorer(const std::string &bundle, const LoadOptions &options = LoadOptions()) {
        dpir_restorer *handle = nullptr;
        check(dpir_restorer_load(bundle.c_str(), &options, &handle));
        handle_.reset(handle);
    }

    /** What the restorer is (strings live as long as the Restorer). */
    dpir_restorer_info info() const {
        dpir_restorer_info info;
        check(dpir_restorer_get_info(handle_.get(), &info, sizeof info));
        return info;
    }

    /** What restoring a width x height image with `options` needs (output size, tiles, memory). */
    Requirements requirements(uint32_t width, uint32_t height, const RestoreOptions &options = RestoreOptions()) const {
        Requirements needs;
        check(dpir_get_requirements(handle_.get(), width, height, &options, &needs, sizeof needs));
        return needs;
    }

    /** The input pixels a region restore of `rect` reads. */
    dpir_rect region_of_interest(uint32_t frame_width, uint32_t frame_height, const dpir_rect &rect,
                                 const RestoreOptions &options = RestoreOptions()) const {
        dpir_rect roi;
        check(dpir_region_of_interest(handle_.get(), frame_width, frame_height, &rect, &options, &roi));
        return roi;
    }

    /** Restores a whole image into `destination` (sized as requirements() says). */
    void restore(const dpir_pixels &source, const dpir_pixels &destination,
                 const RestoreOptions &options = RestoreOptions()) const {
        detail::with_options(options, [&](const dpir_restore_options *raw) {
            return dpir_restore(handle_.get(), &source, &destination, raw);
        });
    }

    /** Restores a region of a frame into `destination` (rect-sized). */
    void restore_region(const dpir_region &region, const dpir_pixels &destination,
                        const RestoreOptions &options = RestoreOptions()) const {
        detail::with_options(options, [&](const dpir_restore_options *raw) {
            return dpir_restore_region(handle_.get(), &region, &destination, raw);
        });
    }

    /** The C handle. */
    const dpir_restorer *get() const noexcept { return handle_.get(); }

private:
    std::unique_ptr<dpir_restorer, detail::Free> handle_;
};

/**
 * One frame being restored region by region (a host rendering tiles): its global prompt is computed once, from
 * `context` (the whole frame at any resolution), when the Frame is made. Thread-safe. Keeps the model loaded.
 */
class Frame {
public:
    Frame(const Restorer &restorer, uint32_t frame_width, uint32_t frame_height, const dpir_pixels &context,
          const RestoreOptions &options = RestoreOptions()) {
        dpir_frame *handle = nullptr;
        detail::with_options(options, [&](const dpir_restore_options *raw) {
            return dpir_frame_new(restorer.get(), frame_width, frame_height, &context, raw, &handle);
        });
        handle_.reset(handle);
    }

    /** The input pixels a restore of `rect` reads. */
    dpir_rect region_of_interest(const dpir_rect &rect) const {
        dpir_rect roi;
        check(dpir_frame_region_of_interest(handle_.get(), &rect, &roi));
        return roi;
    }

    /**
     * Restores `region.rect` (frame size 0 or the frame's, no context) into `destination` (rect-sized);
     * `on_progress` returns false to cancel, and an exception it throws is rethrown here.
     */
    void restore_region(const dpir_region &region, const dpir_pixels &destination,
                        const std::function<bool(const dpir_progress &)> &on_progress = nullptr,
                        const Cancel *cancel = nullptr) const {
        detail::Progress progress{&on_progress, nullptr};
        dpir_status status =
            dpir_frame_restore_region(handle_.get(), &region, &destination, on_progress ? &detail::Progress::report : nullptr,
                                      &progress, cancel ? cancel->get() : nullptr);
        if (progress.error) std::rethrow_exception(progress.error);
        check(status);
    }

    /** The C handle. */
    const dpir_frame *get() const noexcept { return handle_.get(); }

private:
    std::unique_ptr<dpir_frame, detail::Free> handle_;
};

}  // namespace dpir

#endif  // DPIR_HPP
