//! Single-shard ordering primitives whose order is a property of their construction, not
//! of the scheduler's timing.
//!
//! - [`FifoLock`]: a lock whose places are taken synchronously and granted strictly in the
//!   order they were taken. glommio 0.9's `Semaphore` is not FIFO: releasing a unit wakes
//!   the first waiter but leaves the unit free, so a task that asks before the woken one is
//!   polled takes it, and the woken waiter goes to the back of the line. Appends that must
//!   keep arrival order cannot sit behind such a lock.
//! - [`Turns`]: hands out numbered turns (one per request of a connection, in request
//!   order); a turn's holder can wait until every earlier turn has finished, even when the
//!   requests themselves run concurrently.
//!
//! Both are `!Send`: they live on one executor and are never shared across shards.
//!
//! ```
//! use shardlog::sync::FifoLock;
//! let lock = FifoLock::default();
//! let first = lock.enqueue();
//! let second = lock.enqueue();
//! assert!(first.is_held() && !second.is_held());
//! drop(first);
//! assert!(second.is_held());
//! ```

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// A FIFO lock: [`FifoLock::enqueue`] takes a place in line at once; the place holds the
/// lock from the moment every place taken before it was dropped, until it is dropped.
#[derive(Default)]
pub struct FifoLock {
    line: Rc<Line>,
}

#[derive(Default)]
struct Line {
    next_ticket: Cell<u64>,
    /// Places not yet dropped, oldest first: the front one holds the lock.
    waiting: RefCell<VecDeque<(u64, Option<Waker>)>>,
}

/// A place in a [`FifoLock`]'s line; dropping it (held or not) lets the next one through.
pub struct Place {
    line: Rc<Line>,
    ticket: u64,
}

impl FifoLock {
    /// Takes the next place in line, now: no place taken after this call can go first.
    pub fn enqueue(&self) -> Place {
        let ticket = self.line.next_ticket.get();
        self.line.next_ticket.set(ticket + 1);
        self.line.waiting.borrow_mut().push_back((ticket, None));
        Place {
            line: self.line.clone(),
            ticket,
        }
    }

    /// Places taken and not yet dropped (the holder included).
    pub fn queued(&self) -> usize {
        self.line.waiting.borrow().len()
    }
}

impl Place {
    /// Whether this place holds the lock now.
    pub fn is_held(&self) -> bool {
        self.line
            .waiting
            .borrow()
            .front()
            .is_some_and(|(t, _)| *t == self.ticket)
    }

    /// Resolves once this place holds the lock.
    pub async fn acquired(&self) {
        poll_fn(|cx| {
            let mut waiting = self.line.waiting.borrow_mut();
            if waiting.front().is_some_and(|(t, _)| *t == self.ticket) {
                return Poll::Ready(());
            }
            // A place stays in line until it is dropped, so it is found.
            if let Some(entry) = waiting.iter_mut().find(|(t, _)| *t == self.ticket) {
                entry.1 = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut waiting = self.line.waiting.borrow_mut();
        let Some(at) = waiting.iter().position(|(t, _)| *t == self.ticket) else {
            return;
        };
        waiting.remove(at);
        if at == 0 {
            // The lock passes to the next place: wake it if it is waiting.
            if let Some(waker) = waiting.front_mut().and_then(|(_, w)| w.take()) {
                waker.wake();
            }
        }
    }
}

/// Numbered turns handed out in order; see [`Turn::wait`].
#[derive(Default)]
pub struct Turns {
    state: Rc<TurnState>,
}

#[derive(Default)]
struct TurnState {
    issued: Cell<u64>,
    /// Every turn below this one has finished.
    finished_below: Cell<u64>,
    /// Turns that finished while an earlier one had not (rare: a request that failed early).
    finished_early: RefCell<BTreeSet<u64>>,
    /// The waker of each turn waiting for its predecessors.
    waiting: RefCell<BTreeMap<u64, Waker>>,
}

/// One turn: it finishes when dropped.
pub struct Turn {
    state: Rc<TurnState>,
    number: u64,
}

impl Turns {
    /// The next turn, after every turn taken before.
    pub fn take(&self) -> Turn {
        let number = self.state.issued.get();
        self.state.issued.set(number + 1);
        Turn {
            state: self.state.clone(),
            number,
        }
    }
}

impl Turn {
    /// Resolves once every earlier turn has finished (been dropped).
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.state.finished_below.get() == self.number {
                return Poll::Ready(());
            }
            self.state
                .waiting
                .borrow_mut()
                .insert(self.number, cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let state = &self.state;
        state.waiting.borrow_mut().remove(&self.number);
        if state.finished_below.get() != self.number {
            state.finished_early.borrow_mut().insert(self.number);
            return;
        }
        let mut next = self.number + 1;
        {
            let mut early = state.finished_early.borrow_mut();
            while early.remove(&next) {
                next += 1;
            }
        }
        state.finished_below.set(next);
        if let Some(waker) = state.waiting.borrow_mut().remove(&next) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn places_are_granted_in_the_order_they_were_taken() {
        let lock = FifoLock::default();
        let a = lock.enqueue();
        let b = lock.enqueue();
        let c = lock.enqueue();
        assert!(a.is_held());
        // A place dropped before its turn leaves the line without ever holding the lock.
        drop(b);
        assert!(!c.is_held());
        drop(a);
        assert!(c.is_held());
        assert_eq!(block_on(poll_once(c.acquired())), Some(()));
        drop(c);
        assert_eq!(lock.queued(), 0);
        assert!(lock.enqueue().is_held());
    }

    #[test]
    fn a_released_lock_goes_to_the_woken_waiter_not_to_a_newcomer() {
        // The case glommio's Semaphore gets wrong: the holder lets go while a waiter is
        // parked, and a newcomer asks before the waiter runs again.
        let lock = FifoLock::default();
        let holder = lock.enqueue();
        let waiter = lock.enqueue();
        let mut wait = Box::pin(waiter.acquired());
        assert_eq!(block_on(poll_once(&mut wait)), None);
        drop(holder);
        let newcomer = lock.enqueue();
        assert!(!newcomer.is_held());
        assert_eq!(block_on(poll_once(&mut wait)), Some(()));
        assert!(waiter.is_held());
    }

    #[test]
    fn turns_finish_in_order_even_when_later_ones_are_dropped_first() {
        let turns = Turns::default();
        let t0 = turns.take();
        let t1 = turns.take();
        let t2 = turns.take();
        let t3 = turns.take();
        assert_eq!(block_on(poll_once(t0.wait())), Some(()));
        let mut wait3 = Box::pin(t3.wait());
        assert_eq!(block_on(poll_once(&mut wait3)), None);
        drop(t2); // finished early: t3 must still wait for t1
        drop(t0);
        assert_eq!(block_on(poll_once(&mut wait3)), None);
        assert_eq!(block_on(poll_once(t1.wait())), Some(()));
        drop(t1);
        assert_eq!(block_on(poll_once(&mut wait3)), Some(()));
    }
}
