//! The library half of the `veil` command: media files and frame sources for `veil join`
//! ([`media_files`]), kept apart from the binary so that tests and other tools can read and
//! write the same IVF and Ogg Opus files the command publishes and saves.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod media_files;
