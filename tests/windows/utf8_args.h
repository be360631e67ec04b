/* utf8_args.h: a test program's arguments as UTF-8 on Windows, as they already are on Linux.
 *
 * A Windows C program's argv is in the ANSI code page, which cannot spell most names (a folder called 写真 on an
 * English system arrives as "??"). The C ABI takes UTF-8, so the test programs read the wide command line and
 * convert it. Elsewhere, utf8_args() leaves argv as it is.
 */
#ifndef DPIR_TESTS_UTF8_ARGS_H
#define DPIR_TESTS_UTF8_ARGS_H

#ifdef _WIN32
#define WIN32_LEAN_AND_MEAN
#define NOUSER /* nothing of the window manager: its names (PT_POINTER, ...) clash with the tests' own */
#include <windows.h>
#include <shellapi.h>
#include <stdio.h>
#include <stdlib.h>

static char **utf8_args(int *argc, char **argv) {
    int count = 0;
    wchar_t **wide = CommandLineToArgvW(GetCommandLineW(), &count);
    if (!wide) return argv;
    char **args = calloc((size_t)count + 1, sizeof *args);
    for (int i = 0; args && i < count; i++) {
        int size = WideCharToMultiByte(CP_UTF8, 0, wide[i], -1, NULL, 0, NULL, NULL);
        args[i] = malloc((size_t)size);
        if (!args[i] || !WideCharToMultiByte(CP_UTF8, 0, wide[i], -1, args[i], size, NULL, NULL)) {
            fprintf(stderr, "cannot convert argument %d to UTF-8\n", i);
            exit(2);
        }
    }
    LocalFree(wide);
    if (!args) return argv;
    *argc = count;
    return args; /* kept for the life of the program */
}
#else
static char **utf8_args(int *argc, char **argv) {
    (void)argc;
    return argv;
}
#endif

#endif
