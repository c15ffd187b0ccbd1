//! The status endpoint, the admin API and the Email history page, served on
//! `status.listen`.

pub mod http;
mod oauth2_page;
pub mod pages;
pub mod query;
