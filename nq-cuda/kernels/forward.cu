// The element-wise parts of the Llama-family forward pass on the GPU (the
// products go through cuBLAS): RMSNorm, bias, RoPE ("rotate halves"),
// causal grouped-query attention, SiLU·mul and the residual add. Each
// kernel computes what nq-host's CPU forward (model/forward.rs) computes,
// with the same f64 sums where the CPU uses them.

// 1 / rms(xr) for one row of d, by the whole block: the mean square summed
// in f64, the result rounded to f32 (as the CPU's `inv`).
__device__ float nq_inv_rms(const float* xr, int d, float eps, double* sh) {
    double acc = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) acc += (double)xr[j] * (double)xr[j];
    double ms = nq_block_sum(acc, sh) / d;
    return (float)(1.0 / sqrt(ms + (double)eps));
}

// o = xr / rms(xr) ⊙ w for one row of d, by the whole block (o may be xr:
// every element is read before the block-wide sum and written after it by
// the same thread).
__device__ void nq_rmsnorm_row(const float* xr, const float* w, float* o, int d, float eps,
                               double* sh) {
    float inv = nq_inv_rms(xr, d, eps, sh);
    for (int j = threadIdx.x; j < d; j += blockDim.x) o[j] = xr[j] * inv * w[j];
}

// out[r] = x[r] / rms(x[r]) ⊙ w, rows of d. One block per row.
extern "C" __global__ void nq_rmsnorm(const float* x, const float* w, float* out, int rows, int d,
                                      float eps) {
    __shared__ double sh[NQ_BLOCK];
    int row = blockIdx.x;
    if (row >= rows) return;
    nq_rmsnorm_row(x + (size_t)row * d, w, out + (size_t)row * d, d, eps, sh);
}

// The same in place (qwen3's per-head q/k norms: rows = tokens · heads).
extern "C" __global__ void nq_rmsnorm_inplace(float* x, const float* w, int rows, int d,
                                              float eps) {
    __shared__ double sh[NQ_BLOCK];
    int row = blockIdx.x;
    if (row >= rows) return;
    nq_rmsnorm_row(x + (size_t)row * d, w, x + (size_t)row * d, d, eps, sh);
}

// inv[r] = 1 / rms(x[r]) (rows of d): what the backward pass keeps of a
// norm. One block per row.
extern "C" __global__ void nq_rmsnorm_inv(const float* x, float* inv, int rows, int d, float eps) {
    __shared__ double sh[NQ_BLOCK];
    int row = blockIdx.x;
    if (row >= rows) return;
    float r = nq_inv_rms(x + (size_t)row * d, d, eps, sh);
    if (threadIdx.x == 0) inv[row] = r;
}

// y[r][j] += b[j].
extern "C" __global__ void nq_add_bias(float* y, const float* b, int rows, int n) {
    size_t total = (size_t)rows * n;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x)
        y[e] += b[e % n];
}

// Rotates every head of x (t × heads·2·half, row p at position p) by the
// angles of its position times `dir` (+1 forward, −1 backward: the
// transpose): (a, b) → (a cos − b s, b cos + a s), s = dir · sin, for the
// pairs (i, i + half).
__device__ void nq_rotate(float* x, const float* cos_t, const float* sin_t, int t, int heads,
                          int half, float dir) {
    size_t total = (size_t)t * heads * half;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(e % half);
        size_t ph = e / half;  // p · heads + head
        int p = (int)(ph / heads);
        float* head = x + ph * 2 * half;
        float a = head[i], b = head[i + half];
        float c = cos_t[(size_t)p * half + i], s = dir * sin_t[(size_t)p * half + i];
        head[i] = a * c - b * s;
        head[i + half] = b * c + a * s;
    }
}

// RoPE ("rotate halves") on every head of x.
extern "C" __global__ void nq_rope(float* x, const float* cos_t, const float* sin_t, int t,
                                   int heads, int half) {
    nq_rotate(x, cos_t, sin_t, t, heads, half, 1.0f);
}

