// The element-wise parts of a transformer block's backward pass on the GPU
// (the products go through cuBLAS): RMSNorm, SiLU·mul and causal
// grouped-query attention. RoPE's backward (the inverse rotation) is
// nq_rope_backward in forward.cu. Each kernel computes what nq-host's CPU
// backward (model/backward.rs) computes, with the same f64 sums where the
// CPU uses them. Conventions as in forward.cu: row-major, `int` shapes.

// Backward of y = x · r · w row by row (r = 1/rms(x) from nq_rmsnorm_inv):
// dx = r w dy − r³ x (Σ_j dy_j w_j x_j) / d, the sum in f64; with
// `accumulate` dx is added to, otherwise written. One block per row.
extern "C" __global__ void nq_rmsnorm_backward(const float* x, const float* w, const float* inv,
                                               const float* dy, float* dx, int rows, int d,
                                               int accumulate) {
    __shared__ double sh[NQ_BLOCK];
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * d;
    const float* gr = dy + (size_t)row * d;
    float* o = dx + (size_t)row * d;
    double acc = 0.0;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        acc += (double)xr[j] * (double)gr[j] * (double)w[j];
    double s = nq_block_sum(acc, sh);
    float r = inv[row];
    double r64 = (double)r;
    float coef = (float)(s * r64 * r64 * r64 / d);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float v = r * w[j] * gr[j] - coef * xr[j];
        o[j] = accumulate ? o[j] + v : v;
    }
}

// The norm weight's gradient: dw[j] += Σ_rows dy[r][j] · x[r][j] · inv[r],
// summed in f64 in row order. One thread per column.
extern "C" __global__ void nq_rmsnorm_weight_grad(const float* x, const float* inv,
                                                  const float* dy, float* dw, int rows, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    double acc = 0.0;
    for (int r = 0; r < rows; ++r) {
        size_t e = (size_t)r * d + j;
        acc += (double)dy[e] * (double)x[e] * (double)inv[r];
    }
    dw[j] += (float)acc;
}

// Backward of act = silu(gate) ⊙ up: with σ = 1/(1 + e^−g),
// ∂gate = da · up · σ · (1 + g (1 − σ)), ∂up = da · g · σ.
extern "C" __global__ void nq_swiglu_backward(const float* gate, const float* up,
                                              const float* d_act, float* d_gate, float* d_up,
                                              int n) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (size_t)n;
         e += (size_t)gridDim.x * blockDim.x) {
        float g = gate[e], u = up[e], da = d_act[e];
        float s = 1.0f / (1.0f + expf(-g));
        d_gate[e] = da * u * s * (1.0f + g * (1.0f - s));
        d_up[e] = da * g * s;
    }
}

// Attention backward, part 1, one block per (query i, head) like
// nq_attention: from the probabilities P (heads × t × t, nq_attention_probs)
// and ∂L/∂out (t × heads·d),
//   dP_ij = dOut_i · v_j,  dS_ij = P_ij (dP_ij − Σ_j' dP_ij' P_ij') · scale
// for j ≤ i (0 above the diagonal; the row sum in f64), written to ds
// (heads × t × t), and dQ_i = Σ_j dS_ij k_j. Dynamic shared memory: t floats.
extern "C" __global__ void nq_attention_backward_q(const float* probs, const float* d_out,
                                                   const float* k, const float* v, float* ds,
                                                   float* dq, int t, int heads, int kv_heads,
                                                   int d, float scale) {
    NQ_DYNAMIC_SHARED(float, row);
    __shared__ double shd[NQ_BLOCK];
    int head = blockIdx.x % heads;
    int i = blockIdx.x / heads;
    if (i >= t) return;
    int g = head / (heads / kv_heads);
    size_t qd = (size_t)heads * d, kvd = (size_t)kv_heads * d;
    const float* p = probs + ((size_t)head * t + i) * t;
    const float* doi = d_out + (size_t)i * qd + (size_t)head * d;
    double local = 0.0;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
        const float* vj = v + (size_t)j * kvd + (size_t)g * d;
        float s = 0.0f;
        for (int c = 0; c < d; ++c) s += doi[c] * vj[c];
        row[j] = s;
        local += (double)s * (double)p[j];
    }
    float dot = (float)nq_block_sum(local, shd);
    float* dsi = ds + ((size_t)head * t + i) * t;
    for (int j = threadIdx.x; j < t; j += blockDim.x) {
        float val = 0.0f;
        if (j <= i) {
            val = p[j] * (row[j] - dot) * scale;
            row[j] = val;
        }
        dsi[j] = val;
    }
    __syncthreads();
    float* dqi = dq + (size_t)i * qd + (size_t)head * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= i; ++j) acc += row[j] * k[(size_t)j * kvd + (size_t)g * d + c];
        dqi[c] = acc;
    }
}

// Attention backward, part 2, one block per (key j, kv head g): the key and
// value gradients summed over the query heads h of group g and the queries
// i ≥ j that see key j,
//   dK_j = Σ_h Σ_i dS[h]_ij q_i[h],  dV_j = Σ_h Σ_i P[h]_ij dOut_i[h].
// No atomics: each output element has one writer.
extern "C" __global__ void nq_attention_backward_kv(const float* probs, const float* ds,
                                                    const float* q, const float* d_out, float* dk,
                                                    float* dv, int t, int heads, int kv_heads,
                                                    int d) {
    int g = blockIdx.x % kv_heads;
    int j = blockIdx.x / kv_heads;
    if (j >= t) return;
    int group = heads / kv_heads;
    size_t qd = (size_t)heads * d, kvd = (size_t)kv_heads * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float ak = 0.0f, av = 0.0f;
        for (int h = g * group; h < (g + 1) * group; ++h) {
            for (int i = j; i < t; ++i) {
                size_t pij = ((size_t)h * t + i) * t + j;
                size_t qi = (size_t)i * qd + (size_t)h * d + c;
                ak += ds[pij] * q[qi];
                av += probs[pij] * d_out[qi];
            }
        }
        dk[(size_t)j * kvd + (size_t)g * d + c] = ak;
        dv[(size_t)j * kvd + (size_t)g * d + c] = av;
    }
}
