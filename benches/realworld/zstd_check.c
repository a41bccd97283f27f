/* Links against the benchmark's libzstd.so and round-trips data through it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define ZSTD_STATIC_LINKING_ONLY
#include "zstd.h"

int main(void) {
    const size_t n = 1 << 20;
    const char *words = "ltocache distributed thinlto backend cache ";
    size_t wl = strlen(words);
    char *src = malloc(n), *back = malloc(n);
    for (size_t i = 0; i < n; i++) src[i] = (char)(words[i % wl] ^ ((i / 4096) & 7));
    size_t cap = ZSTD_compressBound(n);
    char *dst = malloc(cap);
    const int levels[] = {1, 3, 9, -5};
    for (size_t l = 0; l < sizeof levels / sizeof levels[0]; l++) {
        size_t c = ZSTD_compress(dst, cap, src, n, levels[l]);
        if (ZSTD_isError(c)) { fprintf(stderr, "compress: %s\n", ZSTD_getErrorName(c)); return 1; }
        size_t d = ZSTD_decompress(back, n, dst, c);
        if (ZSTD_isError(d) || d != n || memcmp(src, back, n) != 0) { fprintf(stderr, "round trip failed at level %d\n", levels[l]); return 1; }
    }
    /* Multithreaded streaming compression through the advanced API. */
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 5);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, 2);
    size_t c = ZSTD_compress2(cctx, dst, cap, src, n);
    if (ZSTD_isError(c)) { fprintf(stderr, "compress2: %s\n", ZSTD_getErrorName(c)); return 1; }
    size_t d = ZSTD_decompress(back, n, dst, c);
    if (ZSTD_isError(d) || d != n || memcmp(src, back, n) != 0) { fprintf(stderr, "mt round trip failed\n"); return 1; }
    ZSTD_freeCCtx(cctx);
    printf("zstd %s ok\n", ZSTD_versionString());
    free(src); free(back); free(dst);
    return 0;
}
