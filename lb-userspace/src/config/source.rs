//! Where a value came from, so that an error can point at it: `FILE:LINE`
//! for a file, "command line" for a flag.

use std::{fmt, ops::Range};

use anyhow::{Result, anyhow};
use toml::Spanned;

/// What is being read: the flags, or a file (its name, and its text for
/// the line numbers).
pub(super) enum Source<'a> {
    CommandLine,
    File { name: &'a str, text: &'a str },
}

/// The place to blame for an error.
#[derive(Clone, Debug)]
pub(super) enum Loc {
    /// A byte range in the file.
    Span(Range<usize>),
    /// A flag.
    CommandLine,
    /// The configuration as a whole.
    Whole,
}

impl Source<'_> {
    pub(super) fn error(&self, loc: &Loc, msg: impl fmt::Display) -> anyhow::Error {
        match (self, loc) {
            (Source::File { name, text }, Loc::Span(span)) => {
                anyhow!("config error: {name}:{}: {msg}", line_of(text, span.start))
            }
            (Source::File { name, .. }, Loc::Whole) => anyhow!("config error: {name}: {msg}"),
            _ => anyhow!("config error: command line: {msg}"),
        }
    }

    /// A value that failed its own check, blamed where it was written.
    pub(super) fn check<T>(&self, loc: &Loc, r: Result<T, String>) -> Result<T> {
        r.map_err(|msg| self.error(loc, msg))
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where a value of the file was written.
pub(super) fn span<T>(s: &Spanned<T>) -> Loc {
    Loc::Span(s.span())
}
