/* msvc_link.c: linked by lld-link, the MSVC linker's command line, against lib/dpir.lib alone. It proves the
 * import library is one Visual Studio's linker takes and that the program it makes finds and calls dpir.dll.
 * No C runtime is linked (none of Microsoft's is here), so the verdict is the entry point's return value: 0 when
 * the DLL reports the ABI and version of this header. */
#include <dpir.h>

int entry(void) {
    const char *version = dpir_version();
    return dpir_abi_version() == DPIR_ABI_VERSION && version[0] == '0' + DPIR_VERSION_MAJOR && version[1] == '.' &&
                   version[2] == '0' + DPIR_VERSION_MINOR
               ? 0
               : 1;
}
