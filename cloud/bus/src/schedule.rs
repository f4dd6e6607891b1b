//! Schedule expressions: `rate(value unit)` and EventBridge's six-field `cron(...)`.
//! (Being written: see the helper's brief.)

use crate::error::{BusError, Result};

/// A parsed schedule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule> {
        if expr.starts_with("rate(") || expr.starts_with("cron(") {
            Ok(Schedule {
                text: expr.to_string(),
            })
        } else {
            Err(BusError::Validation(format!(
                "Parameter ScheduleExpression is not valid: {expr}"
            )))
        }
    }

    /// The first fire time strictly after `after_ms` (Unix ms, UTC); `anchor_ms` is when the
    /// rule was created (rates count from it). `None`: the schedule never fires again.
    pub fn next_after(&self, anchor_ms: i64, after_ms: i64) -> Option<i64> {
        let _ = (anchor_ms, after_ms);
        None
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}
