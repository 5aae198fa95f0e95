// Products with packed sign matrices, read in place in the blob's layout
// (docs/FORMAT.md §6.1): rows in tiles of 16, byte (i, c) at
// (i / 16)·16·col_bytes + c·16 + i % 16, column j of row i is bit j % 8 of
// byte (i, j / 8), bit 1 = −1. This is what lets `eval --device cuda` run
// a quantized model's layers without expanding them to f32 (a 70B model's
// signs are ~9 GB; its f32 weights would not fit).

// out[tok][i] = Σ_j s(i, j) · x[tok][j] (x: t × cols, out: t × rows).
// One thread per (row, token): the 16 rows of a tile read 16 consecutive
// bytes, and a token's activations are shared through the cache.
extern "C" __global__ void nq_sign_matmul(const unsigned char* signs, int rows, int cols,
                                          int col_bytes, const float* x, int t, float* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int tok = blockIdx.y;
    if (i >= rows || tok >= t) return;
    const unsigned char* base = signs + (size_t)(i / 16) * 16 * col_bytes + (i % 16);
    const float* xr = x + (size_t)tok * cols;
    float acc = 0.0f;
    int full = cols / 8;
    for (int c = 0; c < full; ++c) {
        unsigned b = base[(size_t)c * 16];
        const float* xc = xr + 8 * c;
#pragma unroll
        for (int k = 0; k < 8; ++k) acc += ((b >> k) & 1u) ? -xc[k] : xc[k];
    }
    if (full * 8 < cols) {
        unsigned b = base[(size_t)full * 16];
        const float* xc = xr + 8 * full;
        for (int k = 0; k < cols - 8 * full; ++k) acc += ((b >> k) & 1u) ? -xc[k] : xc[k];
    }
    out[(size_t)tok * rows + i] = acc;
}

// y[r][j] *= s[j] (rows × n): the scale vectors of factorized and binary
// layers.
extern "C" __global__ void nq_scale_columns(float* y, const float* s, int rows, int n) {
    size_t total = (size_t)rows * n;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x)
        y[e] *= s[e % n];
}
