//! Shared pieces of drover: the generated wire protocol, job specs and their
//! validation, limits, errors mapped to gRPC codes, and small helpers for
//! endpoints, durations, shutdown and logging.
//!
//! # Layout
//!
//! - [`pb`]: the code generated from `proto/drover/v1/drover.proto`.
//! - [`job`]: job kinds, their classes ([`JobClass`]) and arguments, parsed
//!   and checked against [`Limits`].
//! - [`ids`]: typed job, batch and session ids, parsed once at the edge.
//! - [`error`]: the error codes of the services, mapped once to gRPC codes.
//! - [`net`]: how every gRPC endpoint and server is tuned, secured (TLS)
//!   and connected.
//! - [`auth`]: bearer tokens, compared in constant time and attached to
//!   calls.
//! - [`metrics`]: histograms, the Prometheus text format and the HTTP
//!   responder that serves it.
//! - [`pages`]: the replies that carry finished jobs (`GetResponse`,
//!   `WatchResponse`), written by hand so that the master can send jobs it
//!   encoded itself.
//! - [`util`]: durations, ranges, shutdown signals and tracing set-up.
//!
//! No I/O policy lives here: the master, the worker and the CLI decide that.

pub mod auth;
pub mod error;
pub mod ids;
pub mod job;
pub mod metrics;
pub mod net;
pub mod pages;
pub mod util;

pub use error::Error;
pub use job::{JobArgs, JobClass, Limits, module_allowed, python_module};

/// Code generated from the protocol.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("drover.v1");

    pub use crate::pages::{GetResponse, WatchResponse};

    /// The encoded descriptor set of the protocol, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/drover_descriptor.bin"));
}

/// The wire protocol version a worker announces in its hello.
pub const PROTOCOL_VERSION: u32 = 1;

/// The version of this build of drover.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The address the master listens on, and the others dial, by default.
pub const DEFAULT_MASTER_ADDR: &str = "127.0.0.1:50051";

/// The URL the worker and the CLI dial by default.
pub const DEFAULT_MASTER_URL: &str = "http://127.0.0.1:50051";
