//! Tests of single-flight: joining, reading live, releases, failures and the bound.

use http_body_util::BodyExt;

use super::*;

fn key() -> CacheKey {
    CacheKey([7; 32])
}

fn head() -> Head {
    Head {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        stream: true,
    }
}

const ROOMY: Bounds = Bounds {
    max_entry: 1 << 20,
    window: 1 << 20,
};

fn flights(bounds: Bounds) -> Arc<Flights> {
    Arc::new(Flights::new(bounds))
}

#[tokio::test]
async fn second_join_follows_and_reads_everything_live() {
    let flights = flights(ROOMY);
    let Role::Leader(leader) = flights.join(key()) else {
        panic!("first join must lead")
    };
    leader.flight.set_head(head());
    leader.flight.push(Bytes::from_static(b"one ")).await;
    let Role::Follower(f) = flights.join(key()) else {
        panic!("second join must follow")
    };
    let reader = tokio::spawn(f.reader().unwrap().into_body(true).collect());
    leader.flight.push(Bytes::from_static(b"two")).await;
    leader.finish(End::Complete);
    let got = reader.await.unwrap().unwrap().to_bytes();
    assert_eq!(&got[..], b"one two");
    assert_eq!(flights.in_flight(), 0);
    assert!(matches!(flights.join(key()), Role::Leader(_)));
}

#[tokio::test]
async fn dropped_leader_releases_followers() {
    let flights = flights(ROOMY);
    let Role::Leader(leader) = flights.join(key()) else {
        panic!()
    };
    let Role::Follower(f) = flights.join(key()) else {
        panic!()
    };
    let mut r = f.reader().unwrap();
    let waiting = tokio::spawn(async move { r.head().await });
    drop(leader);
    assert!(matches!(waiting.await.unwrap(), Err(End::Released)));
    assert_eq!(flights.in_flight(), 0);
}

#[tokio::test]
async fn failure_mid_stream_ends_with_an_error_frame() {
    let flight = Flight::new(ROOMY);
    let reader = flight.reader().unwrap();
    flight.set_head(head());
    flight.push(Bytes::from_static(b"data: a\n\n")).await;
    flight.finish(End::Failed(ApiError::UpstreamBroken("reset".into())));
    let got = reader.into_body(true).collect().await.unwrap().to_bytes();
    let text = String::from_utf8(got.to_vec()).unwrap();
    assert!(
        text.starts_with("data: a\n\nevent: error\ndata: {"),
        "{text}"
    );
}

#[tokio::test]
async fn a_plain_answer_that_breaks_is_a_broken_body_after_what_arrived() {
    let flight = Flight::new(ROOMY);
    let mut body = flight.reader().unwrap().into_body(false);
    flight.push(Bytes::from_static(b"{\"a\":")).await;
    flight.finish(End::Failed(ApiError::UpstreamBroken("reset".into())));
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"{\"a\":");
    assert!(body.frame().await.unwrap().is_err());
}

#[tokio::test]
async fn whole_is_had_only_once_the_answer_ends() {
    let flight = Flight::new(ROOMY);
    let mut r = flight.reader().unwrap();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let w = tokio::spawn(async move {
        let got = r.whole().await;
        let _ = tx.send(());
        got
    });
    flight.push(Bytes::from_static(b"{\"a\":")).await;
    flight.push(Bytes::from_static(b"1}")).await;
    // Both pieces are in, the end is not: the waiter must still be waiting. It has run
    // once the pushes' wake-ups were handled, which `yield_now` gives it the chance to.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(rx.try_recv().is_err(), "whole() answered before the end");
    flight.finish(End::Complete);
    match w.await.unwrap() {
        Whole::Complete(b) => assert_eq!(b.concat(), b"{\"a\":1}"),
        _ => panic!("not whole"),
    }
}

#[tokio::test]
async fn an_answer_past_the_bound_is_not_kept_and_takes_no_newcomers() {
    let bounds = Bounds {
        max_entry: 10,
        window: 8,
    };
    let flight = Flight::new(bounds);
    let mut reader = flight.reader().unwrap();
    flight.push(Bytes::from_static(b"12345678")).await;
    assert!(flight.recording().is_some());
    assert!(
        flight.reader().is_some(),
        "a newcomer can still read from the start"
    );
    // The newcomer above is gone again; the reader below has not read anything yet.
    let leader = {
        let flight = flight.clone();
        tokio::spawn(async move {
            flight.push(Bytes::from_static(b"abcd")).await;
            flight.push(Bytes::from_static(b"efgh")).await;
            flight.finish(End::Complete);
        })
    };
    let mut got = Vec::new();
    loop {
        let (more, end) = reader.next().await;
        got.extend_from_slice(&more.concat());
        if end.is_some() {
            break;
        }
    }
    leader.await.unwrap();
    assert_eq!(&got[..], b"12345678abcdefgh", "the reader got every byte");
    assert!(flight.outgrown());
    assert!(flight.recording().is_none());
    assert!(flight.reader().is_none(), "its first pieces may be gone");
    assert_eq!(flight.lock().held, 0, "nothing held once read");
}

#[tokio::test]
async fn past_the_bound_the_leader_waits_for_a_slow_reader() {
    let bounds = Bounds {
        max_entry: 4,
        window: 4,
    };
    let flight = Flight::new(bounds);
    let mut reader = flight.reader().unwrap();
    flight.push(Bytes::from_static(b"1234")).await;
    let pushed = {
        let flight = flight.clone();
        tokio::spawn(async move { flight.push(Bytes::from_static(b"5678")).await })
    };
    // 8 bytes held, 4 allowed past the bound: the push cannot return until they are read.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!pushed.is_finished(), "the leader ran ahead of its reader");
    let (got, _) = reader.next().await;
    assert_eq!(got.concat(), b"12345678");
    pushed.await.unwrap();
}
