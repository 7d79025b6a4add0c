//! `cargo run -p recache-embed --release --example embed_bench -- MODEL_DIR`:
//! per-text latency of each network, and its agreement with the reference.
use std::time::Instant;

use recache_embed::{cosine, LocalModel, Weights};

fn main() {
    if std::env::var("PROBE").is_ok() {
        for (m, k, n, mats) in [
            (9, 384, 1536, 1),
            (9, 384, 1536, 18),
            (9, 384, 1152, 6),
            (9, 384, 384, 6),
            (9, 1536, 384, 6),
        ] {
            let us = recache_embed::kernel::probe(m, k, n, mats, 400);
            println!(
                "m={m} k={k} n={n} over {mats} matrices: {us:.1} us, {:.1} GMAC/s",
                (m * k * n) as f64 / us / 1e3
            );
        }
        return;
    }
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("MODEL_DIR"));
    let short = std::env::var("TEXT").unwrap_or_else(|_| "How do I reset my password?".into());
    let short = short.as_str();
    let long = "Please summarise the following incident report. ".repeat(22);
    let reference = LocalModel::load_weights(&dir, 256, Weights::Reference).unwrap();
    let only = std::env::var("ONLY").unwrap_or_default();
    for w in [Weights::F32, Weights::Reference, Weights::Int8] {
        if !only.is_empty() && format!("{w:?}") != only {
            continue;
        }
        let model = LocalModel::load_weights(&dir, 256, w).unwrap();
        for (label, text) in [("short", short.to_string()), ("long", long.clone())] {
            let agree = cosine(
                &model.embed(&[&text]).unwrap()[0],
                &reference.embed(&[&text]).unwrap()[0],
            );
            if std::env::var("SHORT").is_ok() && label != "short" {
                continue;
            }
            let runs = if label == "short" { 300 } else { 40 };
            let runs = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(runs);
            let mut times = Vec::new();
            for i in 0..runs {
                let t = format!("{text} {i}");
                if let Some(mb) = std::env::var("THRASH_MB").ok().and_then(|v| v.parse::<usize>().ok()) {
                    // Touch this much other memory between passes, as a gateway does.
                    let mut junk = vec![1u8; mb << 20];
                    for i in (0..junk.len()).step_by(64) {
                        junk[i] = junk[i].wrapping_add(i as u8);
                    }
                    std::hint::black_box(&junk);
                }
                if let Some(us) = std::env::var("GAP_US").ok().and_then(|v| v.parse().ok()) {
                    std::thread::sleep(std::time::Duration::from_micros(us));
                }
                let s = Instant::now();
                model.embed(&[&t]).unwrap();
                times.push(s.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "{w:?} [{}] {label} ({} tokens): p50 {:.2} ms p99 {:.2} ms; cosine to reference {agree:.6}",
                model.kernel(),
                model.token_count(&text),
                times[times.len() / 2],
                times[times.len() * 99 / 100]
            );
        }
    }
}
