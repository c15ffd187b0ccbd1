//! The status endpoint, the admin API and the Email history page, served on
//! `status.listen`.

pub mod http;
pub mod pages;
pub mod query;
