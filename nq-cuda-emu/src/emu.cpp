// nq-cuda's kernel sources compiled for the host (see cuda_emu.h), and the
// launcher Rust calls.
//
// Fibers: a pool of persistent fibers, one per CUDA thread of a block (up
// to 1024), each made once with makecontext and entered once with
// setcontext; after that every switch is a _setjmp/_longjmp pair, which
// (unlike swapcontext) makes no system call. A fiber loops forever: run
// the kernel body for the thread it is given, mark itself done, park.

// The checked longjmp of _FORTIFY_SOURCE refuses jumps between stacks,
// which is what fibers do.
#undef _FORTIFY_SOURCE

#include "cuda_emu.h"

#include <setjmp.h>
#include <ucontext.h>

#include <memory>
#include <mutex>
#include <vector>

#include "common.cuh"
#include "admm.cu"
#include "forward.cu"
#include "signs.cu"
#include "backward.cu"
#include "train.cu"
#include "stats.cu"

namespace {

// Stack of one emulated thread: the kernels keep a few scalars each; the
// Rust trampoline and libm need a little more.
constexpr size_t kStack = 64 * 1024;
// The most threads per block the pool serves (CUDA's limit).
constexpr size_t kMaxThreads = 1024;

struct Fiber {
    jmp_buf at;         // where the fiber is parked
    ucontext_t start;   // its first entry
    bool started = false;
    bool done = false;
    dim3 idx;
};

std::mutex launch_lock;
std::vector<Fiber> pool;
std::unique_ptr<char[]> stacks;
jmp_buf scheduler;
ucontext_t scheduler_ctx;
Fiber* running = nullptr;
void (*kernel_body)(const void*) = nullptr;
const void* kernel_ctx = nullptr;

// Parks the running fiber and returns to the scheduler.
void park() {
    if (_setjmp(running->at) == 0) _longjmp(scheduler, 1);
}

void fiber_main() {
    for (;;) {
        kernel_body(kernel_ctx);
        running->done = true;
        park();
    }
}

// Makes the pool once (stacks are never freed: the pool lives as long as
// the process). Kept out of line: getcontext returns like setjmp.
[[gnu::noinline]] bool make_pool() {
    if (!pool.empty()) return true;
    pool = std::vector<Fiber>(kMaxThreads);
    stacks.reset(new char[kMaxThreads * kStack]);
    for (size_t t = 0; t < kMaxThreads; ++t) {
        Fiber& f = pool[t];
        if (getcontext(&f.start) != 0) return false;
        f.start.uc_stack.ss_sp = stacks.get() + t * kStack;
        f.start.uc_stack.ss_size = kStack;
        f.start.uc_link = nullptr;  // fiber_main never returns
        makecontext(&f.start, fiber_main, 0);
    }
    return true;
}

// Runs fiber `f` until it parks (at a barrier or done).
[[gnu::noinline]] void resume(Fiber& f) {
    running = &f;
    nq_emu::thread_idx = f.idx;
    if (_setjmp(scheduler) == 0) {
        if (!f.started) {
            f.started = true;
            swapcontext(&scheduler_ctx, &f.start);
        } else {
            _longjmp(f.at, 1);
        }
    }
}

}  // namespace

void nq_emu::yield_to_scheduler() { park(); }

// Runs `body(ctx)` once per thread of a grid × block launch with the
// thread's indices set and `shared_bytes` of dynamic shared memory. Returns
// 0, -1 when the fibers could not be made, -2 for a block over 1024
// threads.
extern "C" int nq_emu_launch(const unsigned grid[3], const unsigned block[3], size_t shared_bytes,
                             void (*body)(const void*), const void* ctx) {
    std::lock_guard<std::mutex> guard(launch_lock);
    const size_t threads = size_t(block[0]) * block[1] * block[2];
    if (threads > kMaxThreads) return -2;
    if (!make_pool()) return -1;
    nq_emu::grid_dim = dim3{grid[0], grid[1], grid[2]};
    nq_emu::block_dim = dim3{block[0], block[1], block[2]};
    kernel_body = body;
    kernel_ctx = ctx;
    // Dynamic shared memory: on a GPU it starts undefined; NaN-filled here
    // so a kernel that reads it before writing shows it.
    std::vector<float> shared(shared_bytes / sizeof(float) + 1, NAN);
    nq_emu::dynamic_shared = reinterpret_cast<unsigned char*>(shared.data());
    for (size_t t = 0; t < threads; ++t)
        pool[t].idx = dim3{unsigned(t % block[0]), unsigned((t / block[0]) % block[1]),
                           unsigned(t / (size_t(block[0]) * block[1]))};
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) {
                nq_emu::block_idx = dim3{bx, by, bz};
                for (size_t t = 0; t < threads; ++t) pool[t].done = false;
                // One round per barrier phase, until every thread is done.
                bool live = true;
                while (live) {
                    live = false;
                    for (size_t t = 0; t < threads; ++t) {
                        Fiber& f = pool[t];
                        if (f.done) continue;
                        resume(f);
                        live |= !f.done;
                    }
                }
            }
    running = nullptr;
    nq_emu::dynamic_shared = nullptr;
    return 0;
}
