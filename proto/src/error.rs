//! The error every conversion returns.

use crate::time::TimeError;

/// Why a conversion between an [`Event`](crate::Event) and one of its JSON views failed.
///
/// `field` names where the problem is: when reading JSON, the member's key as it appears in the
/// input (a dotted path such as `outrider.stream` for nested members); when writing JSON, the
/// [`Event`](crate::Event) field (`detail`, `time_nanos`, `extensions.<name>`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A required member is absent (or `null`, which is read as absent).
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A value has the wrong JSON type, e.g. a `detail` that is JSON but not an object.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// Where the value is.
        field: String,
        /// What it should have been, as a phrase ("a string", "a JSON object", ...).
        expected: &'static str,
    },
    /// Text that must hold JSON does not parse.
    #[error("field `{field}` is not valid JSON: {reason}")]
    InvalidJson {
        /// Where the text is.
        field: String,
        /// The parser's message.
        reason: String,
    },
    /// A time that is malformed or outside what RFC 3339 can express.
    #[error("field `{field}` holds an invalid time `{value}`: {reason}")]
    InvalidTime {
        /// Where the time is.
        field: String,
        /// The offending value, as text.
        value: String,
        /// What is wrong with it.
        reason: TimeError,
    },
    /// A PutEvents entry is larger than EventBridge accepts.
    #[error("PutEvents entry is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// The entry's size as EventBridge computes it.
        size: usize,
        /// The largest size accepted.
        limit: usize,
    },
    /// A PutEvents request holds more entries than EventBridge accepts.
    #[error("PutEvents request has {count} entries, over the limit of {limit}")]
    TooManyEntries {
        /// Entries in the request.
        count: usize,
        /// The most entries accepted.
        limit: usize,
    },
    /// A CloudEvent whose `specversion` is not `1.0`.
    #[error("unsupported CloudEvents specversion `{0}` (only `1.0` is supported)")]
    UnsupportedSpecVersion(String),
    /// A CloudEvent carrying binary data (`data_base64`): an event's detail must be JSON.
    #[error(
        "CloudEvents binary data (`data_base64`) is not supported: the event detail must be JSON"
    )]
    BinaryDataUnsupported,
    /// An extension attribute name that breaks the CloudEvents naming rules or collides with an
    /// attribute the conversion maps itself.
    #[error("invalid CloudEvents extension attribute name `{0}`")]
    InvalidExtensionName(String),
    /// A `datacontenttype` that does not declare JSON.
    #[error("unsupported datacontenttype `{0}`: the data must be JSON")]
    UnsupportedContentType(String),
    /// A member the format does not define (only checked where the format is closed: PutEvents
    /// requests and entries, and the `outrider` member of delivered events).
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// An entry of a PutEvents request is invalid.
    #[error("Entries[{index}]: {error}")]
    InvalidEntry {
        /// The entry's index in `Entries`.
        index: usize,
        /// What is wrong with it.
        error: Box<ConvertError>,
    },
}
