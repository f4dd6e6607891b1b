//! Kinesis target. (Being written.)
