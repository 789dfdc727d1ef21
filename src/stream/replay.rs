//! Replay of a recorded answer: the recorded pieces as separate body frames, at once or
//! at the pace they originally arrived.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};
use crate::config::ReplayPace;

pub fn replay_body(chunks: Vec<(Bytes, u32)>, pace: ReplayPace) -> Body {
    let start = tokio::time::Instant::now();
    let frames = futures_util::stream::unfold(chunks.into_iter(), move |mut it| async move {
        let (data, ms) = it.next()?;
        if pace == ReplayPace::Recorded {
            tokio::time::sleep_until(start + Duration::from_millis(u64::from(ms))).await;
        }
        Some((Ok::<_, BoxError>(http_body::Frame::data(data)), it))
    });
    http_body_util::StreamBody::new(frames).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn recorded_pace_waits_and_instant_does_not() {
        let chunks = vec![
            (Bytes::from_static(b"a"), 0),
            (Bytes::from_static(b"b"), 500),
        ];
        let t0 = tokio::time::Instant::now();
        let got = replay_body(chunks.clone(), ReplayPace::Recorded)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&got[..], b"ab");
        assert!(t0.elapsed() >= Duration::from_millis(500));
        let t1 = tokio::time::Instant::now();
        let got = replay_body(chunks, ReplayPace::Instant)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&got[..], b"ab");
        assert!(t1.elapsed() < Duration::from_millis(500));
    }
}
