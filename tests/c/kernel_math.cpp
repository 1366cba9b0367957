// The GPU kernels' arithmetic, compiled as host C++ (FORGE_HOST_TEST) and
// checked against the CPU dequantizer (bit-exact with gguf-py) on any
// machine. Driven by tests/kernel_math.rs, which writes the cases and reads
// one line per case:
//   <type id> deq <max |deq - ref| / max |ref|> dot <rel L2 of the rows' dot products, or -1>
// deq: quant.h's T::deq, the 32-value groups every GPU product starts from;
// dot: iquant.h's IP<T> parts against activations prepared as quant_act
// prepares them (act_q / act_planes), summed as mmvq sums them.
//
// Case file (little-endian): u32 n; n times { u32 type (ggml id; 1002, 1006, 1008: q4_0, q5_0, q8_0 regrouped as the GPU holds them), u32 rows, u32 cols,
// u64 nbytes, weights[nbytes], f32 x[cols], f32 ref[rows * cols] }.
#include <stdint.h>
#include <stdio.h>

#include <vector>

#include "iquant.h"

template <typename T>
static double deq_error(const std::vector<u8>& w, const float* ref, int rows, int cols) {
    const size_t rb = (size_t)(cols / T::BLK) * T::BYTES;
    double worst = 0.0, scale = 0.0;
    for (int r = 0; r < rows; r++) {
        for (int g = 0; g < cols / 32; g++) {
            float o[32];
            T::deq(w.data() + r * rb, g, o);
            for (int j = 0; j < 32; j++) {
                const double a = o[j], b = ref[(size_t)r * cols + 32 * g + j];
                worst = fmax(worst, fabs(a - b));
                scale = fmax(scale, fabs(b));
            }
        }
    }
    return scale > 0.0 ? worst / scale : worst;
}

// x prepared as quant_act does it, one group of 32 at a time.
struct Act {
    std::vector<i8> q;  // (cols / 4) x {4 hi bytes, 4 lo bytes}
    std::vector<float> d, s;
};
static Act prepare(const float* x, int cols) {
    Act a;
    a.q.resize((size_t)cols * 2);
    for (int g = 0; g < cols / 32; g++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * g + j]));
        const float d = amax / ACT_MAX, id = d > 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            const int e = 32 * g + j, v = act_q(x[e], id);
            sum += v;
            act_planes(v, &a.q[(e >> 2) * 8 + (e & 3)], &a.q[(e >> 2) * 8 + 4 + (e & 3)]);
        }
        a.d.push_back(d);
        a.s.push_back(d * (float)sum);
    }
    return a;
}

template <typename T>
static double dot_error(const std::vector<u8>& w, const float* x, const float* ref, int rows, int cols) {
    const size_t rb = (size_t)(cols / T::BLK) * T::BYTES;
    const Act a = prepare(x, cols);
    const int2* xq = (const int2*)a.q.data();
    double err = 0.0, norm = 0.0;
    for (int r = 0; r < rows; r++) {
        float acc = 0.0f;
        constexpr int P = IP<T>::PARTS;
        for (int i = 0; i < P * (cols / 32); i++) {
            const int g = i / P, p = i % P;
            IP<T> part;
            part.load(w.data() + r * rb, g, p);
            acc += part.dot(xq + g * 8, p, a.d[g], a.s[g]);
        }
        double want = 0.0;
        for (int c = 0; c < cols; c++) want += (double)ref[(size_t)r * cols + c] * x[c];
        err += (acc - want) * (acc - want);
        norm += want * want;
    }
    return sqrt(err / norm);
}

template <typename T>
static void report(int ty, const std::vector<u8>& w, const float* x, const float* ref, int rows, int cols) {
    printf("%d deq %.3e dot %.3e\n", ty, deq_error<T>(w, ref, rows, cols), dot_error<T>(w, x, ref, rows, cols));
}
template <typename T>
static void report_deq(int ty, const std::vector<u8>& w, const float* ref, int rows, int cols) {
    printf("%d deq %.3e dot -1\n", ty, deq_error<T>(w, ref, rows, cols));
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: kernel_math CASES\n");
        return 2;
    }
    FILE* f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    uint32_t n = 0;
    if (fread(&n, 4, 1, f) != 1) return 2;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t head[3];
        uint64_t nb = 0;
        if (fread(head, 4, 3, f) != 3 || fread(&nb, 8, 1, f) != 1) return 2;
        const int ty = (int)head[0], rows = (int)head[1], cols = (int)head[2];
        std::vector<u8> w(nb);
        std::vector<float> x(cols), ref((size_t)rows * cols);
        if (fread(w.data(), 1, nb, f) != nb || fread(x.data(), 4, cols, f) != (size_t)cols ||
            fread(ref.data(), 4, ref.size(), f) != ref.size())
            return 2;
        switch (ty) {  // ggml type ids
            case 0: report_deq<TF32>(ty, w, ref.data(), rows, cols); break;
            case 1: report_deq<TF16>(ty, w, ref.data(), rows, cols); break;
            case 30: report_deq<TBF16>(ty, w, ref.data(), rows, cols); break;
            case 2: report<TQ4_0>(ty, w, x.data(), ref.data(), rows, cols); break;
            case 1002: report<TQ4_0X8>(ty, w, x.data(), ref.data(), rows, cols); break;  // q4_0 regrouped (ops::pack_rows)
            case 3: report<TQ4_1>(ty, w, x.data(), ref.data(), rows, cols); break;
            case 6: report<TQ5_0>(ty, w, x.data(), ref.data(), rows, cols); break;
            case 1006: report<TQ5_0X4>(ty, w, x.data(), ref.data(), rows, cols); break;  // q5_0 regrouped (ops::pack_rows)
            case 7: report<TQ5_1>(ty, w, x.data(), ref.data(), rows, cols); break;
            case 8: report<TQ8_0>(ty, w, x.data(), ref.data(), rows, cols); break;
            case 1008: report<TQ8_0X4>(ty, w, x.data(), ref.data(), rows, cols); break;  // q8_0 regrouped (ops::pack_rows)
            case 10: report_deq<TQ2_K>(ty, w, ref.data(), rows, cols); break;
            case 11: report_deq<TQ3_K>(ty, w, ref.data(), rows, cols); break;
            case 12: report<TQ4_K>(ty, w, x.data(), ref.data(), rows, cols); break;
            case 13: report<TQ5_K>(ty, w, x.data(), ref.data(), rows, cols); break;
            case 14: report<TQ6_K>(ty, w, x.data(), ref.data(), rows, cols); break;
            case 20: report_deq<TIQ4_NL>(ty, w, ref.data(), rows, cols); break;
            case 23: report_deq<TIQ4_XS>(ty, w, ref.data(), rows, cols); break;
            case 39: report_deq<TMXFP4>(ty, w, ref.data(), rows, cols); break;
            default: printf("%d unsupported\n", ty);
        }
    }
    fclose(f);
    return 0;
}