// RoPE's backward: the inverse rotation applied to ∂L/∂(rotated x).
extern "C" __global__ void nq_rope_backward(float* dx, const float* cos_t, const float* sin_t,
                                            int t, int heads, int half) {
    nq_rotate(dx, cos_t, sin_t, t, heads, half, -1.0f);
}

// Softmax over j ≤ i of scale · q_i·k_j for query i of `head` (kv group g),
// by the whole block: leaves the probabilities in scores[0..=i]; the
// exponentials are summed in f64.
__device__ void nq_causal_probs(const float* q, const float* k, float* scores, int i, int head,
                                int g, int heads, int kv_heads, int d, float scale, float* shf,
                                double* shd) {
    size_t qd = (size_t)heads * d, kvd = (size_t)kv_heads * d;
    const float* qi = q + (size_t)i * qd + (size_t)head * d;
    float local_max = __int_as_float(0xff800000);  // −∞
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
        const float* kj = k + (size_t)j * kvd + (size_t)g * d;
        float s = 0.0f;
        for (int c = 0; c < d; ++c) s += qi[c] * kj[c];
        s *= scale;
        scores[j] = s;
        local_max = fmaxf(local_max, s);
    }
    float m = nq_block_max(local_max, shf);
    double local_sum = 0.0;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
        float e = expf(scores[j] - m);
        scores[j] = e;
        local_sum += (double)e;
    }
    float norm = (float)(1.0 / nq_block_sum(local_sum, shd));
    for (int j = threadIdx.x; j <= i; j += blockDim.x) scores[j] *= norm;
    __syncthreads();
}

// Causal grouped-query attention for one (head, query) per block:
// out[i][head] = softmax_j≤i(scale · q_i·k_j) · v_j. Dynamic shared memory:
// t floats of scores. q: t × heads·d; k, v: t × kv_heads·d; out like q.
extern "C" __global__ void nq_attention(const float* q, const float* k, const float* v,
                                        float* out, int t, int heads, int kv_heads, int d,
                                        float scale) {
    NQ_DYNAMIC_SHARED(float, scores);
    __shared__ float shf[NQ_BLOCK];
    __shared__ double shd[NQ_BLOCK];
    int head = blockIdx.x % heads;
    int i = blockIdx.x / heads;
    if (i >= t) return;
    int g = head / (heads / kv_heads);
    nq_causal_probs(q, k, scores, i, head, g, heads, kv_heads, d, scale, shf, shd);
    size_t qd = (size_t)heads * d, kvd = (size_t)kv_heads * d;
    float* oi = out + (size_t)i * qd + (size_t)head * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= i; ++j) acc += scores[j] * v[(size_t)j * kvd + (size_t)g * d + c];
        oi[c] = acc;
    }
}

// The attention probabilities the backward pass needs: probs[head][i][j]
// (heads × t × t), zero above the diagonal. Same launch as nq_attention.
extern "C" __global__ void nq_attention_probs(const float* q, const float* k, float* probs, int t,
                                              int heads, int kv_heads, int d, float scale) {
    NQ_DYNAMIC_SHARED(float, scores);
    __shared__ float shf[NQ_BLOCK];
    __shared__ double shd[NQ_BLOCK];
    int head = blockIdx.x % heads;
    int i = blockIdx.x / heads;
    if (i >= t) return;
    int g = head / (heads / kv_heads);
    nq_causal_probs(q, k, scores, i, head, g, heads, kv_heads, d, scale, shf, shd);
    float* row = probs + ((size_t)head * t + i) * t;
    for (int j = threadIdx.x; j < t; j += blockDim.x) row[j] = j <= i ? scores[j] : 0.0f;
}

// out = silu(g) ⊙ u.
extern "C" __global__ void nq_silu_mul(float* out, const float* g, const float* u, int n) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (size_t)n;
         e += (size_t)gridDim.x * blockDim.x) {
        float x = g[e];
        out[e] = x / (1.0f + expf(-x)) * u[e];
    }
}

// x += y.
extern "C" __global__ void nq_add_assign(float* x, const float* y, int n) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (size_t)n;
         e += (size_t)gridDim.x * blockDim.x)
        x[e] += y[e];
}
