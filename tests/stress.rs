//! Lifecycle under stress: sources and layers created and dropped while requests are in
//! flight, and callers cancelled at every point of the fetch path.

mod common;

use std::time::Duration;

use common::*;
use entur_auth::EnturAuthLayer;
use entur_auth::Invalidation;
use entur_auth_test::Fault;
use http::{Request, StatusCode};
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn no_task_outlives_its_last_handle_and_no_request_hangs() {
    let server = server(Duration::from_secs(5)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let mut requests = tokio::task::JoinSet::new();
    let mut rng = fastrand::Rng::with_seed(5);
    for round in 0..40u64 {
        if round % 3 == 0 {
            server.push_fault(Fault::Delay(Duration::from_millis(rng.u64(1..50))));
        }
        let source = server.source_builder().jitter_seed(round).build().unwrap();
        let slow_api = {
            let api = server.api_service();
            let pause = Duration::from_millis(rng.u64(0..20));
            tower::service_fn(move |req: Request<Body>| {
                let api = api.clone();
                async move {
                    tokio::time::sleep(pause).await;
                    api.oneshot(req).await
                }
            })
        };
        let svc = EnturAuthLayer::new(source.clone()).layer(slow_api);
        for i in 0..25 {
            let svc = svc.clone();
            let req = api_request(&server, &format!("/{round}/{i}"));
            let give_up = Duration::from_millis(rng.u64(1..120));
            requests.spawn(async move {
                // Some callers give up (dropping their future mid-flight), the rest finish.
                match tokio::time::timeout(give_up, svc.oneshot(req)).await {
                    Ok(result) => Some(result.expect("no request fails").status()),
                    Err(_) => None,
                }
            });
        }
        // Drop the source and the layer while requests are in flight, at random moments.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..30))).await;
        drop((source, svc));
        if round % 7 == 0 {
            requests.abort_all();
        }
    }
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        let mut ok = 0;
        while let Some(done) = requests.join_next().await {
            match done {
                Ok(Some(status)) => {
                    assert_eq!(status, StatusCode::OK);
                    ok += 1;
                }
                Ok(None) => {}
                Err(e) => assert!(e.is_cancelled()),
            }
        }
        ok
    })
    .await
    .expect("no request hangs");
    assert!(finished > 100, "{finished} requests completed");
    settle().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline,
        "every background task ended with its last handle"
    );
    assert_eq!(server.api_rejections(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelling_callers_at_every_point_of_the_fetch_leaves_the_source_usable() {
    // The fetch takes 200 ms; a caller is cancelled before it starts, while it runs, just as it
    // completes, and after. Each time, the next caller is served by that same single fetch.
    for cancel_after in [0u64, 1, 50, 100, 199, 200, 201] {
        let server = server(Duration::from_secs(3600)).await;
        server.push_fault(Fault::Delay(Duration::from_millis(200)));
        let source = source(&server);
        let mut svc = client(&server, &source);
        let first = call(&mut svc, api_request(&server, "/first")).await;
        let _ = tokio::time::timeout(Duration::from_millis(cancel_after), first).await;
        let status = send(&mut svc, api_request(&server, "/next")).await.unwrap();
        assert_eq!(status, StatusCode::OK, "cancelled after {cancel_after} ms");
        assert_eq!(
            server.token_requests(),
            1,
            "cancelled after {cancel_after} ms"
        );
        // And a waiter on `token()` itself, cancelled mid-wait.
        assert_eq!(
            source.invalidate(source.current().unwrap().id()),
            Invalidation::Started
        );
        server.push_fault(Fault::Delay(Duration::from_millis(200)));
        let _ = tokio::time::timeout(Duration::from_millis(cancel_after), source.token()).await;
        source.token().await.unwrap();
        assert_eq!(server.token_requests(), 2);
    }
}
