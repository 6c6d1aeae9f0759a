//! The error codes of drover's services, mapped once to gRPC status codes.

/// An error a service returns to its caller.
///
/// Each variant is one row of the table in DESIGN.md; the message is meant
/// for a person and names the field and the limit where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// An id that the master does not know.
    #[error("{0}")]
    NotFound(String),
    /// A limit was reached: queue size, streams, message size.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The service is draining or not ready.
    #[error("{0}")]
    Unavailable(String),
    /// The caller and the service disagree on the protocol or a state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A wait ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or a failed dependency (the store).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Builds an [`Error::InvalidArgument`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}
