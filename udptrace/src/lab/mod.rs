//! The lab: private network namespaces, built-in UDP peers and the incidents udptrace exists
//! to explain (`udptrace lab list`, `udptrace lab run NAME --trace`).

pub mod netns;
pub mod peers;
pub mod scenarios;
