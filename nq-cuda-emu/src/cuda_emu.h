// The subset of CUDA C that nanoquant's kernels use, for the host compiler.
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread;
// blocks run one after another. A fiber runs until its next
// __syncthreads() or its return, then the next fiber runs, so one round
// over the block's fibers is one barrier phase; a fiber that has returned
// takes no further part (as on the GPU). __shared__ variables become
// function statics: one block runs at a time, so they are shared by exactly
// the threads that share them on the device. Launches are serialized by a
// global lock (emu.cpp), so the statics and the launch state below are
// never used by two launches at once. Being single-threaded, the emulation
// is deterministic, and its atomics are plain read-modify-writes.

#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace nq_emu {
inline dim3 thread_idx;
inline dim3 block_idx;
inline dim3 block_dim;
inline dim3 grid_dim;
inline unsigned char* dynamic_shared = nullptr;
// Switches from the running fiber back to the block's scheduler (emu.cpp).
void yield_to_scheduler();
}  // namespace nq_emu

#define threadIdx (nq_emu::thread_idx)
#define blockIdx (nq_emu::block_idx)
#define blockDim (nq_emu::block_dim)
#define gridDim (nq_emu::grid_dim)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define NQ_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(nq_emu::dynamic_shared)

inline void __syncthreads() { nq_emu::yield_to_scheduler(); }

inline float __int_as_float(int v) {
    float f;
    std::memcpy(&f, &v, sizeof f);
    return f;
}

inline int __float_as_int(float f) {
    int v;
    std::memcpy(&v, &f, sizeof v);
    return v;
}

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// Round-to-nearest f64 operations that the GPU compiler may not fuse; the
// emulation never fuses anyway (-ffp-contract=off).
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }

template <typename T>
inline T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}

template <typename T>
inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}

using std::isfinite;
