//! The propagation header, decoded for inspection (encoding is `costguard_budget_to_header`).

use crate::panic::{boundary, check};
use crate::status::{costguard_status, Status};
use crate::text::{self, TextOut};
use costguard::header::Propagation;
use serde_json::{json, Map, Value};
use std::ffi::c_char;

fn to_json(p: &Propagation) -> String {
    let allowances: Map<String, Value> = p
        .allowances()
        .map(|(n, v)| (n.to_owned(), json!(v)))
        .collect();
    json!({
        "request_id": p.request_id().map(|id| id.as_str().to_owned()),
        "priority": p.priority().map(|p| p.as_str()),
        "remaining_ns": p.remaining().map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        "allowances": allowances,
    })
    .to_string()
}

/// Validates a `cg1` header and gives its fields as JSON:
/// `{"request_id":..,"priority":..,"remaining_ns":..,"allowances":{..}}` (absent fields are null).
/// A malformed header, bytes that are not UTF-8 included, is `COSTGUARD_HEADER_ERROR`.
///
/// # Safety
/// `value` points to `len` readable bytes (or NULL with `len` 0); `buf` to `cap` writable bytes (or
/// NULL with `cap` 0); `out_len` is writable.
#[no_mangle]
pub unsafe extern "C" fn costguard_header_decode_json(
    value: *const c_char,
    len: usize,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
) -> costguard_status {
    boundary(|| {
        let out = check!(TextOut::new(buf, cap, out_len));
        // SAFETY: the caller's contract.
        let s = check!(unsafe { text::header_string(value, len, "propagation header") });
        match Propagation::decode(s) {
            // SAFETY: checked by `TextOut::new`.
            Ok(p) => unsafe { out.write(&to_json(&p)) },
            Err(e) => {
                text::set_last_error(format!("propagation header: {e}"));
                Status::COSTGUARD_HEADER_ERROR
            }
        }
    })
}
