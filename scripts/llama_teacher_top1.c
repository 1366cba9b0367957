/* llama.cpp's teacher-forced top-1 on a token list, for comparing accuracy
 * with this project's engine on the same fixture (scripts/teacher_top1.py).
 * Reads token ids (whitespace separated) on stdin, evaluates them in one
 * batch with logits for every position, prints one argmax per line.
 * Build: see scripts/teacher_top1.py (links vendor/llama.cpp/build-cpu). */
#include <stdio.h>
#include <stdlib.h>
#include "llama.h"

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s MODEL.gguf [threads] < ids\n", argv[0]); return 2; }
    int ids[8192], n = 0;
    while (n < 8192 && scanf("%d", &ids[n]) == 1) n++;
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *m = llama_model_load_from_file(argv[1], mp);
    if (!m) { fprintf(stderr, "load failed\n"); return 1; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n + 16; cp.n_batch = n; cp.n_ubatch = n;
    cp.n_threads = cp.n_threads_batch = argc > 2 ? atoi(argv[2]) : 2;
    struct llama_context *c = llama_init_from_model(m, cp);
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(c, b)) { fprintf(stderr, "decode failed\n"); return 1; }
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(m));
    for (int i = 0; i < n; i++) {
        const float *l = llama_get_logits_ith(c, i);
        int best = 0;
        for (int v = 1; v < nv; v++) if (l[v] > l[best]) best = v;
        printf("%d\n", best);
    }
    llama_batch_free(b); llama_free(c); llama_model_free(m); llama_backend_free();
    return 0;
}
