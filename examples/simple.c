/* simple.c: load a model, tokenize a prompt, generate 32 tokens greedily,
 * print them, free everything. Build against the shared library:
 *
 *   cc -O2 -Iinclude examples/simple.c -Ltarget/release -lrocmforge -o simple
 *   LD_LIBRARY_PATH=target/release ./simple models/SmolLM2-135M-Instruct.Q4_1.gguf "The capital of France is"
 *
 * Prints the generated text, then a line "ids: ..." with the token ids.
 * An optional third argument repeats the whole load/generate/free cycle
 * (used under valgrind to show nothing leaks across cycles).
 * Exit status 0 on success, 1 with forge_last_error() on stderr otherwise.
 */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "rocmforge.h"

#define CHECK(call)                                                            \
    do {                                                                       \
        enum forge_status st_ = (call);                                        \
        if (st_ != FORGE_OK) {                                                 \
            fprintf(stderr, "%s failed (status %d): %s\n", #call, (int)st_,    \
                    forge_last_error());                                       \
            goto fail;                                                         \
        }                                                                      \
    } while (0)

static bool print_piece(int32_t token, const char *piece, size_t len, void *user) {
    (void)token;
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return true; /* keep going */
}

static int run(const char *path, const char *prompt) {
    forge_ctx *ctx = NULL;
    forge_sampler *smp = NULL;
    int rc = 1;

    struct forge_load_params lp = forge_load_default_params();
    lp.n_ctx = 512;
    CHECK(forge_load(path, &lp, &ctx));

    int32_t prompt_ids[256];
    size_t n_prompt = 0;
    CHECK(forge_tokenize(ctx, prompt, strlen(prompt), true, false, prompt_ids, 256, &n_prompt));

    struct forge_sampler_params sp = forge_sampler_default_params();
    sp.temperature = 0.0f; /* greedy */
    CHECK(forge_sampler_new(&sp, &smp));

    struct forge_generate_params gp = forge_generate_default_params();
    gp.max_tokens = 32;
    gp.on_token = print_piece;
    int32_t out[32];
    size_t n_out = 0;
    enum forge_stop_reason why;
    printf("%s", prompt);
    CHECK(forge_generate(ctx, smp, prompt_ids, n_prompt, &gp, out, 32, &n_out, &why));
    printf("\nids:");
    for (size_t i = 0; i < n_out; i++) printf(" %d", out[i]);
    printf("\n");
    rc = 0;
fail:
    forge_sampler_free(smp);
    forge_free(ctx);
    return rc;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    const char *prompt = argc > 2 ? argv[2] : "The capital of France is";
    int cycles = argc > 3 ? atoi(argv[3]) : 1;
    for (int i = 0; i < cycles; i++)
        if (run(path, prompt) != 0) return 1;
    return 0;
}
