//! Development probe (not part of the product): block reconstruction on the
//! first blocks of a real model, ADMM-only vs trained, printing the
//! importance-weighted relative output error of each block.
//!
//! cargo run --release -p nq-host --example recon_probe -- MODEL CALIB BLOCKS
//!   env: WINDOWS LEN ITERS COMP STE LR_COMP LR_LAT LR_SCALE
use nq_host::model::forward::{block_forward, embed, RopeTable};
use nq_host::quant::calib::{sample_windows, tokenize_files, CalibOptions};
use nq_host::quant::factor::{AdmmOptions, Method};
use nq_host::quant::pipeline::QuantizeOptions;
use nq_host::quant::recon::{reconstruct_block, ReconOptions};
use nq_host::quant::stats::{collect, StatsOptions};

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let loaded = nq_host::source::load(args[1].as_ref())?;
    let w = &loaded.weights;
    let tok = loaded.tokenizer.as_ref().unwrap();
    let ids = tokenize_files(tok, &[&args[2]])?;
    let opts = CalibOptions {
        windows: env("WINDOWS", 8),
        len: env("LEN", 256),
        seed: 0,
    };
    let wins = sample_windows(&ids, &opts)?;
    let stats = collect(w, &wins, &StatsOptions::default(), |_, _| {})?;
    let blocks: usize = args[3].parse()?;
    let t = opts.len;
    let q = QuantizeOptions {
        method: Method::NanoQuant,
        bpw: env("BPW", 1.0),
        rank_multiple: 32,
        admm: AdmmOptions {
            iters: env("ITERS", 50),
            ..AdmmOptions::default()
        },
        compute: nq_host::backend::Compute::Cpu,
    };
    let trained = ReconOptions {
        comp_epochs: env("COMP", 1),
        ste_epochs: env("STE", 1),
        comp_lr: env("LR_COMP", 1e-4),
        latent_lr: env("LR_LAT", 1e-4),
        scale_lr: env("LR_SCALE", 1e-4),
        weight_decay: 0.0,
    };
    let none = ReconOptions {
        comp_epochs: 0,
        ste_epochs: 0,
        ..trained
    };
    let rope = RopeTable::new(w.config.head_dim as usize, w.config.rope_theta, t);
    for (name, r) in [("admm-only", none), ("trained", trained)] {
        let mut x_fp: Vec<Vec<f32>> = wins.iter().map(|x| embed(w, x).unwrap()).collect();
        let mut x_q = x_fp.clone();
        let start = std::time::Instant::now();
        for b in 0..blocks {
            let ys: Vec<Vec<f32>> = x_fp
                .iter()
                .map(|x| {
                    let mut y = x.clone();
                    block_forward(&w.layers[b], &w.config, &rope, &mut y, t, None);
                    y
                })
                .collect();
            let mut student = w.layers[b].clone();
            let (_, _, br) =
                reconstruct_block(b, w, &mut student, &stats, &x_q, &ys, t, &q, &r, &|_| {})?;
            for x in &mut x_q {
                block_forward(&student, &w.config, &rope, x, t, None);
            }
            x_fp = ys;
            println!(
                "{name:<10} block {b}: rel output error {:.4} ({:.1} s)",
                br.rel_output_error, br.seconds
            );
        }
        println!("{name}: {:.1} s", start.elapsed().as_secs_f64());
    }
    Ok(())
}
