// The model-level steps of calibration statistics and model reconstruction
// on the GPU (DESIGN.md §3; nq-host quant/stats.rs, quant/kd.rs and
// model/backward.rs on the CPU): token norms and clipped channel energies of
// an activation site, and the two losses over the logits with their
// gradients. Every sum is in f64 and rounded once, as on the CPU.

// out[r] = ‖x[r]‖₂ for the rows of x (rows × width): the token norms the
// clipping threshold is taken from. One block per row.
extern "C" __global__ void nq_row_norms(const float* x, float* out, int rows, int width) {
    __shared__ double sh[NQ_BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * width;
    double acc = 0.0;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        double v = (double)xr[j];
        acc += v * v;
    }
    double total = nq_block_sum(acc, sh);
    if (threadIdx.x == 0) out[r] = (float)sqrt(total);
}

// acc[j] += Σ_r (x[r][j] · s[r])² (rows × width): one window's clipped
// energies of channel j added to the running sums, the product in f32, its
// square and the sum in f64, rows in order. One thread per channel
// (coalesced reads); the explicit roundings keep the compiler from fusing,
// so the sums are the CPU's bit for bit.
extern "C" __global__ void nq_clipped_squares(const float* x, const float* s, double* acc,
                                              int rows, int width) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width) return;
    double a = acc[j];
    for (int r = 0; r < rows; ++r) {
        double v = (double)(x[(size_t)r * width + j] * s[r]);
        a = __dadd_rn(a, __dmul_rn(v, v));
    }
    acc[j] = a;
}

// The largest logit of row zr (f32, as the CPU's fold) and Σ_j e_j over the
// row in f64, for every thread of the block: e_j = exp(zr[j] − max) with the
// subtraction in f64, or in f32 with `f32_shift` (the distillation loss's
// CPU arithmetic).
__device__ void nq_row_softmax_sums(const float* zr, int vocab, bool f32_shift, float* shf,
                                    double* sh, float* max_out, double* sum_out) {
    float local_max = __int_as_float(0xff800000);  // −∞
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) local_max = fmaxf(local_max, zr[j]);
    float m = nq_block_max(local_max, shf);
    double acc = 0.0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        acc += f32_shift ? exp((double)(zr[j] - m)) : exp((double)zr[j] - (double)m);
    *max_out = m;
    *sum_out = nq_block_sum(acc, sh);
}

// Next-token cross-entropy over the logits z (t × vocab), one block per row:
// row r < t − 1 predicts next[r], g[r] = (softmax(z[r]) − onehot) / n and
// loss[r] = logsumexp(z[r]) − z[r][next[r]]; the last row predicts nothing
// (g = 0, loss = 0). `next` holds t − 1 ids, each < vocab (checked by the
// caller).
extern "C" __global__ void nq_cross_entropy(const float* z, const unsigned* next, float* g,
                                            double* loss, int t, int vocab, double n) {
    __shared__ double sh[NQ_BLOCK];
    __shared__ float shf[NQ_BLOCK];
    int r = blockIdx.x;
    if (r >= t) return;
    const float* zr = z + (size_t)r * vocab;
    float* gr = g + (size_t)r * vocab;
    if (r == t - 1) {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) gr[j] = 0.0f;
        if (threadIdx.x == 0) loss[r] = 0.0;
        return;
    }
    float m;
    double sum;
    nq_row_softmax_sums(zr, vocab, false, shf, sh, &m, &sum);
    double mx = (double)m;
    unsigned target = next[r];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        double p = exp((double)zr[j] - mx) / sum;
        gr[j] = (float)((p - ((unsigned)j == target ? 1.0 : 0.0)) / n);
    }
    if (threadIdx.x == 0) loss[r] = mx + log(sum) - (double)zr[target];
}

// Cross-entropy of the student logits z (rows × vocab) against a truncated
// teacher, one block per row: `ids`/`probs` hold the teacher's k tokens of
// each row (distinct ids < vocab, probabilities summing to 1). With
// lse = logsumexp(z[r]): g[r][j] = exp(z[r][j] − lse) / rows, then
// g[r][id] −= p / rows for each teacher token, and
// loss[r] = −Σ p·(z[r][id] − lse).
extern "C" __global__ void nq_kd_loss(const float* z, const unsigned* ids, const float* probs,
                                      float* g, double* loss, int rows, int vocab, int k) {
    __shared__ double sh[NQ_BLOCK];
    __shared__ float shf[NQ_BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* zr = z + (size_t)r * vocab;
    float* gr = g + (size_t)r * vocab;
    float m;
    double sum;
    nq_row_softmax_sums(zr, vocab, true, shf, sh, &m, &sum);
    double lse = (double)m + log(sum);
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        gr[j] = (float)(exp((double)zr[j] - lse) / (double)rows);
    __syncthreads();
    if (threadIdx.x == 0) {
        double l = 0.0;
        for (int e = 0; e < k; ++e) {
            unsigned id = ids[(size_t)r * k + e];
            float p = probs[(size_t)r * k + e];
            gr[id] -= p / (float)rows;
            l -= (double)p * ((double)zr[id] - lse);
        }
        loss[r] = l;
    }
}
