//! The schema registry: a JSON Schema discovered per (source, detail-type), versioned, and
//! validation of events on put. (Being written: see the helper's brief.)
