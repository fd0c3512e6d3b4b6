//! The HTTP polling transport (`transport = "http"`): task requests come
//! from `GET <base_url>/tasks`, statuses go to `POST
//! <base_url>/tasks/<task_id>/status` (`poster`, the [`StatusSink`]), with
//! what both share in `retry`.
//!
//! [`StatusSink`]: crate::transport::StatusSink

pub mod poster;
pub mod retry;
#[cfg(test)]
mod tests;
