//! Development probe (not part of the product): weighted reconstruction
//! error of every method on one block of a real model, with real statistics.
//!
//! cargo run --release -p nq-host --example admm_probe -- MODEL CALIB BLOCK ITERS...
use nq_host::model::backward::LinearId;
use nq_host::quant::calib::{sample_windows, tokenize_files, CalibOptions};
use nq_host::quant::factor::{quantize_linear, rank_for_bpw, AdmmOptions, Method};
use nq_host::quant::stats::{collect, StatsOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let loaded = nq_host::source::load(args[1].as_ref())?;
    let w = &loaded.weights;
    let tok = loaded.tokenizer.as_ref().unwrap();
    let ids = tokenize_files(tok, &[&args[2]])?;
    let wins = sample_windows(
        &ids,
        &CalibOptions {
            windows: 4,
            len: 256,
            seed: 0,
        },
    )?;
    let stats = collect(w, &wins, &StatsOptions::default(), |_, _| {})?;
    let block: usize = args[3].parse()?;
    let bpw: f64 = std::env::var("BPW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    for id in LinearId::ALL {
        let wt = id.weight(&w.layers[block]);
        let e = stats.get(block, id);
        let r = rank_for_bpw(wt.rows, wt.cols, bpw, 32)?;
        let mut line = format!("{:<12} r={r:<4}", id.name());
        for m in [Method::SvdSign, Method::Sign, Method::ArbRc] {
            let q = quantize_linear(wt, None, e, m, r, &AdmmOptions::default())?;
            line += &format!(" {m:?}={:.3}", q.weighted_rel_error);
        }
        for it in &args[4..] {
            let o = AdmmOptions {
                iters: it.parse()?,
                ..AdmmOptions::default()
            };
            let q = quantize_linear(wt, None, e, Method::NanoQuant, r, &o)?;
            line += &format!(" nq{it}={:.3}", q.weighted_rel_error);
        }
        println!("{line}");
    }
    Ok(())
}
