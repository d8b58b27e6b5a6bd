//! A single-threaded broadcast notification: tasks wait for the next `notify`.
//!
//! Owns only the wakers of tasks currently waiting, so it is bounded by the number of
//! waiting tasks. Must never be shared across threads (it is `!Send` by construction).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every waiting task on `notify`; a waiter sees each notification after it listened.
#[derive(Default)]
pub(crate) struct Event {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Event {
    /// Wakes every task that listened before this call.
    pub(crate) fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// A future that resolves at the next `notify` after this call.
    pub(crate) fn listen(&self) -> Listen<'_> {
        Listen {
            event: self,
            generation: self.generation.get(),
        }
    }
}

/// Resolves once the event's generation moved past the one seen at `listen`.
pub(crate) struct Listen<'a> {
    event: &'a Event,
    generation: u64,
}

impl Future for Listen<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut wakers = self.event.wakers.borrow_mut();
        // A waiter polled again without a notify must not grow the list.
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
