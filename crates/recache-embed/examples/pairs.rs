//! Prints the cosine similarity of sentence pairs: `cargo run -p recache-embed --release --example pairs -- MODEL_DIR "a" "b" ...`
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = recache_embed::LocalModel::load(std::path::Path::new(&args[0]), 256).expect("model");
    for pair in args[1..].chunks(2) {
        let v = model.embed(&[&pair[0], &pair[1]]).expect("embed");
        println!("{:.4}  {} | {}", recache_embed::cosine(&v[0], &v[1]), pair[0], pair[1]);
    }
}
