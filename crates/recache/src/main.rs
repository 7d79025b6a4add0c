use clap::Parser;

fn main() {
    let cli = recache::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("recache: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(recache::cli::run(cli));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}
