//! Errors in policies, each naming the field and, for files, where it is.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Where in a policy file a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Location {
    /// The file, when the policy came from one.
    pub file: Option<Arc<Path>>,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl Location {
    /// The location of byte `offset` in `source`.
    pub(crate) fn of_offset(source: &str, offset: usize, file: Option<&Arc<Path>>) -> Self {
        let offset = offset.min(source.len());
        let before = source.get(..offset).unwrap_or(source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Location {
            file: file.cloned(),
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}:{}:{}", file.display(), self.line, self.column),
            None => write!(f, "line {}:{}", self.line, self.column),
        }
    }
}

/// One thing wrong with a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// Where, for policies read from text.
    pub location: Option<Location>,
    /// The dotted path of the field (`classes.parse.wall_time`), or empty for the whole document.
    pub field: String,
    /// What is wrong, for people.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.location {
            write!(f, "{at}: ")?;
        }
        if !self.field.is_empty() {
            // Escaped: a path names keys of the file as written, which may hold anything.
            write!(f, "{}: ", self.field.escape_debug())?;
        }
        f.write_str(&self.message)
    }
}

/// A policy that could not be built, loaded or applied, with every problem found.
///
/// All problems are collected rather than stopping at the first, so that an operator fixes a file in one
/// pass. [`Display`](fmt::Display) prints one problem per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    problems: Vec<Problem>,
}

impl PolicyError {
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty());
        PolicyError { problems }
    }

    pub(crate) fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError::new(vec![Problem {
            location: None,
            field: field.into(),
            message: message.into(),
        }])
    }

    /// Every problem found, in document order where known.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Collects problems while a policy is checked.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn push(
        &mut self,
        location: Option<Location>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(Problem {
            location,
            field: field.into(),
            message: message.into(),
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_result<T>(mut self, value: T) -> Result<T, PolicyError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            self.0.sort_by_key(|p| {
                p.location
                    .as_ref()
                    .map_or((u32::MAX, u32::MAX), |l| (l.line, l.column))
            });
            Err(PolicyError::new(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_characters() {
        let src = "a = 1\nbé = 2\n";
        let file: Arc<Path> = Arc::from(Path::new("p.toml"));
        let at = Location::of_offset(src, src.find('2').unwrap(), Some(&file));
        assert_eq!((at.line, at.column), (2, 6));
        assert_eq!(at.to_string(), "p.toml:2:6");
        assert_eq!(Location::of_offset(src, 10_000, None).line, 3);
    }
}
