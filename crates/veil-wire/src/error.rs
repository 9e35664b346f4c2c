//! The one error type of `veil-wire`.

/// Everything that can go wrong while reading or writing a Veil wire format.
///
/// Variants are grouped by who is at fault: malformed **peer input** (bytes that arrived from
/// the network and do not follow the format) and **caller misuse** (arguments that no correct
/// program passes). Messages say what was wrong and, where there is something to do, what to do.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    // ---- peer input ---------------------------------------------------------------------
    /// The input ended before the structure it announced was complete.
    #[error("{what} is truncated: it needs {needed} bytes but only {got} are present")]
    Truncated {
        /// Which structure was being read.
        what: &'static str,
        /// Bytes needed to continue.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// A length or value field was not encoded in the fewest bytes possible (RFC 9605 §4.3
    /// requires minimal encoding; accepting others would give one header two encodings).
    #[error("{field} is not minimally encoded: value {value} fits in fewer bytes")]
    NonMinimal {
        /// Which field.
        field: &'static str,
        /// The decoded value.
        value: u64,
    },
    /// The input violates the format in a way that has no more specific variant.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which structure was being read.
        what: &'static str,
        /// What rule was broken.
        reason: &'static str,
    },
    /// A dependency descriptor without a template structure arrived before any structure was
    /// latched for its stream (or after the structure it refers to was replaced).
    #[error(
        "dependency descriptor needs a template structure (id {structure_id}) that is not known; \
         wait for the next key frame or request one with PLI/FIR"
    )]
    MissingStructure {
        /// The template id offset of the descriptor (or the expected structure id).
        structure_id: u8,
    },

    // ---- caller misuse ------------------------------------------------------------------
    /// The caller's output buffer cannot hold what is to be written.
    #[error("output buffer for {what} is too small: it needs {needed} bytes but has {got}")]
    BufferTooSmall {
        /// What was being written.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// An argument is outside what the format can express.
    #[error("invalid argument for {what}: {reason}")]
    InvalidArgument {
        /// What was being built.
        what: &'static str,
        /// What is wrong with the argument, and the allowed range.
        reason: &'static str,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = WireError> = core::result::Result<T, E>;
