// Shared by every kernel file (nq-cuda/src/kernels.rs puts it in front of
// each source): the block size of the reduction kernels and the block-wide
// reductions. Launches use exactly NQ_BLOCK threads per block (geometry.rs
// `BLOCK`, checked by a test), a power of two.

#define NQ_BLOCK 256

// Dynamic shared memory (the launch's shared_mem_bytes) as `type name[]`.
// The host emulation (nq-cuda-emu) defines its own.
#ifndef NQ_DYNAMIC_SHARED
#define NQ_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Sum of `v` over the block; every thread gets it. `sh` holds NQ_BLOCK
// doubles; it may be reused after the call.
__device__ double nq_block_sum(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double total = sh[0];
    __syncthreads();
    return total;
}

// Maximum of `v` over the block; every thread gets it. `sh` holds NQ_BLOCK
// floats.
__device__ float nq_block_max(float v, float* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    float m = sh[0];
    __syncthreads();
    return m;
}
