//! Reading fuzz input a byte at a time: every harness decodes its bytes by hand (no `arbitrary`), so
//! that the same harnesses build in the main crate's tests, and an input that runs out reads as zeros.

/// The bytes not read yet.
pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    /// The next byte, or `None` at the end of the input.
    pub fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// The next byte, or 0 at the end of the input.
    pub fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }
}
