/* ABI misuse, from C: every export called with NULL pointers, too-small
 * buffers, out-of-vocab token ids, or a context past n_ctx must return an
 * error status and leave a message in forge_last_error(). Run by `make test`
 * (target test-c) against the shared library.
 *
 * usage: abi_misuse MODEL.gguf      exit 0 = all checks passed
 */
#include <stdio.h>
#include <string.h>

#include "rocmforge.h"

static int failures = 0, checks = 0;

#define EXPECT_STATUS(call, want)                                                          \
    do {                                                                                   \
        enum forge_status got_ = (call);                                                   \
        checks++;                                                                          \
        if (got_ != (want)) {                                                              \
            fprintf(stderr, "FAIL %s:%d: %s returned %d, expected %d (%s)\n", __FILE__,     \
                    __LINE__, #call, (int)got_, (int)(want), forge_last_error());          \
            failures++;                                                                    \
        } else if ((want) != FORGE_OK && strlen(forge_last_error()) == 0) {                \
            fprintf(stderr, "FAIL %s:%d: %s set no error message\n", __FILE__, __LINE__,    \
                    #call);                                                                \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

#define EXPECT(cond)                                                                       \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    forge_ctx *ctx = NULL, *bad = (forge_ctx *)0x1; /* never dereferenced below */
    (void)bad;
    int32_t toks[64];
    size_t n = 0;
    float small[4];

    EXPECT(forge_abi_version() == FORGE_ABI_VERSION);
    EXPECT(strlen(forge_version()) > 0);
    EXPECT(forge_backend_compiled(FORGE_BACKEND_CPU));

    /* loading */
    EXPECT_STATUS(forge_load(NULL, NULL, &ctx), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_load(argv[1], NULL, NULL), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_load("/nonexistent/model.gguf", NULL, &ctx), FORGE_ERR_IO);
    EXPECT(ctx == NULL); /* outputs are written only on success */
    EXPECT(strstr(forge_last_error(), "/nonexistent/model.gguf") != NULL);
    EXPECT_STATUS(forge_load("/etc/hostname", NULL, &ctx), FORGE_ERR_INVALID_MODEL);
    EXPECT(strstr(forge_last_error(), "magic") != NULL);
    EXPECT(ctx == NULL);
    struct forge_load_params lp = forge_load_default_params();
    if (!forge_backend_compiled(FORGE_BACKEND_HIP)) {
        lp.backend = FORGE_BACKEND_HIP;
        EXPECT_STATUS(forge_load(argv[1], &lp, &ctx), FORGE_ERR_BACKEND_UNAVAILABLE);
        lp.backend = FORGE_BACKEND_AUTO;
    }
    /* values outside their ranges: a status, never a crash or a hang */
    lp.backend = 42; /* not a forge_backend: the field is an int32_t */
    EXPECT_STATUS(forge_load(argv[1], &lp, &ctx), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT(ctx == NULL && strstr(forge_last_error(), "not a forge_backend") != NULL);
    lp.backend = FORGE_BACKEND_AUTO;
    int32_t ndev = -7;
    EXPECT_STATUS(forge_device_count(-1, &ndev), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT(ndev == -7);
    EXPECT(!forge_backend_compiled(42));
    lp.n_threads = 100000;
    EXPECT_STATUS(forge_load(argv[1], &lp, &ctx), FORGE_ERR_INVALID_ARGUMENT);
    lp.n_threads = 0;
    lp.n_ctx = FORGE_MAX_CTX + 1u;
    EXPECT_STATUS(forge_load(argv[1], &lp, &ctx), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(forge_load("/tmp", NULL, &ctx), FORGE_ERR_IO);
    EXPECT(ctx == NULL && strstr(forge_last_error(), "directory") != NULL);
    lp.n_ctx = 16;
    EXPECT_STATUS(forge_load(argv[1], &lp, &ctx), FORGE_OK);
    if (!ctx) return 1;

    /* NULL handles */
    EXPECT(forge_n_vocab(NULL) == -1);
    EXPECT(forge_n_past(NULL) == 0);
    EXPECT_STATUS(forge_eval(NULL, toks, 1, NULL, 0), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_kv_reset(NULL, 0), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_tokenize(NULL, "hi", 2, false, false, toks, 64, &n), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_ctx_clone_session(NULL, &ctx), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_get_model_info(NULL, NULL), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_sampler_sample(NULL, small, 4, toks), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_generate(ctx, NULL, toks, 1, NULL, NULL, 0, NULL, NULL), FORGE_ERR_NULL_POINTER);
    forge_free(NULL);         /* no-op */
    forge_sampler_free(NULL); /* no-op */

    /* NULL buffers */
    EXPECT_STATUS(forge_tokenize(ctx, NULL, 5, false, false, toks, 64, &n), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_tokenize(ctx, "hi", 2, false, false, toks, 64, NULL), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_eval(ctx, NULL, 3, NULL, 0), FORGE_ERR_NULL_POINTER);

    /* too-small buffers: distinct status, size needed reported */
    const char *text = "The quick brown fox jumps over the lazy dog.";
    n = 0;
    EXPECT_STATUS(forge_tokenize(ctx, text, strlen(text), false, false, toks, 2, &n), FORGE_ERR_BUFFER_TOO_SMALL);
    EXPECT(n > 2);
    size_t need = n;
    EXPECT_STATUS(forge_tokenize(ctx, text, strlen(text), false, false, toks, need, &n), FORGE_OK);
    EXPECT(n == need);
    EXPECT_STATUS(forge_eval(ctx, toks, 1, small, 4), FORGE_ERR_BUFFER_TOO_SMALL);
    EXPECT(forge_n_past(ctx) == 0); /* nothing appended on error */
    char piece[2];
    size_t plen = 0;
    EXPECT_STATUS(forge_detokenize(ctx, toks, need, false, piece, 2, &plen), FORGE_ERR_BUFFER_TOO_SMALL);
    EXPECT(plen == strlen(text));

    /* a failure writes no out-parameter, not even the size */
    n = 12345;
    EXPECT_STATUS(forge_tokenize(ctx, text, strlen(text), false, false, NULL, 4, &n), FORGE_ERR_NULL_POINTER);
    EXPECT(n == 12345);
    plen = 12345;
    EXPECT_STATUS(forge_token_to_piece(ctx, toks[0], false, NULL, 1, &plen), FORGE_ERR_NULL_POINTER);
    EXPECT(plen == 12345);
    /* (NULL, 0) is an empty input */
    EXPECT_STATUS(forge_tokenize(ctx, NULL, 0, false, false, NULL, 0, &n), FORGE_OK);
    EXPECT(n == 0);

    /* invalid UTF-8 */
    EXPECT_STATUS(forge_tokenize(ctx, "\xff\xfe", 2, false, false, toks, 64, &n), FORGE_ERR_INVALID_UTF8);

    /* out-of-vocab token ids */
    int32_t oov[2] = {0, forge_n_vocab(ctx)};
    EXPECT_STATUS(forge_eval(ctx, oov, 2, NULL, 0), FORGE_ERR_INVALID_ARGUMENT);
    int32_t neg = -5;
    EXPECT_STATUS(forge_eval(ctx, &neg, 1, NULL, 0), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(forge_token_to_piece(ctx, neg, false, piece, 2, &plen), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(forge_detokenize(ctx, oov, 2, false, piece, 2, &plen), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(forge_eval(ctx, toks, 0, NULL, 0), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT(forge_n_past(ctx) == 0);

    /* a context past n_ctx (16) */
    int32_t many[17];
    for (int i = 0; i < 17; i++) many[i] = toks[i % need];
    EXPECT_STATUS(forge_eval(ctx, many, 17, NULL, 0), FORGE_ERR_CONTEXT_FULL);
    EXPECT(strstr(forge_last_error(), "context") != NULL);
    EXPECT_STATUS(forge_eval(ctx, many, 10, NULL, 0), FORGE_OK);
    EXPECT_STATUS(forge_eval(ctx, many, 7, NULL, 0), FORGE_ERR_CONTEXT_FULL);
    EXPECT(forge_n_past(ctx) == 10);
    EXPECT_STATUS(forge_kv_reset(ctx, 11), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(forge_kv_reset(ctx, 4), FORGE_OK);
    EXPECT(forge_n_past(ctx) == 4);

    /* sampler misuse */
    struct forge_sampler_params sp = forge_sampler_default_params();
    forge_sampler *smp = NULL;
    sp.top_p = 2.0f;
    EXPECT_STATUS(forge_sampler_new(&sp, &smp), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT(smp == NULL);
    EXPECT_STATUS(forge_sampler_new(NULL, NULL), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_sampler_new(NULL, &smp), FORGE_OK);
    EXPECT_STATUS(forge_sampler_sample(smp, NULL, 4, toks), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_sampler_sample(smp, small, 0, toks), FORGE_ERR_INVALID_ARGUMENT);
    float nan_logits[3] = {0.0f, 0.0f / 0.0f, 1.0f};
    int32_t picked = -7;
    EXPECT_STATUS(forge_sampler_sample(smp, nan_logits, 3, &picked), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT(picked == -7);

    /* generate: bad prompt, NULL stop string, prompt past n_ctx */
    struct forge_generate_params gp = forge_generate_default_params();
    EXPECT_STATUS(forge_generate(ctx, smp, oov, 2, &gp, NULL, 0, NULL, NULL), FORGE_ERR_INVALID_ARGUMENT);
    const char *stops[1] = {NULL};
    gp.stop = stops;
    gp.n_stop = 1;
    EXPECT_STATUS(forge_generate(ctx, smp, toks, 1, &gp, NULL, 0, NULL, NULL), FORGE_ERR_NULL_POINTER);
    gp = forge_generate_default_params();
    EXPECT_STATUS(forge_generate(ctx, smp, many, 17, &gp, NULL, 0, NULL, NULL), FORGE_ERR_CONTEXT_FULL);
    /* generation that runs into n_ctx stops cleanly with a reason */
    enum forge_stop_reason why = FORGE_STOP_EOG;
    size_t got = 0;
    gp.max_tokens = 100;
    EXPECT_STATUS(forge_generate(ctx, smp, toks, 2, &gp, NULL, 0, &got, &why), FORGE_OK);
    EXPECT(why == FORGE_STOP_CONTEXT_FULL || why == FORGE_STOP_EOG);
    EXPECT(forge_n_past(ctx) <= 16);

    /* model info */
    struct forge_model_info info;
    EXPECT_STATUS(forge_get_model_info(ctx, NULL), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_get_model_info(ctx, &info), FORGE_OK);

    /* embeddings: misuse is an error status, never a crash */
    float emb[4096];
    size_t ne = 12345;
    EXPECT(info.n_embd <= 4096);
    EXPECT(!forge_is_encoder(ctx) && !forge_is_encoder(NULL));
    EXPECT(forge_pooling_type(NULL) == -1 && forge_pooling_type(ctx) == FORGE_POOLING_MEAN);
    EXPECT_STATUS(forge_embed(NULL, toks, 2, FORGE_POOLING_MEAN, true, emb, 4096, &ne), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_embed(ctx, toks, 2, FORGE_POOLING_MEAN, true, emb, 4096, NULL), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_embed(ctx, NULL, 2, FORGE_POOLING_MEAN, true, emb, 4096, &ne), FORGE_ERR_NULL_POINTER);
    EXPECT_STATUS(forge_embed(ctx, toks, 0, FORGE_POOLING_MEAN, true, emb, 4096, &ne), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(forge_embed(ctx, oov, 2, FORGE_POOLING_MEAN, true, emb, 4096, &ne), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(forge_embed(ctx, toks, 2, 99, true, emb, 4096, &ne), FORGE_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(forge_embed(ctx, toks, 2, FORGE_POOLING_MEAN, true, NULL, 4096, &ne), FORGE_ERR_NULL_POINTER);
    EXPECT(ne == 12345);
    EXPECT_STATUS(forge_embed(ctx, toks, 2, FORGE_POOLING_MEAN, true, emb, 3, &ne), FORGE_ERR_BUFFER_TOO_SMALL);
    EXPECT(ne == (size_t)info.n_embd);
    EXPECT_STATUS(forge_embed(ctx, toks, 2, FORGE_POOLING_DEFAULT, true, emb, 4096, &ne), FORGE_OK);
    EXPECT(ne == (size_t)info.n_embd);
    EXPECT(info.n_vocab == forge_n_vocab(ctx) && info.n_ctx == 16 && info.n_layer > 0 && info.arch && strlen(info.arch) > 0);

    forge_sampler_free(smp);
    forge_free(ctx);
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
