//! The per-user state directory's contents: the journal each compile appends
//! to ([`journal`]), the SQLite database it is folded into ([`stats`]), and
//! the optional log file ([`log`]).

pub mod journal;
pub mod log;
pub mod stats;
