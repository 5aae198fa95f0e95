//! Compiles nq-cuda's kernel sources as C++ behind the CUDA emulation
//! header (`src/cuda_emu.h`).

fn main() {
    let kernels = "../nq-cuda/kernels";
    println!("cargo:rerun-if-changed={kernels}");
    println!("cargo:rerun-if-changed=src/cuda_emu.h");
    println!("cargo:rerun-if-changed=src/emu.cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file("src/emu.cpp")
        .include(kernels)
        .include("src")
        .opt_level(2)
        // The GPU rounds each f32 operation on its own unless it fuses
        // a·b + c; the emulation never fuses, which is the CPU backend's
        // arithmetic.
        .flag("-ffp-contract=off")
        .flag("-pthread")
        .flag_if_supported("-Wno-unknown-pragmas")
        .warnings(true)
        .compile("nq_cuda_emu");
}
