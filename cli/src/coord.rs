//! The commands over the `Coord` service: `kv`, `counter`, `lock`, `event`
//! and `barrier`.
//!
//! `lock` holds a lease while its command runs: it opens a session,
//! renews it every third of the lease, and, should the lease be lost (the
//! master said the session expired, or it could not be renewed before its
//! end), kills the command and fails rather than let it run unprotected.
//!
//! Given several masters, each command's calls go to the first that
//! answers ([`Masters::call`]): reads, puts, sets and events go on to the
//! next master whenever one is unavailable; adds, compare-and-sets,
//! deletes, barriers and the lock's session only when no master applied
//! them. A lock's session and grant are in the store: its renewals and
//! release go to whichever master leads ([`lock`]).

use std::time::Duration;

use clap::Subcommand;
use drover_common::net::{self, AuthChannel};
use drover_common::pb::{self, coord_client::CoordClient};
use drover_common::util::parse_duration;
use futures::StreamExt;
use serde_json::json;

use crate::client::status_error;
use crate::masters::{Masters, Resend};
use crate::output::Format;

/// `drover kv ...`
#[derive(Debug, Subcommand)]
pub(crate) enum KvCommand {
    /// Prints a key's value (exit 1 if it is not set).
    Get {
        /// The key.
        key: String,
    },
    /// Sets a key; prints its new version.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Deletes a key.
    Del {
        /// The key.
        key: String,
    },
    /// Sets a key only if its version is VERSION (0: only if it is not
    /// set); exit 2 if it was not.
    Cas {
        /// The key.
        key: String,
        /// The version the key must have.
        version: u64,
        /// The new value.
        value: String,
    },
    /// Lists keys with a prefix: key, version, value.
    List {
        /// The prefix; all keys without one.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Prints changes to a key (or keys with a prefix) as they happen.
    Watch {
        /// The key, or the prefix with --prefix.
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
    },
}

/// `drover counter ...`
#[derive(Debug, Subcommand)]
pub(crate) enum CounterCommand {
    /// Adds to a counter; prints the new value.
    Add {
        /// The counter.
        name: String,
        /// What to add (may be negative).
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
    /// Prints a counter (0 if never set).
    Get {
        /// The counter.
        name: String,
    },
    /// Sets a counter.
    Set {
        /// The counter.
        name: String,
        /// Its new value.
        #[arg(allow_negative_numbers = true)]
        value: i64,
    },
}

/// `drover event ...`
#[derive(Debug, Subcommand)]
pub(crate) enum EventCommand {
    /// Sets an event, waking its waiters.
    Set {
        /// The event.
        name: String,
    },
    /// Clears an event.
    Clear {
        /// The event.
        name: String,
    },
    /// Waits until an event is set (exit 2 on timeout).
    Wait {
        /// The event.
        name: String,
        /// Give up after this long.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
}

/// `drover lock ...`
#[derive(Debug, clap::Args)]
pub(crate) struct LockCommand {
    /// The lock (or semaphore) name.
    name: String,
    /// The semaphore's size: how many may hold it at once.
    #[arg(long, default_value_t = 1)]
    permits: u32,
    /// Give up (exit 1) if not acquired within this long.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// The lease: if the master does not hear from this command for this
    /// long, the lock is released (and the command is killed here).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lease: Duration,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `drover barrier ...`
#[derive(Debug, clap::Args)]
pub(crate) struct BarrierCommand {
    /// The barrier name.
    name: String,
    /// How many parties it waits for.
    #[arg(long)]
    parties: u32,
    /// Give up after this long (the barrier breaks for every party).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

/// A `Coord` client on `channel`.
fn client(channel: AuthChannel) -> CoordClient<AuthChannel> {
    CoordClient::new(channel)
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES)
}

/// Makes one call, `f` with `req`, on the current master, and on the next
/// ones while `resend` allows ([`Masters::call`]); its reply's message, or
/// the error for a person.
async fn call<Q, T, F, Fut>(masters: &Masters, resend: Resend, req: Q, f: F) -> anyhow::Result<T>
where
    Q: Clone,
    F: Fn(CoordClient<AuthChannel>, Q) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    masters
        .call(resend, |channel| f(client(channel), req.clone()))
        .await
        .map(tonic::Response::into_inner)
        .map_err(status_error)
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_millis() as u64)
}

/// Runs `drover kv ...`.
pub(crate) async fn kv(masters: &Masters, format: Format, cmd: KvCommand) -> anyhow::Result<i32> {
    match cmd {
        KvCommand::Get { key } => {
            let req = pb::KvGetRequest { key: key.clone() };
            let resp = call(masters, Resend::Safe, req, |mut c, r| async move {
                c.kv_get(r).await
            })
            .await?;
            let Some(e) = resp.entry else {
                anyhow::bail!("key {key:?} is not set");
            };
            match format {
                Format::Json => println!(
                    "{}",
                    json!({"key": e.key, "value": text(&e.value), "version": e.version})
                ),
                Format::Text => println!("{}", text(&e.value)),
            }
            Ok(0)
        }
        KvCommand::Put { key, value } => {
            let r = put(masters, key, value, None).await?;
            print_version(format, &r);
            Ok(0)
        }
        KvCommand::Cas {
            key,
            version,
            value,
        } => {
            let r = put(masters, key.clone(), value, Some(version)).await?;
            print_version(format, &r);
            if !r.applied {
                eprintln!(
                    "drover: {key:?} is at version {}, not {version}: nothing written",
                    r.version
                );
                return Ok(2);
            }
            Ok(0)
        }
        KvCommand::Del { key } => {
            let req = pb::KvDeleteRequest {
                key,
                expected_version: None,
            };
            // Sent twice, a delete would say "not set" of what it deleted.
            let r = call(masters, Resend::Unapplied, req, |mut c, r| async move {
                c.kv_delete(r).await
            })
            .await?;
            match format {
                Format::Json => println!("{}", json!({"deleted": r.deleted})),
                Format::Text => println!("{}", if r.deleted { "deleted" } else { "not set" }),
            }
            Ok(0)
        }
        KvCommand::List { prefix } => {
            let mut start_after = String::new();
            loop {
                let req = pb::KvListRequest {
                    prefix: prefix.clone(),
                    start_after: start_after.clone(),
                    limit: 0,
                };
                let page = call(masters, Resend::Safe, req, |mut c, r| async move {
                    c.kv_list(r).await
                })
                .await?;
                for e in &page.entries {
                    match format {
                        Format::Json => println!(
                            "{}",
                            json!({"key": e.key, "value": text(&e.value), "version": e.version})
                        ),
                        Format::Text => println!("{}\t{}\t{}", e.key, e.version, text(&e.value)),
                    }
                }
                match page.entries.last() {
                    Some(last) if page.more => start_after = last.key.clone(),
                    _ => return Ok(0),
                }
            }
        }
        KvCommand::Watch { key, prefix } => {
            let req = pb::KvWatchRequest { key, prefix };
            let mut stream = call(masters, Resend::Safe, req, |mut c, r| async move {
                c.kv_watch(r).await
            })
            .await?;
            while let Some(e) = stream.next().await {
                let e = e.map_err(status_error)?;
                match format {
                    Format::Json => println!(
                        "{}",
                        json!({"key": e.key, "value": text(&e.value), "version": e.version, "deleted": e.deleted})
                    ),
                    Format::Text if e.deleted => println!("del\t{}\t{}", e.key, e.version),
                    Format::Text => {
                        println!("put\t{}\t{}\t{}", e.key, e.version, text(&e.value))
                    }
                }
            }
            Ok(0)
        }
    }
}

/// A put, or with `expected_version` a compare-and-set: only the put goes
/// on to another master whenever one is unavailable (a second put writes
/// the same value; a second compare-and-set would fail on the version the
/// first wrote).
async fn put(
    masters: &Masters,
    key: String,
    value: String,
    expected_version: Option<u64>,
) -> anyhow::Result<pb::KvPutResponse> {
    let resend = match expected_version {
        None => Resend::Safe,
        Some(_) => Resend::Unapplied,
    };
    let req = pb::KvPutRequest {
        key,
        value: value.into_bytes(),
        expected_version,
    };
    call(
        masters,
        resend,
        req,
        |mut c, r| async move { c.kv_put(r).await },
    )
    .await
}

fn print_version(format: Format, r: &pb::KvPutResponse) {
    match format {
        Format::Json => println!("{}", json!({"applied": r.applied, "version": r.version})),
        Format::Text => println!("version {}", r.version),
    }
}

/// Runs `drover counter ...`.
pub(crate) async fn counter(
    masters: &Masters,
    format: Format,
    cmd: CounterCommand,
) -> anyhow::Result<i32> {
    let resp = match cmd {
        // Sent twice, an add would count twice.
        CounterCommand::Add { name, delta } => {
            let req = pb::CounterAddRequest { name, delta };
            call(masters, Resend::Unapplied, req, |mut c, r| async move {
                c.counter_add(r).await
            })
            .await
        }
        CounterCommand::Get { name } => {
            let req = pb::CounterGetRequest { name };
            call(masters, Resend::Safe, req, |mut c, r| async move {
                c.counter_get(r).await
            })
            .await
        }
        CounterCommand::Set { name, value } => {
            let req = pb::CounterSetRequest { name, value };
            call(masters, Resend::Safe, req, |mut c, r| async move {
                c.counter_set(r).await
            })
            .await
        }
    }?;
    match format {
        Format::Json => println!("{}", json!({"value": resp.value})),
        Format::Text => println!("{}", resp.value),
    }
    Ok(0)
}

/// Runs `drover event ...`.
pub(crate) async fn event(masters: &Masters, cmd: EventCommand) -> anyhow::Result<i32> {
    match cmd {
        EventCommand::Set { name } => {
            let req = pb::EventRequest { name };
            call(masters, Resend::Safe, req, |mut c, r| async move {
                c.event_set(r).await
            })
            .await?;
            Ok(0)
        }
        EventCommand::Clear { name } => {
            let req = pb::EventRequest { name };
            call(masters, Resend::Safe, req, |mut c, r| async move {
                c.event_clear(r).await
            })
            .await?;
            Ok(0)
        }
        EventCommand::Wait { name, timeout } => {
            let req = pb::EventWaitRequest {
                name: name.clone(),
                timeout_ms: ms(timeout),
            };
            let r = call(masters, Resend::Safe, req, |mut c, r| async move {
                c.event_wait(r).await
            })
            .await?;
            if r.is_set {
                Ok(0)
            } else {
                let within = timeout.map_or(String::new(), |t| format!(" within {t:?}"));
                eprintln!("drover: event {name:?} was not set{within}");
                Ok(2)
            }
        }
    }
}

/// Runs `drover barrier ...`: prints this party's index.
pub(crate) async fn barrier(masters: &Masters, cmd: BarrierCommand) -> anyhow::Result<i32> {
    let req = pb::BarrierWaitRequest {
        name: cmd.name,
        parties: cmd.parties,
        session: 0,
        timeout_ms: ms(cmd.timeout),
    };
    // Sent twice, a party would arrive twice.
    let r = call(masters, Resend::Unapplied, req, |mut c, r| async move {
        c.barrier_wait(r).await
    })
    .await?;
    println!("{}", r.index);
    Ok(0)
}

/// Runs `drover inspect NAME`: one JSON document.
pub(crate) async fn inspect(masters: &Masters, name: String) -> anyhow::Result<i32> {
    let req = pb::InspectRequest { name };
    let r = call(masters, Resend::Safe, req, |mut c, r| async move {
        c.inspect(r).await
    })
    .await?;
    println!(
        "{}",
        json!({
            "lock_permits": r.lock_permits,
            "lock_tokens": r.lock_tokens,
            "lock_waiters": r.lock_waiters,
            "barrier_parties": r.barrier_parties,
            "barrier_arrived": r.barrier_arrived,
            "event_set": r.event_set,
        })
    );
    Ok(0)
}

/// Runs `drover lock NAME -- COMMAND`: exits with the command's status.
/// The session is opened on the first master that takes it (another one
/// only when none applied it). Its later calls go to whichever master
/// leads: the session and its grant are in the store, so a standby that
/// takes over (`--master a,b`) knows them; the renewals move on at once,
/// the release once the new leader answers (within the session's lease).
///
/// An acquire cut off by its master going away (a kill -9 of the leader
/// while it waited) may or may not have been granted. With several
/// masters it is not sent again on that session, which could hold a
/// permit twice or queue behind itself: the session is closed, which
/// releases whatever it got, and a new one acquires again.
pub(crate) async fn lock(masters: &Masters, cmd: LockCommand) -> anyhow::Result<i32> {
    let deadline = cmd.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut cut_offs = 0;
    loop {
        let session = open_session(masters, cmd.lease).await?;
        let lease = Duration::from_millis(session.lease_ms);
        let session = session.session;
        let (lost_tx, mut lost) = tokio::sync::watch::channel(None::<String>);
        let heartbeat = tokio::spawn(keep_alive(masters.clone(), session, lease, lost_tx));
        let timeout = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let acquired = acquire(masters, &cmd, session, lease, timeout, &mut lost).await;
        let code = match acquired {
            Ok(token) => run(masters, &cmd, session, token, lease, &mut lost).await,
            Err(Acquire::CutOff(status)) if cut_offs < MAX_CUT_OFFS => {
                cut_offs += 1;
                heartbeat.abort();
                eprintln!(
                    "drover: the master went away while lock {:?} was being acquired ({}); closing session {session}, which releases anything it was granted, and acquiring again",
                    cmd.name,
                    status.message()
                );
                if let Err(e) = close_session(masters, session, lease).await {
                    eprintln!(
                        "drover: cannot close session {session} ({}): anything it was granted is released when its lease of {lease:?} runs out",
                        e.message()
                    );
                }
                continue;
            }
            Err(Acquire::CutOff(status)) => Err(anyhow::anyhow!(
                "lock {:?} not acquired: the acquire was cut off {} times, the last: {}",
                cmd.name,
                cut_offs + 1,
                status.message()
            )),
            // After a cut-off the master's message names what was left of
            // the timeout, not the timeout.
            Err(Acquire::TimedOut(_)) if cut_offs > 0 => Err(anyhow::anyhow!(
                "timed out: lock {:?} not acquired within {:?} (the acquire was made again after the master went away)",
                cmd.name,
                cmd.timeout.unwrap_or_default()
            )),
            Err(Acquire::TimedOut(s)) => Err(status_error(s)),
            Err(Acquire::Failed(e)) => Err(e),
        };
        heartbeat.abort();
        let _ = close_session(masters, session, lease).await;
        return code;
    }
}

/// How many acquires of one `drover lock` may be cut off by the master
/// going away before it gives up: each takeover costs one, and each one
/// loses the waiter's place in the queue.
const MAX_CUT_OFFS: u32 = 10;

async fn open_session(
    masters: &Masters,
    lease: Duration,
) -> anyhow::Result<pb::OpenSessionResponse> {
    let host = hostname::get().map_or_else(|_| "?".into(), |h| h.to_string_lossy().into_owned());
    let req = pb::OpenSessionRequest {
        lease_ms: lease.as_millis() as u64,
        owner: format!("{host}:{}", std::process::id()),
    };
    // Safe to send again: a session opened twice leaves one that holds
    // nothing and expires with its lease.
    patiently(
        masters,
        Resend::Safe,
        lease,
        Some(lease / 3),
        req,
        |mut c, r| async move { c.open_session(r).await },
    )
    .await
    .map_err(status_error)
}

/// Closes `session`, which releases its grants. Safe to send again: a
/// master closes a session it does not know (closed already, or expired)
/// without error.
async fn close_session(
    masters: &Masters,
    session: u64,
    lease: Duration,
) -> Result<pb::CloseSessionResponse, tonic::Status> {
    let close = pb::CloseSessionRequest { session };
    patiently(
        masters,
        Resend::Safe,
        lease,
        Some(lease / 3),
        close,
        |mut c, r| async move { c.close_session(r).await },
    )
    .await
}

/// Makes a call on the next master while `resend` allows, and again
/// around the masters for up to `patience` while they are all away or
/// standbys (a takeover under way). A call not answered within
/// `answer_within` fails as UNAVAILABLE: a paused or cut-off master
/// answers nothing, and its connection may take half a minute to break.
async fn patiently<Q, T, F, Fut>(
    masters: &Masters,
    resend: Resend,
    patience: Duration,
    answer_within: Option<Duration>,
    req: Q,
    f: F,
) -> Result<T, tonic::Status>
where
    Q: Clone,
    F: Fn(CoordClient<AuthChannel>, Q) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let attempt = |channel| {
            let call = f(client(channel), req.clone());
            async move {
                let Some(within) = answer_within else {
                    return call.await;
                };
                tokio::time::timeout(within, call)
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::unavailable(format!(
                            "no answer within {within:?}"
                        )))
                    })
            }
        };
        match masters.call(resend, attempt).await {
            Err(s)
                if resend.allows(&s)
                    && masters.len() > 1
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            done => return done.map(tonic::Response::into_inner),
        }
    }
}

