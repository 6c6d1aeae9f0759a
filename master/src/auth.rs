//! Who may call what. A client token opens the `Queue` service (submit,
//! get, watch, cancel, retry, stats, list) and the `Coord` service; a worker token opens the
//! `Workers` service (Connect). Health and reflection stay open.
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
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Worker => "worker",
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

    fn check(&self, request: &Request<()>) -> Result<(), Status> {
        if self.role == Role::Worker && self.worker_cert_required {
            let shown = request.peer_certs().is_some_and(|c| !c.is_empty());
            if !shown {
                self.guards.refused(Refusal::Unauthenticated);
                return Err(Status::unauthenticated(
                    "workers must connect over TLS with a client certificate signed by the \
                     master's --client-ca (worker flags --tls-cert and --tls-key)",
                ));
            }
        }
        let (mine, other) = match self.role {
            Role::Client => (&self.tokens.client, &self.tokens.worker),
            Role::Worker => (&self.tokens.worker, &self.tokens.client),
        };
        let Some(mine) = mine else {
            return Ok(());
        };
        let refuse = |why: Refusal, status: Status| {
            self.guards.refused(why);
            Err(status)
        };
        match presented(request.metadata()) {
            Presented::Missing => refuse(
                Refusal::Unauthenticated,
                Status::unauthenticated(format!(
                    "no token: this master needs a {} token, sent as `authorization: Bearer \
                     <token>` (flags --token or --token-file, or DROVER_TOKEN)",
                    self.role
                )),
            ),
            Presented::Malformed => refuse(
                Refusal::Unauthenticated,
                Status::unauthenticated("the authorization metadata is not `Bearer <token>`"),
            ),
            Presented::Bearer(token) => {
                // Both compared every time: the answer's timing tells
                // nothing about which comparison failed.
                let is_mine = mine.matches(token);
                let is_other = other.as_ref().is_some_and(|o| o.matches(token));
                if is_mine {
                    Ok(())
                } else if is_other {
                    let (service, needed) = match self.role {
                        Role::Client => ("the Queue and Coord services", "client"),
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
}
