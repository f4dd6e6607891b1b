//! Target input: the event as is, a constant (`Input`), a part of it (`InputPath`), or an
//! `InputTransformer` (InputPathsMap + InputTemplate with EventBridge's substitution rules).
//! (Being written: see the helper's brief.)
