//! Flows and verdicts: the decoded events grouped per conversation, and the rules that turn
//! them into a diagnosis with evidence and a fix. Nothing here knows a kernel layout.

pub mod bounded;
pub mod table;
pub mod verdicts;
