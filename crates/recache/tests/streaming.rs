//! End-to-end tests of streaming through the gateway (SSE replay in either
//! order, clients hanging up, live fan-out of one provider stream), on the
//! embedded engines and on real ones.

mod common;

use std::time::Duration;

use common::{chat_body, Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;
use serde_json::json;

on_both_backends!(
    stream_first_then_json_replay,
    json_first_then_stream_replay_with_usage,
    client_hanging_up_mid_stream_still_stores_the_answer,
    concurrent_streaming_misses_share_one_live_stream,
);

async fn stream_first_then_json_replay(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let s = env
        .post("/v1/chat/completions", Some(KEY_A), &chat_body("stream me", true), &[])
        .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.cache(), "MISS");
    assert!(s.header("content-type").starts_with("text/event-stream"));
    let streamed = s.content();
    assert!(streamed.contains("stream me"), "{streamed}");
    // Storing happens after the stream ends: wait for it.
    env.settle().await; // polls until the store has run (no fixed sleep)
    let j = env.chat(KEY_A, "stream me").await;
    assert_eq!(j.cache(), "HIT");
    assert_eq!(j.header("content-type"), "application/json");
    let v = j.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], streamed.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // And replayed as a stream again.
    let s2 = env
        .post("/v1/chat/completions", Some(KEY_A), &chat_body("stream me", true), &[])
        .await;
    assert_eq!(s2.cache(), "HIT");
    assert_eq!(s2.content(), streamed);
    assert_eq!(env.stub.calls(), 1);
}

async fn json_first_then_stream_replay_with_usage(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let j = env.chat(KEY_A, "json first").await;
    assert_eq!(j.cache(), "MISS");
    let body = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "json first"}]});
    let s = env.post("/v1/chat/completions", Some(KEY_A), &body, &[]).await;
    assert_eq!(s.cache(), "HIT");
    assert!(s.header("content-type").starts_with("text/event-stream"));
    assert_eq!(s.content(), j.content());
    assert!(
        s.text.contains("\"usage\""),
        "include_usage adds the usage chunk: {}",
        s.text
    );
    // Completions endpoint replays too.
    let c = env
        .post(
            "/v1/completions",
            Some(KEY_A),
            &json!({"model": "gpt-4o-mini", "prompt": "say hi"}),
            &[],
        )
        .await;
    assert_eq!(c.cache(), "MISS");
    let cs = env
        .post(
            "/v1/completions",
            Some(KEY_A),
            &json!({"model": "gpt-4o-mini", "prompt": "say hi", "stream": true}),
            &[],
        )
        .await;
    assert_eq!(cs.cache(), "HIT");
    let text: String = cs
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(text, c.json()["choices"][0]["text"].as_str().unwrap());
    assert!(cs.text.trim_end().ends_with("data: [DONE]"));
}

