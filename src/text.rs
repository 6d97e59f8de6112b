//! Untrusted text repeated in error messages (a header's key, a policy's value, a priority's name):
//! cut short, on a character boundary, so that an error can never grow with its input.

/// At most `max` bytes of `s`, ending on a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(all(test, not(costguard_loom)))]
mod tests {
    use super::clip;

    #[test]
    fn clips_on_a_character_boundary() {
        assert_eq!(clip("hello", 3), "hel");
        assert_eq!(clip("hello", 10), "hello");
        assert_eq!(clip("héllo", 2), "h", "é is two bytes: not split");
        assert_eq!(clip("", 0), "");
    }
}
