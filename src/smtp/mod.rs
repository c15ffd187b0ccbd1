//! The SMTP side: the listener (sockets), the session (state machine), the DATA reader,
//! the policy at the door, and reply values.

pub mod data;
pub mod listener;
pub mod policy;
pub mod reply;
pub mod session;

#[cfg(test)]
mod tests;
