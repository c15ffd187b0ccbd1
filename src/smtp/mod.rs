//! The SMTP side: the listener (sockets), the session (state machine), the DATA reader,
//! the policy at the door, and reply values.

pub mod auth;
pub mod data;
#[doc(hidden)]
pub mod harness;
pub mod listener;
pub mod policy;
pub mod reply;
pub mod session;
pub mod tls;

#[cfg(test)]
mod tests;
