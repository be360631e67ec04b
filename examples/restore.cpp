// Restores an image file with a model bundle through dpir's C++ wrapper (bindings/cpp/dpir.hpp).
//
//   restore_cpp BUNDLE IN OUT [SCALE]
//
// Build against an installed dpir (tools/install.sh): c++ -std=c++17 restore.cpp $(pkg-config --cflags --libs dpir)
#include <dpir.hpp>

#include <cstdio>
#include <iostream>
#include <string>

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        std::cerr << "usage: " << argv[0] << " BUNDLE IN OUT [SCALE]\n";
        return 2;
    }
    try {
        dpir::Restorer restorer(argv[1]);
        dpir::Image input = dpir::Image::read(argv[2]);
        const dpir_pixels &source = input.pixels();

        dpir::RestoreOptions options;
        options.scale = argc == 5 ? std::stof(argv[4]) : 1.0f;
        options.on_progress = [](const dpir_progress &progress) {
            std::fprintf(stderr, "\rtile %u/%u step %u/%u ", progress.tile, progress.tiles, progress.step,
                         progress.steps);
            return true;  // false would cancel
        };
        dpir::Requirements needs = restorer.requirements(source.width, source.height, options);
        dpir::Image output(needs.output_width, needs.output_height, source.channels,
                           static_cast<dpir_sample_type>(source.sample));
        restorer.restore(source, output.pixels(), options);
        output.write(argv[3]);
        std::cerr << "\n";
        std::cout << "restored " << source.width << "x" << source.height << " into " << argv[3] << " ("
                  << needs.output_width << "x" << needs.output_height << ") on "
                  << restorer.info().execution_provider_name << "\n";
    } catch (const dpir::Error &error) {
        std::cerr << "\nerror: " << dpir_status_string(error.status()) << ": " << error.what() << "\n";
        return 1;
    } catch (const std::exception &error) {
        std::cerr << "\nerror: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
