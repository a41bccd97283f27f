//! The cache directory as a place shared with other users and hosts: the
//! name of every path in it ([`layout`]), whom it and its settings are
//! trusted by ([`trust`]), and the descriptor-based opening that every file
//! inside goes through ([`beneath`]). Everything else builds on these.

pub mod beneath;
pub mod layout;
pub mod trust;
