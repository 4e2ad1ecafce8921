//! Errors of single values read outside a whole file (a `sources` entry given
//! to [`crate::SourceSet::parse`], a time on the command line). Whole files
//! report [`crate::Diagnostics`] instead, with positions.

/// A value that does not follow the policy grammar. The message says what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// A `sources` entry (`any`, a CIDR, `!CIDR`).
    #[error("{0}")]
    Source(String),
    /// A path pattern.
    #[error("{0}")]
    PathPattern(String),
    /// A `days` range.
    #[error("{0}")]
    Days(String),
    /// A `time` window (`HH:MM-HH:MM`).
    #[error("{0}")]
    TimeRange(String),
    /// A time (RFC 3339 with an offset, `now`, `now+1h`, `now-30m`).
    #[error("{0}")]
    Time(String),
}

impl ValueError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            ValueError::Source(m)
            | ValueError::PathPattern(m)
            | ValueError::Days(m)
            | ValueError::TimeRange(m)
            | ValueError::Time(m) => m,
        }
    }
}
