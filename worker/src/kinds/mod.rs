//! The CPU-bound job kinds, as pure functions of their arguments.
//!
//! - [`fib`]: F(n), exact, in decimal.
//! - [`prime`]: whether n is prime, and whether that is proven or probable.
//!
//! They do no I/O and keep no state beyond a table of small primes and the
//! fib transform's twiddle factors (4 MiB after F(10^7)): the worker's
//! child processes call them, so a job that overruns its timeout is stopped
//! by killing its process.

pub mod fib;
pub mod prime;

pub use fib::fib_decimal;
pub use prime::is_prime_decimal;