/// Whether a call that must not be applied twice failed because its
/// master went away after it was sent, with another master to go to: it
/// may or may not have been applied.
fn cut_off(masters: &Masters, s: &tonic::Status) -> bool {
    masters.len() > 1 && crate::masters::transient(s) && !Resend::Unapplied.allows(s)
}

/// Why an acquire gave no token.
enum Acquire {
    /// The master went away after the call reached it, with another master
    /// to go to: it may have been granted.
    CutOff(tonic::Status),
    /// Not granted within the request's timeout.
    TimedOut(tonic::Status),
    Failed(anyhow::Error),
}

/// Acquires `cmd.name` for `session`, waiting up to `timeout`: its fencing
/// token.
async fn acquire(
    masters: &Masters,
    cmd: &LockCommand,
    session: u64,
    lease: Duration,
    timeout: Option<Duration>,
    lost: &mut tokio::sync::watch::Receiver<Option<String>>,
) -> Result<u64, Acquire> {
    let req = pb::AcquireRequest {
        name: cmd.name.clone(),
        permits: cmd.permits,
        session,
        timeout_ms: ms(timeout),
    };
    let acquire = patiently(
        masters,
        Resend::Unapplied,
        lease,
        None,
        req,
        |mut c, r| async move { c.acquire(r).await },
    );
    tokio::select! {
        r = acquire => match r {
            Ok(granted) => Ok(granted.fencing_token),
            Err(s) if cut_off(masters, &s) => Err(Acquire::CutOff(s)),
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => Err(Acquire::TimedOut(s)),
            Err(s) => Err(Acquire::Failed(status_error(s))),
        },
        why = lost.wait_for(Option::is_some) => {
            let why = why.map(|w| w.clone().unwrap_or_default()).unwrap_or_default();
            Err(Acquire::Failed(anyhow::anyhow!("lost the session while waiting for lock {:?}: {why}", cmd.name)))
        }
    }
}

