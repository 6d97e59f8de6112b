//! Finished root budgets, kept per thread and made new again in place.
//!
//! Starting a budget used to be most of the cost of admitting a request: the node is about a kilobyte
//! (limits, counters and peaks for every dimension a policy may have), and building it meant zeroing
//! it on the stack, copying it into a fresh allocation and freeing that allocation when the request
//! ended. A thread that admits requests one after another can instead keep the nodes of its finished
//! root budgets and reset one in place for the next request.
//!
//! Only a node nobody else can reach is kept: a root (no parent to report to), with no other handle
//! on it (no clone of the budget, no weak reference). Each thread keeps at most [`CAPACITY`]; a kept
//! node holds the policy snapshot it last used until it is reused or the thread exits. Under loom
//! nothing is kept (the models check the node's algorithm, not its allocation).
//!
//! That snapshot is useful in itself. Loading the engine's current snapshot (an arc-swap guard: a
//! swap into a debt slot and a compare-and-swap to pay it back, both full barriers) was a quarter of
//! an admission. While a kept node's snapshot is still the engine's current one (same engine, same
//! policy generation), admission, `begin` and `begin_propagated` decide under it and start the
//! budget on that node, loading nothing.
//!
//! So are its limits. A thread usually starts budget after budget of one class, most without
//! overrides: a node that last held that class's untightened limits, under the same snapshot, keeps
//! them, and its reset only zeroes the counters.

use super::node::Node;
use crate::sync::Arc;

/// How many finished nodes a thread keeps: the last one in a slot of its own, the others in a list.
#[cfg(not(costguard_loom))]
pub(crate) const CAPACITY: usize = 4;

#[cfg(not(costguard_loom))]
thread_local! {
    /// The node finished last: a thread that serves one request at a time only ever uses this slot,
    /// which costs no borrow flag and no length check.
    static LAST: std::cell::Cell<Option<Arc<Node>>> = const { std::cell::Cell::new(None) };
    /// The others, for threads that run several requests at once (an async executor).
    static FREE: std::cell::RefCell<Vec<Arc<Node>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A finished node to reset, if this thread kept one.
#[cfg(not(costguard_loom))]
#[inline]
pub(crate) fn take() -> Option<Arc<Node>> {
    match LAST.try_with(std::cell::Cell::take) {
        Ok(Some(node)) => Some(node),
        _ => FREE
            .try_with(|free| free.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten(),
    }
}

/// Under loom nothing is kept.
#[cfg(costguard_loom)]
pub(crate) fn take() -> Option<Arc<Node>> {
    None
}

/// Keeps `node` for reuse when it is a root that nothing else refers to; drops it otherwise.
/// Called with the handle a budget held, moved out as the budget is dropped: keeping it costs no
/// reference-count update.
#[inline]
pub(crate) fn keep(node: Arc<Node>) {
    #[cfg(not(costguard_loom))]
    {
        if node.parent.is_some() || Arc::strong_count(&node) != 1 || Arc::weak_count(&node) != 0 {
            return;
        }
        // During thread exit the slot may be gone: the node is then simply dropped.
        if let Ok(Some(older)) = LAST.try_with(|last| last.replace(Some(node))) {
            let _ = FREE.try_with(move |free| {
                if let Ok(mut free) = free.try_borrow_mut() {
                    if free.len() < CAPACITY - 1 {
                        free.push(older);
                    }
                }
            });
        }
    }
    #[cfg(costguard_loom)]
    {
        let _ = node;
    }
}
