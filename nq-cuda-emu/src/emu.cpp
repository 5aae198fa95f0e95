// nq-cuda's kernel sources compiled for the host (see cuda_emu.h), and the
// launcher Rust calls.

#include "cuda_emu.h"

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

namespace {

// Stack of one emulated thread: the kernels keep a few scalars each; the
// Rust trampoline and libm need a little more.
constexpr size_t kStack = 128 * 1024;

struct Fiber {
    ucontext_t ctx;
    dim3 idx;
    bool done;
};

std::mutex launch_lock;
// Fiber stacks, kept between launches (uninitialized memory).
std::unique_ptr<char[]> stacks;
size_t stacks_len = 0;
ucontext_t scheduler;
Fiber* running = nullptr;
void (*kernel_body)(const void*) = nullptr;
const void* kernel_ctx = nullptr;

void fiber_entry() {
    kernel_body(kernel_ctx);
    running->done = true;
    // Returning resumes uc_link, the scheduler.
}

// Prepares `f` to run fiber_entry on `stack`. Kept out of line: getcontext
// returns like setjmp, which would make the caller's loop variables suspect.
[[gnu::noinline]] bool init_fiber(Fiber& f, char* stack) {
    f.done = false;
    if (getcontext(&f.ctx) != 0) return false;
    f.ctx.uc_stack.ss_sp = stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &scheduler;
    makecontext(&f.ctx, fiber_entry, 0);
    return true;
}

}  // namespace

void nq_emu::yield_to_scheduler() { swapcontext(&running->ctx, &scheduler); }

// Runs `body(ctx)` once per thread of a grid × block launch with the
// thread's indices set and `shared_bytes` of dynamic shared memory. Returns
// 0, or -1 when a context could not be made.
extern "C" int nq_emu_launch(const unsigned grid[3], const unsigned block[3], size_t shared_bytes,
                             void (*body)(const void*), const void* ctx) {
    std::lock_guard<std::mutex> guard(launch_lock);
    nq_emu::grid_dim = dim3{grid[0], grid[1], grid[2]};
    nq_emu::block_dim = dim3{block[0], block[1], block[2]};
    kernel_body = body;
    kernel_ctx = ctx;
    const size_t threads = size_t(block[0]) * block[1] * block[2];
    // Dynamic shared memory: on a GPU it starts undefined; NaN-filled here
    // so a kernel that reads it before writing shows it.
    std::vector<float> shared(shared_bytes / sizeof(float) + 1, NAN);
    nq_emu::dynamic_shared = reinterpret_cast<unsigned char*>(shared.data());
    std::vector<Fiber> fibers(threads);
    if (stacks_len < threads * kStack) {
        stacks.reset(new char[threads * kStack]);
        stacks_len = threads * kStack;
    }
    int status = 0;
    for (unsigned bz = 0; bz < grid[2] && status == 0; ++bz)
        for (unsigned by = 0; by < grid[1] && status == 0; ++by)
            for (unsigned bx = 0; bx < grid[0] && status == 0; ++bx) {
                nq_emu::block_idx = dim3{bx, by, bz};
                for (size_t t = 0; t < threads; ++t) {
                    Fiber& f = fibers[t];
                    f.idx = dim3{unsigned(t % block[0]), unsigned((t / block[0]) % block[1]),
                                 unsigned(t / (size_t(block[0]) * block[1]))};
                    if (!init_fiber(f, stacks.get() + t * kStack)) {
                        status = -1;
                        break;
                    }
                }
                // One round per barrier phase, until every thread returned.
                bool live = status == 0;
                while (live) {
                    live = false;
                    for (Fiber& f : fibers) {
                        if (f.done) continue;
                        running = &f;
                        nq_emu::thread_idx = f.idx;
                        swapcontext(&scheduler, &f.ctx);
                        live |= !f.done;
                    }
                }
            }
    running = nullptr;
    nq_emu::dynamic_shared = nullptr;
    return status;
}
