//! Status codes: the one return type of the C ABI, with stable numbers and a description of each.

use std::ffi::c_char;

/// What a call did. Stable numbers: new codes are only ever added at the end.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum costguard_status {
    /// Done.
    COSTGUARD_OK = 0,
    /// The engine said no; the verdict (if given) says why.
    COSTGUARD_REFUSED = 1,
    /// A required pointer or handle was NULL.
    COSTGUARD_NULL_ARGUMENT = 2,
    /// Freed, of another kind or engine, or made up.
    COSTGUARD_INVALID_HANDLE = 3,
    /// A string argument is not UTF-8.
    COSTGUARD_INVALID_UTF8 = 4,
    /// A value out of range (unknown enum value, bad request id, ...).
    COSTGUARD_INVALID_ARGUMENT = 5,
    /// No counter/level/class/backend/host of that name.
    COSTGUARD_UNKNOWN_NAME = 6,
    /// The policy is invalid; `costguard_last_error` has every problem with file:line.
    COSTGUARD_POLICY_ERROR = 7,
    /// A malformed propagation header; `costguard_last_error` says where.
    COSTGUARD_HEADER_ERROR = 8,
    /// A file could not be read, or is not a regular file.
    COSTGUARD_IO_ERROR = 9,
    /// `*len` holds the capacity needed.
    COSTGUARD_BUFFER_TOO_SMALL = 10,
    /// A bug inside costguard was caught; the process and the engine are fine.
    COSTGUARD_PANIC = 11,
}

pub(crate) use costguard_status as Status;

impl Status {
    /// Every status, in numeric order.
    pub const ALL: [Status; 12] = [
        Status::COSTGUARD_OK,
        Status::COSTGUARD_REFUSED,
        Status::COSTGUARD_NULL_ARGUMENT,
        Status::COSTGUARD_INVALID_HANDLE,
        Status::COSTGUARD_INVALID_UTF8,
        Status::COSTGUARD_INVALID_ARGUMENT,
        Status::COSTGUARD_UNKNOWN_NAME,
        Status::COSTGUARD_POLICY_ERROR,
        Status::COSTGUARD_HEADER_ERROR,
        Status::COSTGUARD_IO_ERROR,
        Status::COSTGUARD_BUFFER_TOO_SMALL,
        Status::COSTGUARD_PANIC,
    ];

    /// A short description, NUL-terminated and static.
    pub(crate) fn describe(self) -> &'static std::ffi::CStr {
        match self {
            Status::COSTGUARD_OK => c"ok",
            Status::COSTGUARD_REFUSED => c"refused: the verdict says why",
            Status::COSTGUARD_NULL_ARGUMENT => c"a required pointer or handle was NULL",
            Status::COSTGUARD_INVALID_HANDLE => {
                c"invalid handle: freed, of another kind or engine, or made up"
            }
            Status::COSTGUARD_INVALID_UTF8 => c"a string argument is not valid UTF-8",
            Status::COSTGUARD_INVALID_ARGUMENT => c"an argument is out of range",
            Status::COSTGUARD_UNKNOWN_NAME => {
                c"no counter, level, class, backend or host of that name"
            }
            Status::COSTGUARD_POLICY_ERROR => c"the policy is invalid (see costguard_last_error)",
            Status::COSTGUARD_HEADER_ERROR => {
                c"malformed propagation header (see costguard_last_error)"
            }
            Status::COSTGUARD_IO_ERROR => {
                c"a file could not be read, or is not a regular file (see costguard_last_error)"
            }
            Status::COSTGUARD_BUFFER_TOO_SMALL => {
                c"buffer too small: *len holds the capacity needed"
            }
            Status::COSTGUARD_PANIC => {
                c"a bug inside costguard was caught (see costguard_last_error)"
            }
        }
    }
}

/// A static, never NULL description of a status; `"unknown status"` for numbers without one.
#[no_mangle]
pub extern "C" fn costguard_status_describe(status: u32) -> *const c_char {
    crate::panic::boundary_value(c"unknown status".as_ptr(), || {
        Status::ALL
            .get(status as usize)
            .map_or(c"unknown status", |s| s.describe())
            .as_ptr()
    })
}
