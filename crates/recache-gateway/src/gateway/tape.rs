//! The recording of a streaming provider answer, played live to every client
//! of the flight. The flight appends the provider's bytes as they arrive; a
//! client that starts playing (the one that began the flight, or one that
//! joins it mid-stream) gets every chunk recorded so far, then the live tail.
//! So the first token reaches a coalesced client when it reaches the first
//! one, and a slow client never slows the provider read (the tape holds the
//! answer, which the flight assembles and stores anyway).

use std::sync::Mutex;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// No answer yet.
    Waiting,
    /// The provider is streaming.
    Live,
    /// The stream ended: complete (every byte recorded) or not (cut short,
    /// or no stream at all: an error, a non-2xx, a plain JSON answer).
    Ended { complete: bool },
}

struct State {
    phase: Phase,
    content_type: Option<String>,
    chunks: Vec<Bytes>,
}

pub struct Tape {
    /// The transport options of the request that started the flight: only a
    /// client asking for the same stream plays it (others get the assembled
    /// answer, rendered for them).
    pub include_usage: bool,
    state: Mutex<State>,
    /// Bumped on every change; players wait on it.
    changed: watch::Sender<()>,
}

impl Tape {
    pub fn new(include_usage: bool) -> Self {
        Self {
            include_usage,
            state: Mutex::new(State {
                phase: Phase::Waiting,
                content_type: None,
                chunks: Vec::new(),
            }),
            changed: watch::channel(()).0,
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_replace(());
    }

    /// The provider started streaming.
    pub fn start(&self, content_type: &str) {
        self.update(|s| {
            if s.phase == Phase::Waiting {
                s.phase = Phase::Live;
                s.content_type = Some(content_type.to_string());
            }
        });
    }

    pub fn push(&self, chunk: Bytes) {
        self.update(|s| {
            if s.phase == Phase::Live {
                s.chunks.push(chunk);
            }
        });
    }

    /// The stream is over. Idempotent: the first end counts.
    pub fn end(&self, complete: bool) {
        self.update(|s| {
            if !matches!(s.phase, Phase::Ended { .. }) {
                let complete = complete && s.phase == Phase::Live;
                s.phase = Phase::Ended { complete };
            }
        });
    }

    /// Waits until the stream starts: its content type, or `None` when there
    /// is no stream to play (the flight ended without one, or the stream was
    /// cut short before this client started): the caller renders the
    /// flight's outcome instead.
    pub(crate) async fn wait_start(&self) -> Option<String> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                match s.phase {
                    Phase::Waiting => {}
                    Phase::Live | Phase::Ended { complete: true } => return s.content_type.clone(),
                    Phase::Ended { complete: false } => return None,
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Plays the tape from its first byte: what is recorded, then the live
    /// tail, until the stream ends (a stream cut short ends here too, as the
    /// provider's did).
    pub(crate) fn play(
        self: std::sync::Arc<Self>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let rx = self.changed.subscribe();
        futures_util::stream::unfold((self, rx, 0usize), |(tape, mut rx, pos)| async move {
            loop {
                let next = {
                    let s = tape.state.lock().unwrap_or_else(|e| e.into_inner());
                    match s.chunks.get(pos) {
                        Some(c) => Some(c.clone()),
                        None if matches!(s.phase, Phase::Ended { .. }) => return None,
                        None => None,
                    }
                };
                if let Some(c) = next {
                    return Some((Ok(c), (tape, rx, pos + 1)));
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_late_player_gets_the_recorded_part_then_the_live_tail() {
        let tape = Arc::new(Tape::new(false));
        let early = tokio::spawn(tape.clone().play().map(|c| c.unwrap()).collect::<Vec<_>>());
        tape.start("text/event-stream");
        tape.push(Bytes::from_static(b"a"));
        tape.push(Bytes::from_static(b"b"));
        assert_eq!(tape.wait_start().await.as_deref(), Some("text/event-stream"));
        let mut late = Box::pin(tape.clone().play());
        assert_eq!(late.next().await.unwrap().unwrap(), "a");
        assert_eq!(late.next().await.unwrap().unwrap(), "b");
        let tail = tokio::spawn(async move { late.next().await.map(|c| c.unwrap()) });
        tokio::task::yield_now().await;
        tape.push(Bytes::from_static(b"c"));
        assert_eq!(tail.await.unwrap().unwrap(), "c", "the live tail");
        tape.end(true);
        assert_eq!(early.await.unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            tape.wait_start().await.as_deref(),
            Some("text/event-stream"),
            "replayable when complete"
        );
    }

    #[tokio::test]
    async fn no_stream_or_a_broken_one_sends_players_to_the_outcome() {
        let none = Tape::new(false);
        none.end(true);
        assert_eq!(none.wait_start().await, None, "ended before it started");
        let cut = Tape::new(false);
        cut.start("text/event-stream");
        cut.push(Bytes::from_static(b"a"));
        cut.end(false);
        assert_eq!(cut.wait_start().await, None, "cut short");
    }
}
