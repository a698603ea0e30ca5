//! Which kernel hooks udptrace uses, and attaching each with the best mechanism the running
//! kernel accepts.

pub mod attach;
pub mod plan;
