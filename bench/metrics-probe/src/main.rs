//! Per-request metric recording: recache's atomics vs prometheus-client 0.26
//! (Family<labels, Histogram> + Counter), 1 and 2 threads.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram as PcHistogram;

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 17],
    count: AtomicU64,
    sum_micros: AtomicU64,
}
impl Histogram {
    fn observe(&self, secs: f64) {
        let i = BUCKETS.partition_point(|b| *b < secs);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }
}
#[derive(Default)]
struct Ours {
    hits: AtomicU64,
    latency: RwLock<BTreeMap<(u16, &'static str), Histogram>>,
}
impl Ours {
    fn record(&self, status: u16, cache: &'static str, secs: f64) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        {
            let m = self.latency.read().unwrap();
            if let Some(h) = m.get(&(status, cache)) {
                h.observe(secs);
                return;
            }
        }
        self.latency
            .write()
            .unwrap()
            .entry((status, cache))
            .or_default()
            .observe(secs);
    }
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    status: u16,
    cache: &'static str,
}
struct Theirs {
    hits: Counter,
    latency: Family<Labels, PcHistogram>,
}

fn run<F: Fn(u64) + Sync + Send + 'static>(threads: usize, n: u64, f: Arc<F>) -> f64 {
    let t = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    f(i)
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    t.elapsed().as_nanos() as f64 / (n as f64 * threads as f64)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("sample") {
        print!("{}", openmetrics_sample());
        return;
    }
    let n = 5_000_000;
    for threads in [1, 2] {
        for round in 0..3 {
            let ours = Arc::new(Ours::default());
            let o = ours.clone();
            let a = run(
                threads,
                n,
                Arc::new(move |i| o.record(200, "HIT", 0.0003 + (i % 7) as f64 * 1e-4)),
            );
            let theirs = Arc::new(Theirs {
                hits: Counter::default(),
                latency: Family::new_with_constructor(|| PcHistogram::new(BUCKETS.iter().copied())),
            });
            let t = theirs.clone();
            let b = run(
                threads,
                n,
                Arc::new(move |i| {
                    t.hits.inc();
                    t.latency
                        .get_or_create(&Labels {
                            status: 200,
                            cache: "HIT",
                        })
                        .observe(0.0003 + (i % 7) as f64 * 1e-4);
                }),
            );
            println!("threads {threads} round {round}: recache atomics {a:.1} ns/request, prometheus-client {b:.1} ns/request");
        }
    }
}

#[allow(dead_code)]
pub fn openmetrics_sample() -> String {
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    let mut r = Registry::default();
    let c: Counter = Counter::default();
    c.inc();
    r.register("cache_hits", "Requests answered from the cache.", c);
    let g: Gauge = Gauge::default();
    g.set(3);
    r.register("cache_index_entries", "Entries in the index.", g);
    let f = Family::<Labels, PcHistogram>::new_with_constructor(|| PcHistogram::new(BUCKETS.iter().copied()));
    f.get_or_create(&Labels {
        status: 200,
        cache: "HIT",
    })
    .observe(0.001);
    r.register("recache_request_duration_seconds", "Gateway request latency.", f);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
    out
}
