// NanoQuant ADMM on the GPU: the element-wise and reduction steps of one
// iteration (DESIGN.md §3). The GEMMs go through cuBLAS and the Cholesky
// factorization through cuSOLVER; these kernels are everything else.
//
// Conventions: matrices are row-major; `rows`, `cols` are int (a 70B layer
// is at most 28672 × 8192, far below 2^31 elements); sums that the CPU
// backend accumulates in f64 are accumulated in f64 here too, so the two
// backends agree to f32 rounding.

__device__ float nq_sign1(float x) { return x < 0.0f ? -1.0f : 1.0f; }

// Each row of x scaled to unit Euclidean norm (zero rows stay zero).
// Grid: one block per row.
extern "C" __global__ void nq_normalize_rows(float* x, int rows, int cols) {
    __shared__ double sh[NQ_BLOCK];
    int row = blockIdx.x;
    if (row >= rows) return;
    float* p = x + (size_t)row * cols;
    double acc = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        double v = p[j];
        acc += v * v;
    }
    double norm = nq_block_sum(acc, sh);
    if (norm > 0.0) {
        float inv = (float)(1.0 / sqrt(norm));
        for (int j = threadIdx.x; j < cols; j += blockDim.x) p[j] *= inv;
    }
}

// out[j] = Σ_i x[i][j]²  (one thread per column; reads are coalesced).
extern "C" __global__ void nq_column_sumsq(const float* x, int rows, int cols, double* out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double acc = 0.0;
    for (int i = 0; i < rows; ++i) {
        double v = x[(size_t)i * cols + j];
        acc += v * v;
    }
    out[j] = acc;
}

// dst[i][j] = src[i][j] / ‖column j‖ (a zero column is divided by 1).
extern "C" __global__ void nq_divide_columns(float* dst, const float* src, const double* sumsq,
                                             int rows, int cols) {
    size_t n = (size_t)rows * cols;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        double s = sumsq[e % cols];
        float c = s > 0.0 ? (float)sqrt(s) : 1.0f;
        dst[e] = src[e] / c;
    }
}

extern "C" __global__ void nq_fill_f64(double* v, int n, double value) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] = value;
}

// out[0] = Σ v², by a single block.
extern "C" __global__ void nq_sumsq_f64(const double* v, int n, double* out) {
    __shared__ double sh[NQ_BLOCK];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += v[i] * v[i];
    double total = nq_block_sum(acc, sh);
    if (threadIdx.x == 0) out[0] = total;
}

// SVID half-step: u[i] = Σ_j |x[i][j]| v[j] / vv (0 when vv = 0), vv = *vv_ptr.
// Grid: one block per row.
extern "C" __global__ void nq_svid_u(const float* x, const double* v, const double* vv_ptr,
                                     double* u, int rows, int cols) {
    __shared__ double sh[NQ_BLOCK];
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* p = x + (size_t)row * cols;
    double acc = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) acc += (double)fabsf(p[j]) * v[j];
    double dot = nq_block_sum(acc, sh);
    if (threadIdx.x == 0) {
        double vv = vv_ptr[0];
        u[row] = vv > 0.0 ? dot / vv : 0.0;
    }
}

// SVID half-step: v[j] = (Σ_i u[i] |x[i][j]|) / uu (0 when uu = 0).
extern "C" __global__ void nq_svid_v(const float* x, const double* u, const double* uu_ptr,
                                     double* v, int rows, int cols) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double acc = 0.0;
    for (int i = 0; i < rows; ++i) acc += u[i] * (double)fabsf(x[(size_t)i * cols + j]);
    double uu = uu_ptr[0];
    v[j] = acc * (uu > 0.0 ? 1.0 / uu : 0.0);
}

// out = sign(x) ⊙ (u vᵀ).
extern "C" __global__ void nq_svid_out(const float* x, const double* u, const double* v,
                                       float* out, int rows, int cols) {
    size_t n = (size_t)rows * cols;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        size_t i = e / cols, j = e % cols;
        out[e] = nq_sign1(x[e]) * (float)(u[i] * v[j]);
    }
}

extern "C" __global__ void nq_add(float* out, const float* a, const float* b, int n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

extern "C" __global__ void nq_sub(float* out, const float* a, const float* b, int n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] - b[i];
}

// rhs += ρ (z − u)
extern "C" __global__ void nq_add_penalty(float* rhs, float rho, const float* z, const float* u,
                                          int n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)n;
         i += (size_t)gridDim.x * blockDim.x)
        rhs[i] += rho * (z[i] - u[i]);
}

// u += x − z
extern "C" __global__ void nq_dual_update(float* u, const float* x, const float* z, int n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)n;
         i += (size_t)gridDim.x * blockDim.x)
        u[i] += x[i] - z[i];
}

// sys = gram + shift·I in f64, symmetric from gram's lower triangle
// (row-major i ≥ j), the same entries the CPU backend uses.
extern "C" __global__ void nq_shifted_system(const float* gram, double* sys, int r, float shift) {
    size_t n = (size_t)r * r;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(e / r), j = (int)(e % r);
        int hi = i > j ? i : j, lo = i > j ? j : i;
        double g = (double)gram[(size_t)hi * r + lo];
        if (i == j) g += (double)shift;
        sys[e] = g;
    }
}

// inverse (row-major f32, symmetric) from cuSOLVER's potri result, which is
// in the lower triangle of the column-major `sys`; *bad = 1 on a non-finite.
extern "C" __global__ void nq_inverse_to_f32(const double* sys, float* inverse, int r, int* bad) {
    size_t n = (size_t)r * r;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(e / r), j = (int)(e % r);
        int hi = i > j ? i : j, lo = i > j ? j : i;
        float x = (float)sys[(size_t)lo * r + hi];
        if (!isfinite(x)) atomicExch(bad, 1);
        inverse[e] = x;
    }
}
