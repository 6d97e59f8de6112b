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

/// Where the parts of a policy read from text were written: each dimension, class, pool and
/// backend, a backend's hosts, and the sections that hold them, by field path.
///
/// An engine finds some problems only when it applies a policy (a dimension changing kind, more
/// names than it can hold); this lets it say where, as the reader does. Where a policy was written
/// is not part of what it says: policies that differ only there are equal.
#[derive(Clone, Debug, Default)]
pub(crate) struct Origin(Option<Arc<OriginPlaces>>);

#[derive(Debug)]
struct OriginPlaces {
    file: Option<Arc<Path>>,
    fields: Vec<(Box<str>, Location)>,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

impl Eq for Origin {}

impl Origin {
    pub(crate) fn new(file: Option<Arc<Path>>, fields: Vec<(Box<str>, Location)>) -> Self {
        Origin(Some(Arc::new(OriginPlaces { file, fields })))
    }

    /// `error`, with each problem that names no place given the place of its field (or, for a
    /// field not written in the file, the file's start).
    pub(crate) fn place(&self, mut error: PolicyError) -> PolicyError {
        let Some(places) = &self.0 else {
            return error;
        };
        for p in error.problems.iter_mut().filter(|p| p.location.is_none()) {
            p.location = places
                .fields
                .iter()
                .find(|(field, _)| **field == *p.field)
                .map(|(_, at)| at.clone())
                .or_else(|| {
                    places.file.as_ref().map(|file| Location {
                        file: Some(Arc::clone(file)),
                        line: 1,
                        column: 1,
                    })
                });
        }
        error
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

    #[test]
    fn an_origin_places_problems_at_their_fields() {
        let src = "[classes.api]\n\n[backends.db]\ntimeout = \"1s\"\nhosts = [\"a\"]\n";
        let file: Arc<Path> = Arc::from(Path::new("p.toml"));
        let policy = super::super::file::parse(src, Some(Arc::clone(&file))).unwrap();
        let placed = |field: &str| {
            let e = policy.origin().place(PolicyError::single(field, "x"));
            e.problems()[0]
                .location
                .clone()
                .map(|at| (at.line, at.column))
        };
        assert_eq!(placed("backends.db.hosts"), Some((5, 1)));
        assert_eq!(placed("backends.db"), Some((3, 11)));
        assert_eq!(placed("classes.api"), Some((1, 10)));
        assert_eq!(placed("backends"), Some((3, 2)));
        // Not written in the file (no [dimensions]): the file's start.
        assert_eq!(placed("dimensions"), Some((1, 1)));
        // A problem that already has a place keeps it.
        let mut e = PolicyError::single("backends.db.hosts", "x");
        e.problems[0].location = Some(Location::of_offset(src, 0, None));
        let e = policy.origin().place(e);
        assert_eq!(e.problems()[0].location.as_ref().unwrap().file, None);
        // A policy from text names lines only where it wrote the field.
        let text = super::super::file::parse(src, None).unwrap();
        let e = text.origin().place(PolicyError::single("dimensions", "x"));
        assert_eq!(e.problems()[0].location, None);
    }
}
