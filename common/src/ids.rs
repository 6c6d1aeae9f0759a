//! Typed ids, parsed once where they enter (a request, a store record) and
//! passed as these types from there on.
//!
//! A job id and a batch id are both UUIDs v7 on the wire, but they are
//! deliberately incompatible types here: a batch id can no longer be looked
//! up as a job id by accident.

use std::fmt;
use std::num::NonZeroU64;

use uuid::Uuid;

use crate::Error;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        // No `Default`: a default id would have to be a fresh one, made
        // where nobody asked for it.
        #[allow(clippy::new_without_default)]
        impl $name {
            /// A new id: a UUID v7, so ids sort by creation time.
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }

            /// Wraps a UUID read from a trusted place (the store).
            pub const fn from_uuid(uuid: Uuid) -> Self {
                $name(uuid)
            }

            /// Reads the 16 bytes of a store record; `None` if malformed.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                Uuid::from_slice(bytes).ok().map($name)
            }

            /// Parses the id a client sent in `field`, naming the field and
            /// what was expected when it is malformed.
            pub fn parse(field: &str, raw: &str) -> Result<Self, Error> {
                Uuid::parse_str(raw).map($name).map_err(|_| {
                    Error::invalid(format!(
                        concat!("{}: {:?} is not a ", $what, " id (a UUID)"),
                        field, raw
                    ))
                })
            }

            /// The UUID.
            pub const fn uuid(&self) -> Uuid {
                self.0
            }

            /// The 16 bytes kept in store records.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// When the id was made (unix ms), from its UUID v7 timestamp.
            pub fn made_ms(&self) -> Option<u64> {
                self.0.get_timestamp().map(|t| {
                    let (secs, nanos) = t.to_unix();
                    secs * 1000 + u64::from(nanos) / 1_000_000
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, ":{}"), self.0)
            }
        }
    };
}

uuid_id!(
    /// A job: one function call with its argument, run until it succeeds,
    /// fails for good or is cancelled.
    JobId,
    "job"
);

uuid_id!(
    /// A batch: the jobs of one submit, in submission order.
    BatchId,
    "batch"
);

/// A worker session: one `Workers.Connect` stream, from its hello to its
/// end. Numbered from 1 by the master that accepted it; a worker that
/// reconnects gets a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(NonZeroU64);

impl SessionId {
    /// The session numbered `n`; `None` for 0.
    pub const fn new(n: u64) -> Option<Self> {
        match NonZeroU64::new(n) {
            Some(n) => Some(SessionId(n)),
            None => None,
        }
    }

    /// Its number.
    pub const fn get(&self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session:{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_id_names_its_field_and_kind() {
        let err = BatchId::parse("batch_id", "nope").unwrap_err().to_string();
        assert_eq!(err, r#"batch_id: "nope" is not a batch id (a UUID)"#);
        let id = JobId::new();
        assert_eq!(JobId::parse("x", &id.to_string()).unwrap(), id);
        assert_eq!(JobId::from_slice(id.as_bytes()), Some(id));
        assert!(id.made_ms().is_some_and(|ms| ms > 1_700_000_000_000));
    }
}
