//! The status endpoint and admin API, served on `status.listen`.

pub mod http;
