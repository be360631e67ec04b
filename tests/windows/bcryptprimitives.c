/* bcryptprimitives.c: ProcessPrng for Wine 8, which lacks the bcryptprimitives.dll of Windows 10 and 11.
 *
 * Rust's standard library draws its random numbers (hash seeds) from ProcessPrng, so every Rust program built
 * for Windows imports it; real Windows has had it since Windows 10. tests/windows/test_windows.sh builds this
 * stand-in and puts it in the test's Wine prefix only, only when that Wine has none of its own. It is never
 * shipped. It answers from RtlGenRandom (advapi32's SystemFunction036), Windows' older generator.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
