//! The floor under `lock_acquire_release_p50_us`: against a running master
//! (`coord_floor URL [N]`), the median of N sequential unary calls of each
//! kind: `KeepAlive` (a round trip that writes nothing), `CounterGet`
//! (a read, no commit), `CounterAdd` (one durable commit each) and an
//! acquire + release pair (two commits), in µs.

use std::time::Instant;

use drover_common::pb::{self, coord_client::CoordClient};

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1).expect("usage: coord_floor URL [N]");
    let n: usize = std::env::args().nth(2).map_or(Ok(2000), |s| s.parse())?;
    let channel = drover_common::net::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut c = CoordClient::new(channel);
    let session = c
        .open_session(pb::OpenSessionRequest {
            lease_ms: 60_000,
            owner: "floor".into(),
        })
        .await?
        .into_inner()
        .session;
    let (mut keep, mut get, mut add, mut lock) = (vec![], vec![], vec![], vec![]);
    for i in 0..2 * n {
        let t = Instant::now();
        c.keep_alive(pb::KeepAliveRequest { session }).await?;
        let t1 = Instant::now();
        c.counter_get(pb::CounterGetRequest {
            name: "floor".into(),
        })
        .await?;
        let t2 = Instant::now();
        c.counter_add(pb::CounterAddRequest {
            name: "floor".into(),
            delta: 1,
        })
        .await?;
        let t3 = Instant::now();
        let token = c
            .acquire(pb::AcquireRequest {
                name: "floor".into(),
                permits: 1,
                session,
                timeout_ms: Some(10_000),
            })
            .await?
            .into_inner()
            .fencing_token;
        c.release(pb::ReleaseRequest {
            name: "floor".into(),
            fencing_token: token,
            session,
        })
        .await?;
        let t4 = Instant::now();
        if i >= n {
            let us = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e6;
            keep.push(us(t, t1));
            get.push(us(t1, t2));
            add.push(us(t2, t3));
            lock.push(us(t3, t4));
        }
    }
    println!(
        "p50 us over {n}: keep_alive {:.0}  counter_get {:.0}  counter_add {:.0}  acquire+release {:.0}",
        p50(keep),
        p50(get),
        p50(add),
        p50(lock)
    );
    Ok(())
}
