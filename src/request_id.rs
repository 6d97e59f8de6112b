//! Request identifiers that travel with every verdict and report.

use std::fmt;

/// The longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// The id of a request, carried by its budget, its verdicts, its limit report and its propagation
/// header, so that a refusal deep in a request tree can be traced back to the edit that caused it.
///
/// An id is 1 to 64 bytes of `A-Z a-z 0-9 . _ : -`, the alphabet of common request-id schemes (UUIDs,
/// `X-Request-Id`, Wikimedia's reqId). It is stored inline: copying it never allocates.
///
/// ```
/// use costguard::RequestId;
///
/// let id = RequestId::new("b7c3e2a0-req").unwrap();
/// assert_eq!(id.as_str(), "b7c3e2a0-req");
/// assert!(RequestId::new("no spaces").is_err());
/// assert_eq!(RequestId::from_u64(255).as_str(), "00000000000000ff");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_REQUEST_ID_LEN],
}

/// Why a string is not a valid [`RequestId`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestIdError {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_REQUEST_ID_LEN`] bytes.
    TooLong,
    /// The id contains a byte outside `A-Z a-z 0-9 . _ : -`; its position is given.
    BadByte(usize),
}

impl fmt::Display for RequestIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestIdError::Empty => f.write_str("request id is empty"),
            RequestIdError::TooLong => {
                write!(f, "request id is longer than {MAX_REQUEST_ID_LEN} bytes")
            }
            RequestIdError::BadByte(at) => write!(
                f,
                "request id has a byte outside [A-Za-z0-9._:-] at position {at}"
            ),
        }
    }
}

impl std::error::Error for RequestIdError {}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

impl RequestId {
    /// Validates and stores `id`.
    pub fn new(id: &str) -> Result<Self, RequestIdError> {
        let raw = id.as_bytes();
        if raw.is_empty() {
            return Err(RequestIdError::Empty);
        }
        if raw.len() > MAX_REQUEST_ID_LEN {
            return Err(RequestIdError::TooLong);
        }
        if let Some(at) = raw.iter().position(|&b| !allowed(b)) {
            return Err(RequestIdError::BadByte(at));
        }
        let mut bytes = [0u8; MAX_REQUEST_ID_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(RequestId {
            len: raw.len() as u8,
            bytes,
        })
    }

    /// An id made of the 16 lowercase hex digits of `n`.
    pub fn from_u64(n: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; MAX_REQUEST_ID_LEN];
        for (i, slot) in bytes[..16].iter_mut().enumerate() {
            *slot = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestId { len: 16, bytes }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only bytes from the ASCII alphabet above are ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({:?})", self.as_str())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RequestId {
    type Err = RequestIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestId::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(RequestId::new(""), Err(RequestIdError::Empty));
        assert_eq!(
            RequestId::new(&"a".repeat(65)),
            Err(RequestIdError::TooLong)
        );
        assert!(RequestId::new(&"a".repeat(64)).is_ok());
        assert_eq!(RequestId::new("ab;c"), Err(RequestIdError::BadByte(2)));
        assert_eq!(RequestId::new("é"), Err(RequestIdError::BadByte(0)));
        assert_eq!(RequestId::from_u64(u64::MAX).as_str(), "ffffffffffffffff");
        assert_eq!(RequestId::from_u64(0x1234).to_string(), "0000000000001234");
    }
}
