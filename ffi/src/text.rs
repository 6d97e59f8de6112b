//! Strings in and text out: `(pointer, length)` arguments validated as UTF-8, caller buffers for
//! results, and this thread's last error message.

use crate::panic::{boundary, check};
use crate::status::{costguard_status, Status};
use std::cell::RefCell;
use std::ffi::c_char;
use std::ptr::NonNull;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records this thread's last error message.
pub(crate) fn set_last_error(message: impl Into<String>) {
    let message = message.into();
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = message;
        }
    });
}

/// This thread's last error message (for unit tests; C reads it through `costguard_last_error`).
#[cfg(test)]
pub(crate) fn last_error_string() -> String {
    LAST_ERROR.with(|e| e.borrow().clone())
}

/// A required pointer.
#[inline(always)]
pub(crate) fn required<T>(p: *mut T) -> Result<NonNull<T>, Status> {
    NonNull::new(p).ok_or(Status::COSTGUARD_NULL_ARGUMENT)
}

/// A required pointer to read.
#[inline(always)]
pub(crate) fn required_const<T>(p: *const T) -> Result<NonNull<T>, Status> {
    NonNull::new(p as *mut T).ok_or(Status::COSTGUARD_NULL_ARGUMENT)
}

/// The bytes of a `(pointer, length)` argument; NULL is allowed when the length is 0.
///
/// # Safety
/// When `ptr` is not NULL it must point to `len` readable bytes that stay unchanged during the call.
pub(crate) unsafe fn bytes<'a>(ptr: *const c_char, len: usize) -> Result<&'a [u8], Status> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Status::COSTGUARD_NULL_ARGUMENT);
    }
    if len > isize::MAX as usize {
        set_last_error(format!("length {len} is larger than any object"));
        return Err(Status::COSTGUARD_INVALID_ARGUMENT);
    }
    // SAFETY: non-null, `len` bytes readable (the caller's contract), `len <= isize::MAX`.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// A `(pointer, length)` string argument, validated as UTF-8.
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn string<'a>(ptr: *const c_char, len: usize) -> Result<&'a str, Status> {
    // SAFETY: forwarded contract.
    let b = unsafe { bytes(ptr, len) }?;
    std::str::from_utf8(b).map_err(|e| {
        set_last_error(format!("string argument is not UTF-8: {e}"));
        Status::COSTGUARD_INVALID_UTF8
    })
}

/// A `(pointer, length)` header value (`what` names it in the last error): a header is ASCII by
/// its format, so bytes that are not UTF-8 make a malformed header, `COSTGUARD_HEADER_ERROR`, like
/// any other malformed header, rather than `COSTGUARD_INVALID_UTF8`. A header comes from the
/// network, and a caller that handles malformed headers must not meet a second kind of them.
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn header_string<'a>(
    ptr: *const c_char,
    len: usize,
    what: &str,
) -> Result<&'a str, Status> {
    // SAFETY: forwarded contract.
    let b = unsafe { bytes(ptr, len) }?;
    std::str::from_utf8(b).map_err(|e| {
        set_last_error(format!("{what}: not UTF-8 text (byte {})", e.valid_up_to()));
        Status::COSTGUARD_HEADER_ERROR
    })
}

/// A checked text output `(buf, cap, len)`, validated before any work is done.
pub(crate) struct TextOut {
    buf: *mut c_char,
    cap: usize,
    len: NonNull<usize>,
}

impl TextOut {
    /// Checks the pointers: `len` is required, `buf` may be NULL only when `cap` is 0.
    pub(crate) fn new(buf: *mut c_char, cap: usize, len: *mut usize) -> Result<TextOut, Status> {
        let len = required(len)?;
        if buf.is_null() && cap != 0 {
            return Err(Status::COSTGUARD_NULL_ARGUMENT);
        }
        Ok(TextOut { buf, cap, len })
    }

    /// Writes `text` NUL-terminated, or the capacity needed.
    ///
    /// # Safety
    /// `buf` points to `cap` writable bytes and `len` to a writable `size_t`.
    pub(crate) unsafe fn write(self, text: &str) -> Status {
        let needed = text.len() + 1;
        if self.cap < needed {
            // SAFETY: `len` is non-null and writable (caller's contract).
            unsafe { self.len.as_ptr().write(needed) };
            return Status::COSTGUARD_BUFFER_TOO_SMALL;
        }
        // SAFETY: `buf` has `cap >= needed` writable bytes; the source is a distinct Rust string.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), self.buf.cast::<u8>(), text.len());
            self.buf.add(text.len()).write(0);
            self.len.as_ptr().write(text.len());
        }
        Status::COSTGUARD_OK
    }
}

/// This thread's last error message (policy problems, header errors, panic messages); `""` if none.
///
/// # Safety
/// `buf` points to `cap` writable bytes (or is NULL with `cap` 0); `len` points to a writable
/// `size_t`.
#[no_mangle]
pub unsafe extern "C" fn costguard_last_error(
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> costguard_status {
    boundary(|| {
        let out = check!(TextOut::new(buf, cap, len));
        let message = LAST_ERROR
            .try_with(|e| e.try_borrow().map(|e| e.clone()).unwrap_or_default())
            .unwrap_or_default();
        // SAFETY: checked by `TextOut::new`; the caller's contract.
        unsafe { out.write(&message) }
    })
}
