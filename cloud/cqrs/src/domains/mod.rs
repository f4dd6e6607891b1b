//! Reference domains: [`orders`], [`banking`], [`inventory`].

pub mod banking;
pub mod inventory;
pub mod orders;

/// The aggregate id of an event (its `subject`), or the stream name after the category.
pub(crate) fn aggregate_id(e: &outrider_store::Event, category: &str) -> String {
    if !e.subject.is_empty() {
        return e.subject.clone();
    }
    e.stream
        .strip_prefix(category)
        .unwrap_or(&e.stream)
        .to_string()
}
