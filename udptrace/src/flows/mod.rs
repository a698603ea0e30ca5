//! Flows and verdicts: the decoded events grouped per conversation, and the rules that turn
//! them into a diagnosis: typed facts and evidence events (`render` words them). Nothing here
//! knows a kernel layout or writes a sentence.

pub mod bounded;
pub mod code;
pub mod diagnosis;
pub mod ledger;
pub mod rule;
mod rules;
/// The default `--reply-timeout` (rules/no_reply.rs).
pub use rules::DEFAULT_REPLY_TIMEOUT;
pub mod table;
#[cfg(test)]
pub mod testing;
pub mod verdict;
