//! The worker's MQTT side: one client connection (`client`), the status
//! publisher fed by the task table's change stream (`publisher`), and the
//! topic names of PROTOCOL.md (`topics`).

pub mod client;
pub mod publisher;
pub mod topics;
