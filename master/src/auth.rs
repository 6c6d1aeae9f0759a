//! Who may call what. A client token opens the `Queue` service (submit,
//! get, watch, cancel, retry, stats, list) and the `Coord` service; a
//! worker token opens the `Workers` service (Connect), and `Coord` too,
//! since a worker forwards its jobs' coordination calls (their locks,
//! counters and keys) there. Health and reflection stay open.
//!
//! [`Gate`] is a tonic interceptor, one per service: it runs before the
//! request is decoded, so a caller without the right token costs the
//! master nothing. A missing or unknown token is UNAUTHENTICATED; the
//! other role's token is PERMISSION_DENIED. Tokens are compared in
//! constant time, both of them on every call.
//!
//! With `--client-ca`, a worker must also show a client certificate that
//! CA signed (mutual TLS); the TLS layer has already verified it.

use std::fmt;
use std::sync::Arc;

use drover_common::auth::{Presented, Token, presented};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::limits::{Guards, Refusal};

/// The tokens of the two roles; a role without one is open.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Opens the `Queue` service.
    pub client: Option<Token>,
    /// Opens the `Workers` service.
    pub worker: Option<Token>,
}

/// What a caller is, by the service it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The CLI and other clients: the `Queue` service.
    Client,
    /// Workers: the `Workers` service.
    Worker,
    /// Clients, and workers on behalf of their jobs: the `Coord` service.
    Coord,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Worker => "worker",
            // Clients are told of their own token; workers forward their
            // jobs' calls with theirs.
            Role::Coord => "client",
        })
    }
}

/// The check in front of one service.
#[derive(Clone)]
pub struct Gate {
    role: Role,
    tokens: Arc<Tokens>,
    /// Workers must show a client certificate (the master has a
    /// `--client-ca`).
    worker_cert_required: bool,
    guards: Arc<Guards>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate").field("role", &self.role).finish()
    }
}

impl Gate {
    /// The gate of the service for `role`.
    pub fn new(
        role: Role,
        tokens: Arc<Tokens>,
        worker_cert_required: bool,
        guards: Arc<Guards>,
    ) -> Gate {
        Gate {
            role,
            tokens,
            worker_cert_required,
            guards,
        }
    }

    /// A worker's client certificate, when the master asks for one.
    fn worker_cert(&self, request: &Request<()>) -> Result<(), Status> {
        if self.worker_cert_required && request.peer_certs().is_none_or(|c| c.is_empty()) {
            self.guards.refused(Refusal::Unauthenticated);
            return Err(Status::unauthenticated(
                "workers must connect over TLS with a client certificate signed by the \
                 master's --client-ca (worker flags --tls-cert and --tls-key)",
            ));
        }
        Ok(())
    }

    fn check(&self, request: &Request<()>) -> Result<(), Status> {
        let client = self.tokens.client.as_ref();
        let worker = self.tokens.worker.as_ref();
        let presented = presented(request.metadata());
        // A role without a token is open (a worker still shows its
        // certificate when the master asks for one).
        match self.role {
            Role::Worker => {
                self.worker_cert(request)?;
                if worker.is_none() {
                    return Ok(());
                }
            }
            Role::Client | Role::Coord if client.is_none() => return Ok(()),
            // A worker on behalf of its jobs, proven by its certificate
            // alone (--client-ca and no worker token).
            Role::Coord
                if worker.is_none()
                    && self.worker_cert_required
                    && matches!(presented, Presented::Missing)
                    && request.peer_certs().is_some_and(|c| !c.is_empty()) =>
            {
                return Ok(());
            }
            Role::Client | Role::Coord => {}
        }
        let refuse = |why: Refusal, status: Status| {
            self.guards.refused(why);
            Err(status)
        };
        let token = match presented {
            Presented::Bearer(token) => token,
            Presented::Missing => {
                return refuse(
                    Refusal::Unauthenticated,
                    Status::unauthenticated(format!(
                        "no token: this master needs a {} token, sent as `authorization: Bearer \
                         <token>` (flags --token or --token-file, or DROVER_TOKEN)",
                        self.role
                    )),
                );
            }
            Presented::Malformed => {
                return refuse(
                    Refusal::Unauthenticated,
                    Status::unauthenticated("the authorization metadata is not `Bearer <token>`"),
                );
            }
        };
        // Both compared every time: the answer's timing tells nothing
        // about which comparison failed.
        let is_client = client.is_some_and(|c| c.matches(token));
        let is_worker = worker.is_some_and(|w| w.matches(token));
        let (mine, other) = match self.role {
            Role::Client => (is_client, is_worker),
            Role::Worker => (is_worker, is_client),
            // A worker forwards its jobs' calls with its own token.
            Role::Coord if is_worker => return self.worker_cert(request),
            Role::Coord => (is_client, false),
        };
        if mine {
            Ok(())
        } else if other {
            let (service, needed) = match self.role {
                Role::Client | Role::Coord => ("the Queue service", "client"),
                Role::Worker => ("Workers.Connect", "worker"),
            };
            refuse(
                Refusal::PermissionDenied,
                Status::permission_denied(format!(
                    "this token's role may not call {service}: it needs a {needed} token"
                )),
            )
        } else {
            refuse(
                Refusal::Unauthenticated,
                Status::unauthenticated(format!(
                    "wrong token: it is not this master's {} token",
                    self.role
                )),
            )
        }
    }
}