async fn client_hanging_up_mid_stream_still_stores_the_answer(b: Backends) {
    let env = Env::on(
        b,
        StubConfig {
            chunk_delay_ms: 50,
            ..Default::default()
        },
        "",
    )
    .await;
    let resp = env
        .http
        .post(format!("{}/v1/chat/completions", env.base))
        .bearer_auth(KEY_A)
        .json(&chat_body("hang up", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-recache-status"], "MISS");
    drop(resp); // the client goes away after the headers
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = env.chat(KEY_A, "hang up").await;
    assert_eq!(
        again.cache(),
        "HIT",
        "the paid-for answer was read to the end and stored"
    );
    assert_eq!(env.stub.calls(), 1);
}

/// Identical streaming misses share one provider stream, played live: a
/// client that joins mid-stream gets what was already sent at once, then the
/// live tail, so its first token comes long before the stream ends (judged
/// against the stub's pacing: frames still to come, not a wall-clock bound).
async fn concurrent_streaming_misses_share_one_live_stream(b: Backends) {
    use futures_util::StreamExt;
    use std::time::Instant;
    const PACE_MS: u64 = 100;
    let answer = "one two three four five six seven eight nine ten eleven twelve";
    let env = std::sync::Arc::new(
        Env::on(
            b,
            StubConfig {
                chunk_delay_ms: PACE_MS,
                fixed_answer: Some(answer.into()),
                ..Default::default()
            },
            "",
        )
        .await,
    );
    let frames = |b: &[u8]| String::from_utf8_lossy(b).matches("data:").count();
    let send = |stream: bool| {
        let env = env.clone();
        async move {
            env.http
                .post(format!("{}/v1/chat/completions", env.base))
                .bearer_auth(KEY_A)
                .json(&chat_body("live fan-out", stream))
                .send()
                .await
                .unwrap()
        }
    };
    let t0 = Instant::now();
    let leader = send(true).await;
    assert_eq!(leader.headers()["x-recache-status"], "MISS");
    assert!(leader.headers().get("x-recache-coalesced").is_none());
    let mut leader_body = leader.bytes_stream();
    // (arrival time, frames received so far) for every chunk the leader reads.
    let mut arrivals: Vec<(std::time::Duration, usize)> = Vec::new();
    let mut got = Vec::new();
    while frames(&got) < 3 {
        got.extend_from_slice(&leader_body.next().await.expect("the stream goes on").unwrap());
        arrivals.push((t0.elapsed(), frames(&got)));
    }
    // Four streaming clients and one JSON client join mid-stream.
    let followers: Vec<_> = (0..4)
        .map(|_| {
            let req = send(true);
            tokio::spawn(async move {
                let r = req.await;
                let headers = r.headers().clone();
                let (mut first, mut body) = (None, Vec::new());
                let mut s = r.bytes_stream();
                while let Some(c) = s.next().await {
                    first.get_or_insert(t0.elapsed());
                    body.extend_from_slice(&c.unwrap());
                }
                (headers, first.expect("a first byte"), body)
            })
        })
        .collect();
    let json_client = tokio::spawn(send(false));
    while let Some(c) = leader_body.next().await {
        got.extend_from_slice(&c.unwrap());
        arrivals.push((t0.elapsed(), frames(&got)));
    }
    let total = frames(&got);
    assert_eq!(
        total,
        15,
        "role, 12 words, stop, [DONE]: {}",
        String::from_utf8_lossy(&got)
    );
    for f in followers {
        let (headers, first, body) = f.await.unwrap();
        assert_eq!(headers["x-recache-status"], "MISS");
        assert_eq!(headers["x-recache-coalesced"], "true");
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(body, got, "the same stream, byte for byte, from its first frame");
        // Frames the leader had when this client's first byte arrived.
        let leader_had = arrivals
            .iter()
            .filter(|(t, _)| *t <= first)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        assert!(
            total - leader_had >= 5,
            "a joiner's first token came while the stream was live ({leader_had} of {total} frames sent, {PACE_MS} ms apart)"
        );
    }
    let json = json_client.await.unwrap();
    assert_eq!(json.headers()["x-recache-coalesced"], "true");
    let v: serde_json::Value = json.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"], answer,
        "a JSON client gets the assembled answer"
    );
    assert_eq!(env.stub.calls(), 1, "one provider stream for six clients");
    env.settle().await;
    assert_eq!(env.chat(KEY_A, "live fan-out").await.cache(), "HIT");
}

/// A provider call whose connection closes before any response (the provider
/// dropping an idle keep-alive connection as the call goes out) is sent again
/// on a new connection, `[[upstreams]] connection_retries` times (default 1);
/// past that the client gets a 502. A front on loopback closes the first
/// connections it accepts unanswered and relays the others to the stub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_connection_closes_unanswered_is_sent_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};
    use tokio::io::AsyncReadExt;
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_url = format!("http://{}/v1", front.local_addr().unwrap());
    let target: Arc<OnceLock<String>> = Arc::default();
    let to_close = Arc::new(AtomicUsize::new(0));
    let (t, close) = (target.clone(), to_close.clone());
    tokio::spawn(async move {
        while let Ok((mut c, _)) = front.accept().await {
            let closing = close
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let t = t.clone();
            tokio::spawn(async move {
                if closing {
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = c.read(&mut buf).await;
                    return; // dropped unanswered
                }
                let mut up = tokio::net::TcpStream::connect(t.get().unwrap()).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
            });
        }
    });
    let vars = [("RECACHE_UPSTREAMS__0__BASE_URL", front_url.as_str())];
    let mut env = Env::on_with(Backends::Embedded, StubConfig::default(), "", &vars).await;
    let stub = env.stub_url.trim_start_matches("http://").trim_end_matches("/v1");
    target.set(stub.to_string()).unwrap();
    let retries = "upstream_connection_retries_total{upstream=\"stub\"}";

    to_close.store(1, Ordering::SeqCst);
    let r = env.chat(KEY_A, "sent again").await;
    assert_eq!((r.status, r.cache()), (200, "MISS"), "{}", r.text);
    assert_eq!(env.stub.calls(), 1, "one call reached the provider");
    assert_eq!(env.metric(retries).await, 1.0);
    env.settle().await;
    assert_eq!(env.chat(KEY_A, "sent again").await.cache(), "HIT");

    // Two closes in a row: one retry is not enough, and the client is told. (A
    // restart first: its pool holds no connection kept alive from the first call.)
    let before = env.metric(retries).await;
    env.restart().await;
    assert_eq!(
        env.metric(retries).await,
        0.0,
        "a new process counts from 0 ({before} before)"
    );
    to_close.store(2, Ordering::SeqCst);
    let r = env.chat(KEY_A, "closed twice").await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert!(r.text.contains("stub"), "the error names the upstream: {}", r.text);
    assert_eq!(env.metric(retries).await, 1.0);
    assert_eq!(env.stub.calls(), 1);
}
