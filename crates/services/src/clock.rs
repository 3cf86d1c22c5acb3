//! The production clock and id source.

use domain::ports::{Clock, IdSource};
use domain::Timestamp;

/// The system clock, truncated to microseconds (what every store keeps).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        domain::to_micros_precision(chrono::Utc::now())
    }
}

/// Time-ordered UUID v7 ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct UuidV7Ids;

impl IdSource for UuidV7Ids {
    fn new_id(&self) -> uuid::Uuid {
        uuid::Uuid::now_v7()
    }
}