impl Interceptor for Gate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_common::auth::AttachToken;
    use tonic::Code;

    fn gate(role: Role) -> Gate {
        let tokens = Tokens {
            client: Some(Token::new("client-secret", "t").unwrap()),
            worker: Some(Token::new("worker-secret", "t").unwrap()),
        };
        Gate::new(role, Arc::new(tokens), false, Arc::new(Guards::new(1, 1)))
    }

    fn call(gate: &mut Gate, token: Option<&str>) -> Result<(), Code> {
        let token = token.map(|t| Token::new(t, "t").unwrap());
        let request = AttachToken::new(token.as_ref())
            .call(Request::new(()))
            .unwrap();
        gate.call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn each_role_needs_its_own_token() {
        let mut queue = gate(Role::Client);
        let mut workers = gate(Role::Worker);
        assert_eq!(call(&mut queue, Some("client-secret")), Ok(()));
        assert_eq!(call(&mut workers, Some("worker-secret")), Ok(()));
        assert_eq!(call(&mut queue, None), Err(Code::Unauthenticated));
        assert_eq!(call(&mut queue, Some("nope")), Err(Code::Unauthenticated));
        assert_eq!(
            call(&mut queue, Some("client-secre")),
            Err(Code::Unauthenticated)
        );
        assert_eq!(
            call(&mut queue, Some("worker-secret")),
            Err(Code::PermissionDenied)
        );
        assert_eq!(
            call(&mut workers, Some("client-secret")),
            Err(Code::PermissionDenied)
        );
        assert_eq!(call(&mut workers, None), Err(Code::Unauthenticated));
    }

    #[test]
    fn a_role_without_a_token_is_open() {
        let tokens = Tokens {
            client: Some(Token::new("c", "t").unwrap()),
            worker: None,
        };
        let mut workers = Gate::new(
            Role::Worker,
            Arc::new(tokens),
            false,
            Arc::new(Guards::new(1, 1)),
        );
        assert_eq!(call(&mut workers, None), Ok(()));
    }

    #[test]
    fn workers_need_a_certificate_when_the_master_has_a_client_ca() {
        let mut workers = Gate::new(
            Role::Worker,
            Arc::new(Tokens::default()),
            true,
            Arc::new(Guards::new(1, 1)),
        );
        assert_eq!(call(&mut workers, None), Err(Code::Unauthenticated));
    }

    #[test]
    fn coord_takes_the_client_token_or_a_workers_on_behalf_of_its_jobs() {
        let mut coord = gate(Role::Coord);
        assert_eq!(call(&mut coord, Some("client-secret")), Ok(()));
        assert_eq!(call(&mut coord, Some("worker-secret")), Ok(()));
        assert_eq!(call(&mut coord, None), Err(Code::Unauthenticated));
        assert_eq!(call(&mut coord, Some("nope")), Err(Code::Unauthenticated));
    }

    #[test]
    fn an_open_worker_role_does_not_open_coord() {
        let tokens = Arc::new(Tokens {
            client: Some(Token::new("c", "t").unwrap()),
            worker: None,
        });
        let guards = Arc::new(Guards::new(1, 1));
        let mut coord = Gate::new(Role::Coord, tokens.clone(), false, guards.clone());
        assert_eq!(call(&mut coord, None), Err(Code::Unauthenticated));
        assert_eq!(call(&mut coord, Some("c")), Ok(()));
        // With --client-ca, a worker's certificate is its proof; a caller
        // without one is refused.
        let mut coord = Gate::new(Role::Coord, tokens, true, guards);
        assert_eq!(call(&mut coord, None), Err(Code::Unauthenticated));
    }
}
