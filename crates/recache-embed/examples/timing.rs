//! Where an embedding's time goes: `cargo run -p recache-embed --release --example timing -- MODEL_DIR`
fn main() {
    let dir = std::env::args().nth(1).expect("model dir");
    let int8 = std::env::args().nth(2).as_deref() == Some("q8");
    let model = recache_embed::LocalModel::load_with(std::path::Path::new(&dir), 256, int8).expect("model");
    let reference = recache_embed::LocalModel::load(std::path::Path::new(&dir), 256).expect("model");
    let probe = [
        "How do I reset my password?",
        "Explain how a hash map works, with an example in Rust.",
    ];
    for p in probe {
        let (a, b) = (&model.embed(&[p]).unwrap()[0], &reference.embed(&[p]).unwrap()[0]);
        println!("cosine to the f32 model: {:.5}  ({p})", recache_embed::cosine(a, b));
    }
    let text = "How do I reset my password?";
    for _ in 0..5 {
        let _ = model.embed(&[text]);
    }
    let n = 50;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let _ = model.token_count(text);
    }
    println!("tokenize: {:.3} ms", t.elapsed().as_secs_f64() * 1000.0 / n as f64);
    let t = std::time::Instant::now();
    for _ in 0..n {
        let _ = model.embed(&[text]);
    }
    println!("embed: {:.3} ms", t.elapsed().as_secs_f64() * 1000.0 / n as f64);
}
