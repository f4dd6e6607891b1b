//! HTTP webhook target. (Being written.)
