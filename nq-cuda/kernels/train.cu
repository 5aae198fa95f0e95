// Block and model reconstruction's per-parameter steps on the GPU
// (DESIGN.md §3; nq-host quant/recon.rs on the CPU): signs of the latents
// (the straight-through estimator passes gradients through unchanged, so
// the backward needs no kernel), the chain rule from ∂L/∂Ŵ to the scales,
// AdamW, and packing hardened signs into the blob's tile layout.

// out = sign(x) with sign(0) = sign(−0) = +1, as everywhere in nanoquant.
extern "C" __global__ void nq_signs(const float* x, float* out, int n) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (size_t)n;
         e += (size_t)gridDim.x * blockDim.x)
        out[e] = x[e] < 0.0f ? -1.0f : 1.0f;
}

// y[i][j] *= s[i] (rows × n): diag(s_post)·U when forming Ŵ.
extern "C" __global__ void nq_scale_rows(float* y, const float* s, int rows, int n) {
    size_t total = (size_t)rows * n;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x)
        y[e] *= s[e / n];
}

// g[i][j] = dw[i][j] · (s_post[i] · s_pre[j]) (m × n): ∂L/∂(U·V) from
// ∂L/∂Ŵ, the input of the two latent-gradient products.
extern "C" __global__ void nq_scale_outer(const float* dw, const float* s_post, const float* s_pre,
                                          float* g, int m, int n) {
    size_t total = (size_t)m * n;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x)
        g[e] = dw[e] * (s_post[e / n] * s_pre[e % n]);
}

// ∂L/∂s_post[i] = Σ_j dw[i][j] · p[i][j] · s_pre[j] with p = U·V, each
// product in f32 and the sum in f64 (as the CPU). One block per row.
extern "C" __global__ void nq_scale_grad_post(const float* dw, const float* p, const float* s_pre,
                                              float* out, int m, int n) {
    __shared__ double sh[NQ_BLOCK];
    int i = blockIdx.x;
    if (i >= m) return;
    const float* dr = dw + (size_t)i * n;
    const float* pr = p + (size_t)i * n;
    double acc = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) acc += (double)(dr[j] * pr[j] * s_pre[j]);
    double total = nq_block_sum(acc, sh);
    if (threadIdx.x == 0) out[i] = (float)total;
}

// ∂L/∂s_pre[j] = Σ_i dw[i][j] · p[i][j] · s_post[i]. One thread per column
// (coalesced reads), rows summed in order in f64.
extern "C" __global__ void nq_scale_grad_pre(const float* dw, const float* p, const float* s_post,
                                             float* out, int m, int n) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    double acc = 0.0;
    for (int i = 0; i < m; ++i) {
        size_t e = (size_t)i * n + j;
        acc += (double)(dw[e] * p[e] * s_post[i]);
    }
    out[j] = (float)acc;
}

// Gradient of block reconstruction's loss L = Σ imp[c]·(y − target)² / norm
// (rows × d): dy = 2·imp[c]·(y − target) / norm, in f64 then rounded (as
// the CPU).
extern "C" __global__ void nq_weighted_mse_grad(const float* y, const float* target,
                                                const float* imp, float* dy, int rows, int d,
                                                double norm) {
    size_t total = (size_t)rows * d;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        float err = y[e] - target[e];
        dy[e] = (float)(2.0 * (double)imp[e % d] * (double)err / norm);
    }
}

// One AdamW step (decoupled weight decay), the CPU's formula operation for
// operation: m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
// p ← p − lr (m/c1 / (√(v/c2) + ε) + wd p), with c1 = 1 − β1^t,
// c2 = 1 − β2^t computed by the caller.
extern "C" __global__ void nq_adamw(float* p, const float* g, float* m, float* v, int n, float lr,
                                    float wd, float b1, float b2, float eps, float c1, float c2) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (size_t)n;
         e += (size_t)gridDim.x * blockDim.x) {
        float ge = g[e];
        float me = b1 * m[e] + (1.0f - b1) * ge;
        float ve = b2 * v[e] + (1.0f - b2) * ge * ge;
        m[e] = me;
        v[e] = ve;
        float upd = (me / c1) / (sqrtf(ve / c2) + eps);
        p[e] -= lr * (upd + wd * p[e]);
    }
}

// Packs sign(x) (rows × cols, row-major) into the blob's tile layout
// (docs/FORMAT.md §6.1): byte (i, c) at (i / 16)·16·col_bytes + c·16 + i % 16,
// bit k of it is column 8c + k, bit 1 = −1; padding rows and columns are 0
// (+1). One thread per output byte; `out` holds tiles·16·col_bytes bytes.
extern "C" __global__ void nq_pack_signs(const float* x, int rows, int cols, int col_bytes,
                                         unsigned char* out) {
    size_t tiles = ((size_t)rows + 15) / 16;
    size_t total = tiles * 16 * (size_t)col_bytes;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        size_t tile_bytes = 16 * (size_t)col_bytes;
        size_t tile = e / tile_bytes, rest = e % tile_bytes;
        size_t c = rest / 16;
        size_t i = tile * 16 + rest % 16;
        unsigned byte = 0;
        if (i < (size_t)rows) {
            const float* xr = x + i * cols;
            for (int k = 0; k < 8; ++k) {
                size_t j = 8 * c + k;
                if (j < (size_t)cols && xr[j] < 0.0f) byte |= 1u << k;
            }
        }
        out[e] = (unsigned char)byte;
    }
}
