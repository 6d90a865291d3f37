//! Masking: sensitive values never reach the agent or the journal in the clear.

pub mod detect;
