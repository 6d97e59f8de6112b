//! Shared fixtures for the C ABI's tests: a policy with every kind of name, and small wrappers.
#![allow(dead_code, clippy::result_large_err)]

use costguard_ffi::*;
use std::ptr::null_mut;

pub const OK: costguard_status = costguard_status::COSTGUARD_OK;
pub const REFUSED: costguard_status = costguard_status::COSTGUARD_REFUSED;
pub const NULL: costguard_status = costguard_status::COSTGUARD_NULL_ARGUMENT;
pub const INVALID: costguard_status = costguard_status::COSTGUARD_INVALID_HANDLE;

pub const POLICY: &str = r#"
[dimensions]
file_lookups = "counter"
db_queries = "counter"
output_bytes = { kind = "counter", unit = "bytes" }
nesting_depth = "level"

[classes.parse]
wall_time = "30s"
retries = 2
child_margin = "1s"
limits = { file_lookups = 10, db_queries = 100, output_bytes = "1KiB", nesting_depth = 3 }

[classes.api]
wall_time = "10s"
limits = { db_queries = 5 }

[classes.api.admission]
concurrency = 2
per_key = { concurrency = 1 }

[backends.db]
hosts = ["db1:3306", "db2:3306"]
timeout = "500ms"
"#;

pub fn engine_with(policy: &str, flags: u32) -> costguard_engine {
    let mut e = costguard_engine::default();
    // SAFETY: a valid (pointer, length) string and a writable out-parameter.
    let s = unsafe {
        costguard_engine_new_from_str(policy.as_ptr().cast(), policy.len(), flags, &mut e)
    };
    assert_eq!(s, OK, "engine: {}", last_error());
    e
}

pub fn engine() -> costguard_engine {
    engine_with(POLICY, COSTGUARD_ENGINE_MANUAL_CLOCK)
}

pub fn last_error() -> String {
    let mut buf = vec![0u8; 4096];
    let mut len = 0usize;
    // SAFETY: a buffer of its stated capacity.
    unsafe { costguard_last_error(buf.as_mut_ptr().cast(), buf.len(), &mut len) };
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

pub fn counter(e: costguard_engine, name: &str) -> costguard_counter {
    let mut out = costguard_counter::default();
    // SAFETY: valid string and out-parameter.
    let s = unsafe { costguard_engine_counter(e, name.as_ptr().cast(), name.len(), &mut out) };
    assert_eq!(s, OK, "counter {name}");
    out
}

pub fn level(e: costguard_engine, name: &str) -> costguard_level {
    let mut out = costguard_level::default();
    // SAFETY: valid string and out-parameter.
    let s = unsafe { costguard_engine_level(e, name.as_ptr().cast(), name.len(), &mut out) };
    assert_eq!(s, OK, "level {name}");
    out
}

pub fn class(e: costguard_engine, name: &str) -> costguard_class {
    let mut out = costguard_class::default();
    // SAFETY: valid string and out-parameter.
    let s = unsafe { costguard_engine_class(e, name.as_ptr().cast(), name.len(), &mut out) };
    assert_eq!(s, OK, "class {name}");
    out
}

pub fn backend(e: costguard_engine, name: &str) -> costguard_backend {
    let mut out = costguard_backend::default();
    // SAFETY: valid string and out-parameter.
    let s = unsafe { costguard_engine_backend(e, name.as_ptr().cast(), name.len(), &mut out) };
    assert_eq!(s, OK, "backend {name}");
    out
}

pub fn host(e: costguard_engine, b: costguard_backend, name: &str) -> costguard_host {
    let mut out = costguard_host::default();
    // SAFETY: valid string and out-parameter.
    let s = unsafe { costguard_engine_host(e, b, name.as_ptr().cast(), name.len(), &mut out) };
    assert_eq!(s, OK, "host {name}");
    out
}

pub fn try_begin(
    e: costguard_engine,
    c: costguard_class,
    id: &str,
) -> Result<costguard_budget, costguard_status> {
    let mut out = costguard_budget::default();
    // SAFETY: valid strings, NULL header with length 0, writable out-parameters.
    let s = unsafe {
        costguard_budget_begin(
            e,
            c,
            id.as_ptr().cast(),
            id.len(),
            std::ptr::null(),
            0,
            &mut out,
            null_mut(),
        )
    };
    if s == OK {
        Ok(out)
    } else {
        Err(s)
    }
}

pub fn begin(e: costguard_engine, c: costguard_class, id: &str) -> costguard_budget {
    try_begin(e, c, id).expect("begin")
}

pub fn charge(b: costguard_budget, c: costguard_counter, n: u64) -> costguard_status {
    // SAFETY: NULL verdict is allowed.
    unsafe { costguard_budget_charge(b, c, n, null_mut()) }
}

pub fn charge_v(
    b: costguard_budget,
    c: costguard_counter,
    n: u64,
) -> (costguard_status, costguard_verdict) {
    let mut v = blank_verdict();
    // SAFETY: a writable verdict.
    let s = unsafe { costguard_budget_charge(b, c, n, &mut v) };
    (s, v)
}

pub fn used(b: costguard_budget, c: costguard_counter) -> Result<u64, costguard_status> {
    let mut out = 0;
    // SAFETY: writable out-parameter.
    let s = unsafe { costguard_budget_used(b, c, &mut out) };
    if s == OK {
        Ok(out)
    } else {
        Err(s)
    }
}

pub fn blank_verdict() -> costguard_verdict {
    costguard_verdict {
        reason: 999,
        retry: 999,
        retry_after_ns: 0,
        requested: 0,
        used: 0,
        limit: 0,
        unit: 999,
        class_name: [0; 33],
        dimension: [0; costguard::policy::MAX_HOST_LEN + 1],
        request_id: [0; 65],
    }
}

pub fn cstr(chars: &[std::ffi::c_char]) -> String {
    chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect()
}

pub fn admit(
    e: costguard_engine,
    c: costguard_class,
    id: &str,
    key: &str,
) -> Result<costguard_grant, (costguard_status, costguard_verdict)> {
    let req = costguard_admit_request {
        class_: c,
        request_id: id.as_ptr().cast(),
        request_id_len: id.len(),
        key: key.as_ptr().cast(),
        key_len: key.len(),
        priority: COSTGUARD_PRIORITY_DEFAULT,
        flags: 0,
        estimates: std::ptr::null(),
        estimates_len: 0,
        rate_cost: 0,
        header: std::ptr::null(),
        header_len: 0,
    };
    let mut g = costguard_grant::default();
    let mut v = blank_verdict();
    // SAFETY: a valid request and writable outputs.
    let s = unsafe { costguard_admit(e, &req, &mut g, &mut v) };
    if s == OK {
        Ok(g)
    } else {
        Err((s, v))
    }
}

/// Reads a text output by asking for the size first.
pub fn text(
    f: impl Fn(*mut std::ffi::c_char, usize, *mut usize) -> costguard_status,
) -> Result<String, costguard_status> {
    let mut len = 0usize;
    let s = f(std::ptr::null_mut(), 0, &mut len);
    if s != costguard_status::COSTGUARD_BUFFER_TOO_SMALL {
        return Err(s);
    }
    let mut buf = vec![0u8; len];
    let mut got = 0usize;
    let s = f(buf.as_mut_ptr().cast(), buf.len(), &mut got);
    if s != OK {
        return Err(s);
    }
    assert_eq!(got + 1, len);
    assert_eq!(buf[got], 0);
    Ok(String::from_utf8(buf[..got].to_vec()).unwrap())
}
