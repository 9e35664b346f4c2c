//! veil-mls integration tests, one binary: member sessions driven through an in-memory delivery service (common.rs); one behaviour per module.

mod common;
mod external;
mod groups;
mod races;
mod restart;
mod secrecy;
