//! The admission and backend snapshot as JSON (the core renders Prometheus text only).

use costguard::admission::AdmissionStats;
use costguard::Priority;
use serde_json::{json, Map, Value};

fn by_reason(list: &[(costguard::Reason, u64)]) -> Value {
    Value::Object(
        list.iter()
            .map(|(r, n)| (r.as_str().to_owned(), json!(n)))
            .collect::<Map<_, _>>(),
    )
}

/// `{"generation":..,"classes":[..],"pools":[..],"backends":[..]}`.
pub(crate) fn to_json(generation: u64, s: &AdmissionStats) -> String {
    let classes: Vec<Value> = s
        .classes
        .iter()
        .map(|c| {
            let shed: Map<String, Value> = Priority::ALL
                .iter()
                .zip(c.counts.shed_by_priority)
                .map(|(p, n)| (p.as_str().to_owned(), json!(n)))
                .collect();
            json!({
                "class": c.class,
                "in_flight": c.in_flight,
                "limit": c.limit,
                "queue_len": c.queue_len,
                "shadow": c.shadow,
                "keys": c.keys.map(|(occupied, capacity)| json!({"occupied": occupied, "capacity": capacity})),
                "admitted": c.counts.admitted,
                "refused": by_reason(&c.counts.refused),
                "shadow_refused": by_reason(&c.counts.shadow_refused),
                "shed_by_priority": shed,
                "waited": c.counts.waited,
                "timed_out": c.counts.timed_out,
            })
        })
        .collect();
    let pools: Vec<Value> = s
        .pools
        .iter()
        .map(|p| json!({"pool": p.pool, "in_use": p.in_use, "limit": p.limit}))
        .collect();
    let backends: Vec<Value> = s
        .backends
        .iter()
        .map(|b| {
            let by_name = |counts: &[(&str, u64)]| -> Map<String, Value> {
                counts
                    .iter()
                    .map(|(n, c)| ((*n).to_owned(), json!(c)))
                    .collect()
            };
            let hosts: Vec<Value> = b
                .hosts
                .iter()
                .map(|h| {
                    json!({
                        "host": h.host,
                        "breaker": h.breaker,
                        "ejected": h.ejected,
                        "in_flight": h.in_flight,
                        "connecting": h.connecting,
                    })
                })
                .collect();
            json!({
                "backend": b.backend,
                "breaker": b.breaker,
                "in_flight": b.in_flight,
                "connecting": b.connecting,
                "retry_tokens": b.retry_tokens,
                "outcomes": by_name(&b.outcomes),
                "refused": by_name(&b.refused),
                "retries_refused": by_name(&b.retries_refused),
                "hosts": hosts,
            })
        })
        .collect();
    json!({
        "generation": generation,
        "classes": classes,
        "pools": pools,
        "backends": backends,
    })
    .to_string()
}
