use clap::Parser;

/// mimalloc instead of glibc's allocator: on the request path, with the
/// runtime's threads allocating and freeing across each other, glibc's arena
/// locks and chunk consolidation cost about 6 µs per limited cache hit on 2
/// cores (a profile in `docs/benchmarks.md`, "Cache hits with tenant limits on").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    quiet_on_closed_stdout();
    let cli = recache::cli::Cli::parse();
    // The local embedding model asks rayon for its thread count on every matrix product
    // (candle's reference network, and the f32 encoder for long prompts); with this set it
    // reads a variable instead of probing cgroups each time (measured on candle: 8.9 ->
    // 6.7 ms per short embedding on 2 cores). Set before any thread starts.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
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

/// `recache … | head` closes stdout early: the next line printed would panic
/// with a backtrace. Exit quietly instead, as Unix tools do on SIGPIPE (status
/// 141); every other panic is reported as before.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