/// Runs the command holding the grant `token`, then releases it.
async fn run(
    masters: &Masters,
    cmd: &LockCommand,
    session: u64,
    token: u64,
    lease: Duration,
    lost: &mut tokio::sync::watch::Receiver<Option<String>>,
) -> anyhow::Result<i32> {
    let mut command = tokio::process::Command::new(&cmd.command[0]);
    command
        .args(&cmd.command[1..])
        .env("DROVER_FENCING_TOKEN", token.to_string())
        .env("DROVER_LOCK_NAME", &cmd.name)
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", cmd.command[0]))?;
    let status = tokio::select! {
        s = child.wait() => Some(s?),
        _ = lost.wait_for(Option::is_some) => None,
    };
    if status.is_none() {
        // The lock may be someone else's already: the command stops first.
        let _ = child.kill().await;
    }
    let released = release(masters, cmd, session, token, lease).await;
    let Some(status) = status else {
        let why = lost.borrow().clone().unwrap_or_default();
        let rejected = released
            .err()
            .map(|e| format!("; {}", e.message()))
            .unwrap_or_default();
        anyhow::bail!(
            "lost lock {:?} (fencing token {token}): {why}{rejected}; the command was killed",
            cmd.name
        );
    };
    if let Err(e) = released {
        let (at, _) = masters.current();
        anyhow::bail!(
            "the command ended ({status}), but releasing lock {:?} at {} failed: {}",
            cmd.name,
            masters.url(at),
            e.message()
        );
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Releases the grant `token`. A release cut off (applied or not) is
/// completed by closing the session, which releases the grant either way.
async fn release(
    masters: &Masters,
    cmd: &LockCommand,
    session: u64,
    token: u64,
    lease: Duration,
) -> Result<(), tonic::Status> {
    let req = pb::ReleaseRequest {
        name: cmd.name.clone(),
        fencing_token: token,
        session,
    };
    let released = patiently(
        masters,
        Resend::Unapplied,
        lease,
        Some(lease / 3),
        req,
        |mut c, r| async move { c.release(r).await },
    )
    .await;
    match released {
        Err(s) if cut_off(masters, &s) => close_session(masters, session, lease).await.map(drop),
        r => r.map(drop),
    }
}

/// Renews the session every third of its lease, on whichever master
/// leads (a renewal is safe to send twice). Reports the lease lost when
/// the master says the session is gone, or when it could not be renewed
/// before the lease would have run out.
async fn keep_alive(
    masters: Masters,
    session: u64,
    lease: Duration,
    lost: tokio::sync::watch::Sender<Option<String>>,
) {
    let mut renewed = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (at, _) = masters.current();
        let call = masters.call(Resend::Safe, |channel| async move {
            client(channel)
                .keep_alive(pb::KeepAliveRequest { session })
                .await
        });
        match tokio::time::timeout(lease / 3, call).await {
            Ok(Ok(_)) => renewed = tokio::time::Instant::now(),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                let _ = lost.send(Some(s.message().to_string()));
                return;
            }
            Ok(Err(_)) => {}
            // A paused or cut-off master answers nothing: the next renewal
            // goes to the next master (safe to send twice).
            Err(_) => {
                masters.move_on(at);
            }
        }
        if renewed.elapsed() >= lease {
            let _ = lost.send(Some(format!(
                "the lease of {lease:?} could not be renewed in time"
            )));
            return;
        }
    }
}

/// Makes the command die with this process (Linux), so a holder killed
/// without warning does not leave its command running unprotected.
fn die_with_parent(command: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child
    // before exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}
