//! Locking without swallowing poisoning.
//!
//! A poisoned mutex means a thread panicked while it held the lock, leaving what the lock
//! guards half-changed. That panic already fails the run (a simulated task's panic ends the
//! simulation; a real one ends the process); going on with the half-changed state, as
//! taking the guard back out of the poison error does, would only hide it behind a wrong
//! answer.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, panicking with the reason if a holder panicked before.
pub fn guard<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(_) => panic!("a lock's holder panicked earlier, leaving its state half-changed: see that panic"),
    }
}
